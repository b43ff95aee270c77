"""Transit: encryption as a service, path-compatible with HashiCorp Vault's transit engine.

    keys.py   named, versioned keys (types, material, policy fields) and their storage through KeyValueStore
    ops.py    the operations on one key: encrypt/decrypt/rewrap, sign/verify, hmac, datakey, export
    manage.py key management requests (create, read, config, delete) and the shared value parsers
    api.py    `handle(method, path, body, store)`: Vault's request and response shapes, errors, batches
    declare.py  keys declared in the repo (`vault/transit/*.ncl`): planned create / config / rotation
The vault service (reconcilers/vault/service/) mounts `api.handle` at `transit/`, with authentication,
authorization and audit in front of it.
"""
