"""Git sources and triggers: reading commits, watching refs, webhooks, checks on a tree as a whole."""
