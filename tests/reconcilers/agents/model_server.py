"""A loopback HTTP server that stands in for a hosted model in the tests: the subsets of OpenAI's
chat-completions (with tool calls) and Anthropic's messages APIs that Stratum uses, with scripted answers,
including 429 and 500 answers and slow responses. It is a real HTTP server on 127.0.0.1; only the model's
"thinking" is scripted."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Answer:
    """One scripted answer: status, JSON body, seconds to wait before answering."""

    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)
    delay: float = 0.0
    drip: float = 0.0                     # seconds between single bytes of the body (a server that drips)
    pad: int = 0                          # bytes of spaces added to the JSON body (an oversized answer)


# A script gets (path, request body, headers) and returns the answer.
Script = Callable[[str, dict[str, Any], dict[str, str]], Answer]


def openai_text(text: str, tokens_in: int = 100, tokens_out: int = 20) -> Answer:
    """A chat-completions answer with text."""
    return Answer(body={"id": "c1", "object": "chat.completion", "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out}})


def openai_tool(name: str, args: dict[str, Any], call_id: str = "call_1", tokens_in: int = 50,
                tokens_out: int = 10) -> Answer:
    """A chat-completions answer calling a tool."""
    return Answer(body={"id": "c2", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [{"id": call_id, "type": "function", "function": {
            "name": name, "arguments": json.dumps(args)}}]}}],
        "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out}})


def anthropic_text(text: str, tokens_in: int = 80, tokens_out: int = 15) -> Answer:
    """A messages answer with text."""
    return Answer(body={"id": "m1", "type": "message", "role": "assistant", "stop_reason": "end_turn",
                        "content": [{"type": "text", "text": text}],
                        "usage": {"input_tokens": tokens_in, "output_tokens": tokens_out}})


def anthropic_tool(name: str, args: dict[str, Any], call_id: str = "toolu_1") -> Answer:
    """A messages answer calling a tool."""
    return Answer(body={"id": "m2", "type": "message", "role": "assistant", "stop_reason": "tool_use",
                        "content": [{"type": "tool_use", "id": call_id, "name": name, "input": args}],
                        "usage": {"input_tokens": 40, "output_tokens": 8}})


class ModelServer:
    """The server; `requests` holds (path, body, headers) of every call, `url` its base URL."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                headers = {k.lower(): v for k, v in self.headers.items()}
                server.requests.append((self.path, body, headers))
                answer = server.script(self.path, body, headers)
                if answer.delay:
                    time.sleep(answer.delay)
                data = json.dumps(answer.body).encode() + b" " * answer.pad
                try:
                    self.send_response(answer.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    if answer.drip:
                        for i in range(len(data)):
                            self.wfile.write(data[i:i + 1])
                            self.wfile.flush()
                            time.sleep(answer.drip)
                    else:
                        self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass            # the client gave up waiting (the slow-answer tests)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def model_server(script: Script) -> Iterator[ModelServer]:
    """A running stand-in model server for the duration of the block."""
    server = ModelServer(script)
    try:
        yield server
    finally:
        server.close()
