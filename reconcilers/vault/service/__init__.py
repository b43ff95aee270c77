"""The vault service: a Vault-compatible API (hvac works against it) over Shamir-sealed, barrier-encrypted storage.

    storage/    the KeyValueStore interface and its backends (file, postgresql, etcd)
    barrier.py  AES-256-GCM over a storage, keyring wrapped by the root key, the path as associated data
    seal.py     init (Shamir shares: SLIP-39 or base64), unseal progress, seal, auto-unseal
    tokens.py   tokens stored as hashes: TTL, uses, renewal, accessors, revocation
    policy.py   Cedar policies from the repo (vault/policies/*.cedar): deny by default
    audit.py    hash-chained JSON-lines audit log with HMAC'd secrets
    engines/    KV v1 and v2 (transit comes from reconcilers.vault.transit when installed)
    core.py     one request -> authenticated, authorized, audited, routed
    api/        the ASGI app on the vault listener (127.0.0.1:8200 by default)
"""
