"""The HTTP listener: server and mounts, bearer-token auth with Cedar, limits for slow clients, settings."""
