"""The Nickel of an imported cloud object (`stratum infra import`): the fields Stratum compares, so the first
plan after committing it adopts the object in place instead of replacing it."""

from __future__ import annotations

import json

from reconcilers.infra.providers.cloud import CloudObject

_FIELDS = {"server": ("size", "image", "zone"), "network": ("cidr",), "subnet": ("cidr", "zone"),
           "volume": ("size_gb", "zone"), "firewall": (),
           "dns_record": ("zone", "name", "record_type", "ttl", "values")}
_REFS = {"subnet_id": "subnet", "vpc_id": "network", "instance_id": "server"}


def _value(v: object, key: str = "") -> str:
    if key == "record_type":
        return f"'{v}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(json.dumps(str(x)) for x in v) + "]"
    return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else json.dumps(str(v))


def to_nickel(provider: str, obj: CloudObject, rid: str) -> str:
    """An infra file declaring the object as resource `rid`."""
    lines = [f"# Imported from {provider} {obj.kind} {obj.native_id}: commit this (or merge it into an infra/ file).",
             "{", "  resources = {", f"    {rid} = {{", f"      kind = '{obj.kind},", f"      provider = '{provider},"]
    lines += [f"      {k} = {_value(obj.attrs[k], k)}," for k in _FIELDS.get(obj.kind, ()) if k in obj.attrs]
    if obj.kind == "server" and "image" not in obj.attrs:
        lines.append(f'      image = "SET-ME",  # {provider} does not say which image a server was made from: name '
                     "it (only a replacement uses it)")
    user = {k: v for k, v in obj.tags.items() if not k.startswith("stratum:") and k != "Name"}
    if user:
        pairs = ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in sorted(user.items()))
        lines.append(f"      tags = {{ {pairs} }},")
    extra = dict(getattr(obj.raw, "extra", {}) or {})
    for key, field in _REFS.items():
        if extra.get(key) and field != obj.kind:
            lines.append(f"      # {field}: {extra[key]} on {provider}; declare it too (or import it) and set "
                         f"{field} = \"<its resource id>\"")
    if obj.kind == "firewall":
        lines.append("      # rules: copy them from the provider's console; they are not read back")
    lines += ["    },", "  },", "}"]
    return "\n".join(lines)
