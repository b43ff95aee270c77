"""The AI backend: a language model proposes answers as JSON from a sentence; they are only a proposal.

The model is the host's choice, never the repository's: `[forms.ai]` in stratumd.toml names an
OpenAI-compatible endpoint (`url` up to /v1, `model`, `api_key_env` naming the variable that holds the key).
The request carries the form's elements (names, types, bounds, options, conditions) and the user's sentence;
the reply's JSON object becomes raw answers that go through exactly the same FormSession.check as any other
backend, and the person confirms or edits them (the CLI asks each question with the proposal as default).
Bounded: one request, a deadline, a size cap on the reply; element names the form lacks are dropped.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconcilers.errors import SettingsError, TransientError
from reconcilers.forms.model import Element, Form

MAX_REPLY = 256 * 1024
TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Provider:
    """An OpenAI-compatible chat endpoint from host settings."""

    url: str
    model: str
    api_key: str = ""


def provider_from(settings: Mapping[str, Any]) -> Provider:
    """The `[forms.ai]` table of host settings; SettingsError naming what is missing."""
    table = settings.get("ai") if isinstance(settings.get("ai"), Mapping) else None
    if not table or not table.get("url") or not table.get("model"):
        raise SettingsError("no language model is configured for forms", where="stratumd.toml [forms.ai]",
                            hint='set url = "http://127.0.0.1:8000/v1" (OpenAI-compatible), model = "...", '
                                 'and api_key_env = "NAME" if it needs a key')
    key_env = str(table.get("api_key_env") or "")
    key = os.environ.get(key_env, "") if key_env else ""
    if key_env and not key:
        raise SettingsError(f"the variable {key_env} (api_key_env) is empty", where="stratumd.toml [forms.ai]",
                            hint=f"export {key_env}=<key>")
    return Provider(str(table["url"]).rstrip("/"), str(table["model"]), key)


def _describe(e: Element) -> dict[str, Any]:
    out: dict[str, Any] = {"name": e.name, "type": e.type, "question": e.prompt}
    for key, value in (("help", e.help), ("default", e.default), ("min", e.minimum), ("max", e.maximum),
                       ("pattern", e.pattern), ("shown_when", e.when), ("required", e.required)):
        if value not in (None, ""):
            out[key] = value
    if e.options:
        out["options"] = [o.value for o in e.options]
    if e.fields:
        out["fields"] = [_describe(f) for f in e.fields]
    return out


def instructions(form: Form, options: Mapping[str, tuple[str, ...]]) -> str:
    """The system message: the form as JSON and what to answer."""
    elements = []
    for e in form.elements:
        if e.type == "password":
            continue                          # secrets are never asked of (or sent to) a model
        d = _describe(e)
        if e.name in options:
            d["options"] = list(options[e.name])
        elements.append(d)
    return ("You fill in an infrastructure form. Reply with one JSON object mapping element names to values, "
            "and nothing else. Use only the elements below; leave out what the request does not say. "
            f"Form {form.name!r} ({form.title}): " + json.dumps(elements))


def propose(provider: Provider, form: Form, request: str, options: Mapping[str, tuple[str, ...]]) -> dict[str, Any]:
    """The model's proposed answers for `request` (unchecked: the caller checks them like any answers)."""
    body = json.dumps({
        "model": provider.model, "temperature": 0, "response_format": {"type": "json_object"},
        "messages": [{"role": "system", "content": instructions(form, options)},
                     {"role": "user", "content": request[:4000]}],
    }).encode()
    headers = {"Content-Type": "application/json"}
    if provider.api_key:
        headers["Authorization"] = f"Bearer {provider.api_key}"
    req = urllib.request.Request(f"{provider.url}/chat/completions", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            raw = resp.read(MAX_REPLY + 1)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        reason = getattr(err, "reason", err)
        raise TransientError(f"the language model did not answer: {reason}", where=provider.url,
                             hint="check [forms.ai] url, or answer the form yourself (--answers, or no --ai)") from err
    if len(raw) > MAX_REPLY:
        raise TransientError(f"the language model's reply is over {MAX_REPLY} bytes", where=provider.url)
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
        start, end = content.find("{"), content.rfind("}")
        proposal = json.loads(content[start:end + 1]) if start >= 0 else None
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise TransientError("the language model's reply is not the JSON object asked for", where=provider.url,
                             hint="try again, or answer the form yourself") from err
    if not isinstance(proposal, dict):
        raise TransientError("the language model's reply is not a JSON object", where=provider.url)
    names = {e.name for e in form.elements if e.type != "password"}
    return {k: v for k, v in proposal.items() if k in names}
