"""Which embedding providers a repository may pick: the built-in ones, and those the host declared by name.

Where node texts (and an operator's API key) are sent is the host's decision, never the repo's: a committed
`knowledge.embedding = { provider = "openai", url = <anywhere>, api_key_env = "AWS_SECRET_ACCESS_KEY" }` would
otherwise make the daemon or an operator's `stratum kb search` post that variable's value to any URL. So URLs,
models and the environment variables that hold credentials live in the host's stratumd.toml:

    [embedding.providers.corp]
    kind = "openai"                 # or "ollama"
    url = "https://embed.internal/v1"
    model = "text-embedding-3-small"
    api_key_env = "CORP_EMBED_KEY"

and the repo only names one: `knowledge.embedding.provider = "corp"` (or the built-in "fastembed" / "none").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconcilers.base import Problem
from reconcilers.knowledge.errors import KnowledgeError

BUILTIN = ("fastembed", "none")
KINDS = ("openai", "ollama")
HOST_TABLE = "embedding.providers"


@dataclass(frozen=True, slots=True)
class HostProvider:
    """One embedding endpoint the host declared in stratumd.toml `[embedding.providers.<name>]`."""

    name: str
    kind: str
    url: str
    model: str = ""
    api_key_env: str = ""

    def as_settings(self) -> dict[str, Any]:
        """The record embed.load_provider takes."""
        out: dict[str, Any] = {"provider": self.kind, "url": self.url}
        if self.model:
            out["model"] = self.model
        if self.api_key_env:
            out["api_key_env"] = self.api_key_env
        return out


def host_providers(host: Mapping[str, Any] | None) -> dict[str, HostProvider]:
    """The providers of the host's `[embedding.providers.*]` tables (host settings, all sections)."""
    table = ((host or {}).get("embedding") or {})
    declared = table.get("providers") if isinstance(table, Mapping) else None
    if not declared:
        return {}
    if not isinstance(declared, Mapping):
        raise KnowledgeError("[embedding.providers] must be a table of named providers", where="stratumd.toml",
                             hint='e.g. [embedding.providers.corp] kind = "openai", url = "https://..."')
    out: dict[str, HostProvider] = {}
    for name, spec in declared.items():
        where = f"stratumd.toml [{HOST_TABLE}.{name}]"
        if name in BUILTIN:
            raise KnowledgeError(f"embedding provider name {name!r} is reserved", where=where,
                                 hint="pick another name for the host's provider")
        if not isinstance(spec, Mapping):
            raise KnowledgeError("a provider must be a table", where=where, hint='give kind = "openai" and url')
        kind, url = str(spec.get("kind", "")), str(spec.get("url", ""))
        if kind not in KINDS:
            raise KnowledgeError(f"kind {kind!r} is not one of: {', '.join(KINDS)}", where=where,
                                 hint='set kind = "openai" (any OpenAI-compatible API) or "ollama"')
        if not url and kind == "openai":
            raise KnowledgeError("url is required", where=where, hint="the API base, e.g. https://host/v1")
        unknown = set(spec) - {"kind", "url", "model", "api_key_env"}
        if unknown:
            raise KnowledgeError(f"unknown keys {', '.join(sorted(unknown))}", where=where,
                                 hint="known: kind, url, model, api_key_env")
        out[str(name)] = HostProvider(str(name), kind, url or "http://127.0.0.1:11434",
                                      str(spec.get("model") or ""), str(spec.get("api_key_env") or ""))
    return out


def check_choice(choice: str, declared: Mapping[str, HostProvider]) -> list[Problem]:
    """A validate problem when the repo names a provider that is neither built in nor declared by the host."""
    if choice in BUILTIN or choice in declared:
        return []
    names = ", ".join([*BUILTIN, *sorted(declared)])
    return [Problem(f"knowledge.embedding.provider = {choice!r} is not an embedding provider this host declared "
                    f"(available: {names})", "stratum.ncl", reconciler="knowledge",
                    hint="pick one of those by name; URLs and credentials are host settings: the host adds "
                         f"a provider in stratumd.toml [{HOST_TABLE}.<name>]")]


def resolve(choice: str, declared: Mapping[str, HostProvider]) -> dict[str, Any] | None:
    """The settings embed.load_provider takes for the repo's choice (None when the choice is not allowed)."""
    if choice in BUILTIN:
        return {"provider": choice}
    found = declared.get(choice)
    return found.as_settings() if found is not None else None
