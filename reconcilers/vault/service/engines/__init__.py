"""Secrets engines mounted in the vault: KV v1/v2 here; transit from reconcilers.vault.transit when present.

An engine is `handle(method, path, body, query) -> (status, body)` over a KeyValueStore scoped to its mount.
"""
