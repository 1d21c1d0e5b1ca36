"""A scriptable fake of the OpenAI chat-completions endpoint, on 127.0.0.1 and a free port.

Agentao (through the ``openai`` SDK) posts to ``<base_url>/chat/completions`` with ``stream=true`` and
``stream_options.include_usage=true``; this server answers in the same SSE chunk format as the real API (content
deltas, tool-call deltas, a finish chunk, a usage-only chunk with ``choices: []``, ``data: [DONE]``), or with one
JSON body when the request does not stream.

Replies are served in order from a queue; when it is empty, an optional ``fallback(n)`` makes the n-th extra reply
(for an endless tool-call loop). With neither, the server answers 400 (not retried by Agentao) so a test whose
script ran short fails loudly instead of hanging.

Error replies carry ``Retry-After: 0`` by default: Agentao's retry layer honours it (``_compute_backoff_delay``
returns the parsed header, capped at 60 s) instead of its 7.5 s * 2^n backoff, so a 5xx costs milliseconds.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any] | str
    id: str | None = None  # None: "call_<n>", unique per server

    def arguments_text(self) -> str:
        return self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)


@dataclass(frozen=True)
class Reply:
    """One scripted answer: text and/or tool calls with optional usage, or an HTTP error."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None  # None: "tool_calls" when there are tool calls, else "stop"
    status: int = 200
    error_message: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    chunk_size: int = 8  # characters of text per SSE delta


def usage(prompt: int, completion: int, *, cached: int | None = None, reasoning: int | None = None,
          cache_write: int | None = None) -> dict[str, Any]:
    """An OpenAI ``usage`` object; ``cached`` goes to ``prompt_tokens_details.cached_tokens``."""
    u: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                         "total_tokens": prompt + completion}
    details: dict[str, int] = {}
    if cached is not None:
        details["cached_tokens"] = cached
    if cache_write is not None:
        details["cache_write_tokens"] = cache_write
    if details:
        u["prompt_tokens_details"] = details
    if reasoning is not None:
        u["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return u


def text_reply(text: str, *, usage: dict[str, Any] | None = None, finish_reason: str | None = None) -> Reply:
    return Reply(text=text, usage=usage, finish_reason=finish_reason)


def tool_reply(*calls: ToolCall, text: str = "", usage: dict[str, Any] | None = None) -> Reply:
    return Reply(text=text, tool_calls=tuple(calls), usage=usage)


def error_reply(status: int = 500, message: str = "fake upstream failure", *,
                retry_after: str | None = "0") -> Reply:
    headers = (("Retry-After", retry_after),) if retry_after is not None else ()
    return Reply(status=status, error_message=message, headers=headers)


@dataclass
class Served:
    """What one request asked and what it got."""

    body: dict[str, Any]
    reply: Reply
    path: str


@dataclass
class FakeOpenAIServer:
    """Start with ``with FakeOpenAIServer() as srv:``; point Agentao at ``srv.base_url``."""

    host: str = "127.0.0.1"
    model: str = "fake-model"
    fallback: Callable[[int], Reply] | None = None
    served: list[Served] = field(default_factory=list)
    _queue: deque[Reply] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _extra: int = 0
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self._httpd = ThreadingHTTPServer((self.host, 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-openai", daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def enqueue(self, *replies: Reply) -> None:
        with self._lock:
            self._queue.extend(replies)

    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def start(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- serving ----------------------------------------------------------------------------------------------

    def _next(self, body: dict[str, Any], path: str) -> Reply:
        with self._lock:
            if self._queue:
                reply = self._queue.popleft()
            elif self.fallback is not None:
                self._extra += 1
                reply = self.fallback(self._extra)
            else:
                reply = Reply(status=400, error_message="fake server: script exhausted")
            self.served.append(Served(body, reply, path))
            return reply

    def _call_id(self, call: ToolCall) -> str:
        return call.id or f"call_{next(self._ids)}"

    def chunks(self, reply: Reply, include_usage: bool) -> list[dict[str, Any]]:
        """The SSE ``data`` objects for a streamed reply."""
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": self.model}
        out: list[dict[str, Any]] = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                           "finish_reason": None}]}]
        step = max(1, reply.chunk_size)
        for i in range(0, len(reply.text), step):
            out.append({**base, "choices": [{"index": 0, "delta": {"content": reply.text[i:i + step]},
                                             "finish_reason": None}]})
        for idx, call in enumerate(reply.tool_calls):
            delta = {"tool_calls": [{"index": idx, "id": self._call_id(call), "type": "function",
                                     "function": {"name": call.name, "arguments": call.arguments_text()}}]}
            out.append({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
        finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
        out.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        if include_usage and reply.usage is not None:
            out.append({**base, "choices": [], "usage": reply.usage})
        return out

    def completion(self, reply: Reply) -> dict[str, Any]:
        """The JSON body for a non-streamed reply."""
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
        if reply.tool_calls:
            message["tool_calls"] = [{"id": self._call_id(c), "type": "function",
                                      "function": {"name": c.name, "arguments": c.arguments_text()}}
                                     for c in reply.tool_calls]
        finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
        body: dict[str, Any] = {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0,
                                "model": self.model,
                                "choices": [{"index": 0, "message": message, "finish_reason": finish}]}
        if reply.usage is not None:
            body["usage"] = reply.usage
        return body


def _handler_for(server: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if not self.path.rstrip("/").endswith("/chat/completions"):
                self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                return
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                self._json(400, {"error": {"message": "bad json", "type": "invalid_request_error"}})
                return
            reply = server._next(body, self.path)
            if reply.status != 200:
                self._json(reply.status, {"error": {"message": reply.error_message, "type": "server_error",
                                                    "code": None}}, reply.headers)
                return
            if not body.get("stream"):
                self._json(200, server.completion(reply), reply.headers)
                return
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            for k, v in reply.headers:
                self.send_header(k, v)
            self.end_headers()
            for chunk in server.chunks(reply, include_usage):
                self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True

        def do_GET(self) -> None:
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

        def _json(self, status: int, obj: dict[str, Any], headers: tuple[tuple[str, str], ...] = ()) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

    return Handler
