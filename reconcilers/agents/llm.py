"""LLM providers over HTTP: OpenAI-compatible chat completions (OpenAI, vLLM, llama.cpp's server, Ollama) and
Anthropic messages, with tool calls, token usage from the response, and failures classed for the fallback
chain (429, 5xx, timeouts and refused connections may pass on another provider; other 4xx will not).

The HTTP client is injected (`httpx.Client`), so tests point it at a loopback server standing in for a hosted
model. API keys come resolved from the secrets port and are only ever put in request headers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from reconcilers.agents.model import Provider
from reconcilers.locations import sanitize_url

MAX_BODY = 4 * 1024 * 1024           # bytes of a model's answer read at most


class ProviderError(Exception):
    """A provider call failed; `retryable` says whether another try (or another provider) may work."""

    def __init__(self, message: str, *, retryable: bool, status: int = 0, after: float | None = None) -> None:
        super().__init__(message)
        self.retryable, self.status, self.after = retryable, status, after


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool the model asked for: its call id, name and decoded arguments."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Reply:
    """One model answer: text, tool calls, token usage."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tokens_in: int = 0
    tokens_out: int = 0


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool offered to the model (JSON Schema parameters)."""

    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


def _post(client: httpx.Client, provider: Provider, url: str, headers: dict[str, str],
          body: dict[str, Any]) -> dict[str, Any]:
    """POST JSON and decode the answer, mapping every failure to a ProviderError. The answer is read as a
    stream with a byte cap (MAX_BODY) and an overall deadline (the provider's timeout): a server that drips
    bytes cannot hold a worker longer than that, nor fill its memory."""
    deadline = time.monotonic() + provider.timeout
    try:
        with client.stream("POST", url, headers=headers, json=body, timeout=provider.timeout) as resp:
            status = resp.status_code
            after = resp.headers.get("retry-after", "")
            chunks: list[bytes] = []
            size = 0
            for chunk in resp.iter_bytes():
                size += len(chunk)
                if size > MAX_BODY:
                    raise ProviderError(f"provider {provider.id}: answer over {MAX_BODY} bytes", retryable=False)
                if time.monotonic() > deadline:
                    raise ProviderError(f"provider {provider.id}: no complete answer within {provider.timeout:g} s",
                                        retryable=True)
                chunks.append(chunk)
    except httpx.TimeoutException as err:
        raise ProviderError(f"provider {provider.id}: no answer within {provider.timeout:g} s",
                            retryable=True) from err
    except httpx.ConnectError as err:
        # The usual first failure on a new machine (no model server yet): say where and what to do.
        raise ProviderError(f"provider {provider.id}: could not connect to {sanitize_url(provider.base_url)} "
                            f"({err}); start the model server there or change base_url in agents/",
                            retryable=True) from err
    except httpx.HTTPError as err:
        raise ProviderError(f"provider {provider.id}: {type(err).__name__}: {err}", retryable=True) from err
    content = b"".join(chunks)
    if status == 429 or status >= 500:
        raise ProviderError(f"provider {provider.id}: HTTP {status}", retryable=True, status=status,
                            after=float(after) if after.replace(".", "", 1).isdigit() else None)
    if status >= 400:
        raise ProviderError(f"provider {provider.id}: HTTP {status}: {content[:300].decode('utf-8', 'replace')}",
                            retryable=False, status=status)
    try:
        data = json.loads(content)
    except ValueError as err:
        raise ProviderError(f"provider {provider.id}: the answer is not JSON", retryable=True) from err
    if not isinstance(data, dict):
        raise ProviderError(f"provider {provider.id}: the answer is not a JSON object", retryable=True)
    return data


def _args(raw: Any) -> dict[str, Any]:
    """Tool arguments: OpenAI sends a JSON string, Anthropic an object; anything else is no arguments."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return {}
    return dict(raw) if isinstance(raw, dict) else {}


def openai_chat(client: httpx.Client, provider: Provider, key: str, messages: Sequence[dict[str, Any]],
                tools: Sequence[ToolSpec]) -> Reply:
    """One chat-completions call."""
    body: dict[str, Any] = {"model": provider.model, "messages": list(messages), "max_tokens": provider.max_tokens}
    if tools:
        body["tools"] = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                           "parameters": t.parameters}} for t in tools]
    headers = {"authorization": f"Bearer {key}"} if key else {}
    data = _post(client, provider, provider.base_url.rstrip("/") + "/chat/completions", headers, body)
    try:
        msg = data["choices"][0]["message"]
    except (KeyError, IndexError, TypeError) as err:
        raise ProviderError(f"provider {provider.id}: the answer has no choices[0].message", retryable=True) from err
    calls = tuple(ToolCall(str(c.get("id", "")), str(c.get("function", {}).get("name", "")),
                           _args(c.get("function", {}).get("arguments")))
                  for c in msg.get("tool_calls") or () if isinstance(c, dict))
    usage = data.get("usage") or {}
    return Reply(str(msg.get("content") or ""), calls, int(usage.get("prompt_tokens", 0)),
                 int(usage.get("completion_tokens", 0)))


def anthropic_messages(client: httpx.Client, provider: Provider, key: str, messages: Sequence[dict[str, Any]],
                       tools: Sequence[ToolSpec]) -> Reply:
    """One messages call. `messages` are in the OpenAI shape; they are converted here."""
    system = "\n".join(str(m["content"]) for m in messages if m["role"] == "system")
    converted: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] == "system":
            continue
        if m["role"] == "tool":
            converted.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": m["tool_call_id"],
                                                           "content": str(m["content"])}]})
        elif m["role"] == "assistant" and m.get("tool_calls"):
            content: list[dict[str, Any]] = [{"type": "text", "text": m["content"]}] if m.get("content") else []
            content += [{"type": "tool_use", "id": c["id"], "name": c["function"]["name"],
                         "input": _args(c["function"]["arguments"])} for c in m["tool_calls"]]
            converted.append({"role": "assistant", "content": content})
        else:
            converted.append({"role": m["role"], "content": str(m["content"])})
    body: dict[str, Any] = {"model": provider.model, "max_tokens": provider.max_tokens, "messages": converted}
    if system:
        body["system"] = system
    if tools:
        body["tools"] = [{"name": t.name, "description": t.description, "input_schema": t.parameters}
                         for t in tools]
    headers = {"anthropic-version": "2023-06-01"}
    if key:
        headers["x-api-key"] = key
    base = provider.base_url.rstrip("/")
    data = _post(client, provider, base + ("/messages" if base.endswith("/v1") else "/v1/messages"), headers, body)
    blocks = [b for b in data.get("content") or () if isinstance(b, dict)]
    text = "".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")
    calls = tuple(ToolCall(str(b.get("id", "")), str(b.get("name", "")), _args(b.get("input")))
                  for b in blocks if b.get("type") == "tool_use")
    usage = data.get("usage") or {}
    return Reply(text, calls, int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0)))


def chat(client: httpx.Client, provider: Provider, key: str, messages: Sequence[dict[str, Any]],
         tools: Sequence[ToolSpec]) -> Reply:
    """One call to `provider`, whichever API it speaks."""
    if provider.kind == "openai":
        return openai_chat(client, provider, key, messages, tools)
    if provider.kind == "anthropic":
        return anthropic_messages(client, provider, key, messages, tools)
    raise ProviderError(f"provider {provider.id} is a {provider.kind} provider, not a model", retryable=False)


def cost(provider: Provider, tokens_in: int, tokens_out: int) -> float:
    """Money for the tokens at the provider's prices per 1,000."""
    return tokens_in / 1000.0 * provider.price_in + tokens_out / 1000.0 * provider.price_out
