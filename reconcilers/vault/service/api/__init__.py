"""The vault's HTTP API (ASGI), below /v1/ as Vault serves it."""
