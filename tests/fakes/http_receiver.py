"""A local HTTP receiver on 127.0.0.1 that records every request and can be told to misbehave.

Stands in for an Alertmanager webhook endpoint or an Alertmanager's ``/api/v2/alerts``. Every request is
recorded, failed ones too (with the status it got), so a test can count attempts. Misbehaviour:

* ``fail_next(n, status=500, retry_after=None)``: the next ``n`` requests get ``status``;
* ``always(status)``: every request gets ``status`` until ``always(None)``;
* ``delay_s``: sleep that long before answering (a slow receiver);
* a 3xx status comes with ``Location: /redirected``;
* not started yet (``FakeHttpReceiver(port=free_port())`` then ``start()`` later): connection refused.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def free_port() -> int:
    """A port nothing listens on right now (bind to 0 and release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it, and the status it answered."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float  # time.monotonic()

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True)
class _Failure:
    status: int
    retry_after: str | None


class FakeHttpReceiver:
    """``with FakeHttpReceiver() as rx: ... rx.url ... rx.wait_for(2)``."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.delay_s = 0.0
        self._lock = threading.Condition()
        self._received: list[Received] = []
        self._failures: deque[_Failure] = deque()
        self._always: _Failure | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> FakeHttpReceiver:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                owner._handle(self)

            def do_PUT(self) -> None:  # noqa: N802
                owner._handle(self)

            def do_GET(self) -> None:  # noqa: N802 - what a client following a redirect would send
                owner._handle(self)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fake-http-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHttpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- scripting ----------------------------------------------------------------------------------------------

    def fail_next(self, n: int, status: int = 500, retry_after: str | None = None) -> None:
        with self._lock:
            self._failures.extend(_Failure(status, retry_after) for _ in range(n))

    def always(self, status: int | None, retry_after: str | None = None) -> None:
        with self._lock:
            self._always = None if status is None else _Failure(status, retry_after)

    # -- what arrived -------------------------------------------------------------------------------------------

    @property
    def received(self) -> list[Received]:
        """Every request, in arrival order, failed ones included."""
        with self._lock:
            return list(self._received)

    def accepted(self) -> list[Received]:
        """The requests answered 2xx."""
        return [r for r in self.received if r.ok]

    def wait_for(self, n: int, timeout: float = 10.0, *, accepted_only: bool = True) -> list[Received]:
        """Block until ``n`` (accepted) requests arrived; raises ``TimeoutError`` with what did arrive."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                got = [r for r in self._received if r.ok or not accepted_only]
                if len(got) >= n:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"expected {n} requests, got {len(got)}: "
                                       f"{[(r.status, r.body[:200]) for r in self._received]}")
                self._lock.wait(left)

    # -- the handler --------------------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        if self.delay_s:
            time.sleep(self.delay_s)
        with self._lock:
            failure = self._failures.popleft() if self._failures else self._always
            status = failure.status if failure else 200
        # recorded before answering: once a client has its answer, ``received`` already shows the request
        with self._lock:
            self._received.append(Received(h.command, h.path, {k: v for k, v in h.headers.items()}, body, status,
                                           time.monotonic()))
            self._lock.notify_all()
        answer = json.dumps({"status": "error" if failure else "success"}).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(answer)))
            if failure is not None and failure.retry_after is not None:
                h.send_header("Retry-After", failure.retry_after)
            if 300 <= status < 400:
                h.send_header("Location", "/redirected")
            h.end_headers()
            h.wfile.write(answer)
        except OSError:  # the client gave up (timeout)
            pass
