"""The OpenAPI description of the vault API (GET /v1/sys/internal/specs/openapi), as Vault serves one: the paths
this service answers, their methods, and the Vault error shape. Written by hand from the routes in core.py,
routes.py and engines/kv.py; tests/reconcilers/vault/service/test_openapi.py calls every path it lists."""

from __future__ import annotations

from typing import Any

_ERR = {"description": "Vault-style error", "content": {"application/json": {"schema": {
    "type": "object", "properties": {"errors": {"type": "array", "items": {"type": "string"}}}}}}}
_OBJ = {"content": {"application/json": {"schema": {"type": "object"}}}}

# path -> (methods, summary); "{path}" parts are free-form secret paths
PATHS: dict[str, tuple[tuple[str, ...], str]] = {
    "/sys/health": (("get", "head"), "Health: 200 active, 503 sealed, 501 not initialized"),
    "/sys/seal-status": (("get",), "Seal status and unseal progress"),
    "/sys/init": (("get", "put"), "Initialization status; initialize (shares, threshold)"),
    "/sys/unseal": (("put",), "Give one unseal key"),
    "/sys/seal": (("put",), "Seal the vault"),
    "/sys/leader": (("get",), "Which node is active"),
    "/sys/rotate": (("put",), "Add a barrier key version"),
    "/sys/key-status": (("get",), "The barrier key in use"),
    "/sys/mounts": (("get",), "Mounted secrets engines"),
    "/sys/mounts/{path}": (("get", "post", "delete"), "Mount or unmount an engine"),
    "/sys/audit-hash/{path}": (("post",), "The audit log's HMAC of a string"),
    "/auth/token/create": (("post",), "Create a token"),
    "/auth/token/create-orphan": (("post",), "Create a token without a parent"),
    "/auth/token/create/{path}": (("post",), "Create a token through a role"),
    "/auth/token/roles": (("get",), "List token roles (?list=true or LIST)"),
    "/auth/token/roles/{path}": (("get", "post", "delete"), "Read, write or delete a token role"),
    "/auth/token/accessors": (("get",), "List token accessors (?list=true or LIST; sudo)"),
    "/auth/token/lookup-self": (("get",), "Look up the calling token"),
    "/auth/token/lookup": (("post",), "Look up a token"),
    "/auth/token/lookup-accessor": (("post",), "Look up a token by accessor"),
    "/auth/token/renew-self": (("post",), "Renew the calling token"),
    "/auth/token/renew": (("post",), "Renew a token"),
    "/auth/token/revoke": (("post",), "Revoke a token and its children"),
    "/auth/token/revoke-self": (("post",), "Revoke the calling token"),
    "/auth/token/revoke-accessor": (("post",), "Revoke a token by accessor"),
    "/secret/config": (("get", "post"), "KV v2 engine settings"),
    "/secret/data/{path}": (("get", "post", "patch", "delete"), "Read or write a KV v2 secret"),
    "/secret/metadata/{path}": (("get", "post", "delete"), "KV v2 metadata (LIST on folders)"),
    "/secret/delete/{path}": (("post",), "Soft-delete versions"),
    "/secret/undelete/{path}": (("post",), "Undelete versions"),
    "/secret/destroy/{path}": (("post",), "Destroy versions"),
    "/sys/internal/specs/openapi": (("get",), "This description"),
}


def document() -> dict[str, Any]:
    """The OpenAPI 3 document."""
    paths: dict[str, Any] = {}
    for path, (methods, summary) in PATHS.items():
        ops: dict[str, Any] = {}
        for method in methods:
            op: dict[str, Any] = {"summary": summary, "responses": {
                "200": {"description": "OK", **_OBJ}, "204": {"description": "done"}, "400": _ERR, "403": _ERR,
                "404": _ERR, "503": _ERR}}
            if "{path}" in path:
                op["parameters"] = [{"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}]
            if method in ("post", "put", "patch"):
                op["requestBody"] = {"required": False, **_OBJ}
            ops[method] = op
        paths[path] = ops
    return {"openapi": "3.0.2", "info": {"title": "Stratum vault API (Vault-compatible)", "version": "1"},
            "servers": [{"url": "/v1"}],
            "components": {"securitySchemes": {"token": {"type": "apiKey", "in": "header", "name": "X-Vault-Token"}}},
            "security": [{"token": []}], "paths": paths}
