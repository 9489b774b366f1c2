"""Run an ASGI app (a fake provider) on a free loopback port in a background thread, with fault
switches: make the fake answer an error status (with Retry-After), answer late, or stop answering
after N requests, as a provider that is down, overloaded or gone does."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn


@dataclass
class Faults:
    """What the fake does to the requests it receives, switchable while it serves.

    - `status`: answer this HTTP status (with a JSON error body, and `Retry-After: retry_after` when set)
      instead of handling the request;
    - `delay`: wait this many seconds before answering (longer than the client's timeout: a timeout);
    - `after`: let this many requests through untouched first (a provider that goes down mid-listing);
    - `times`: apply the fault to this many requests, then serve normally again (None: until cleared).
    `seen` counts every request; `faulted` the ones a fault touched.
    """

    status: int | None = None
    retry_after: str | None = None
    delay: float = 0.0
    after: int = 0
    times: int | None = None
    seen: int = 0
    faulted: int = 0

    def set(self, *, status: int | None = None, retry_after: str | None = None, delay: float = 0.0,
            after: int = 0, times: int | None = None) -> Faults:
        with _FAULTS_LOCK:
            self.status, self.retry_after, self.delay, self.after, self.times = status, retry_after, delay, after, times
            self.seen = self.faulted = 0
        return self

    def clear(self) -> None:
        self.set()

    def _take(self) -> tuple[int | None, str | None, float]:
        """This request's fault: (status, retry_after, delay), all empty when it passes untouched."""
        with _FAULTS_LOCK:
            self.seen += 1
            active = (self.status is not None or self.delay) and self.seen > self.after
            if not active or (self.times is not None and self.faulted >= self.times):
                return None, None, 0.0
            self.faulted += 1
            return self.status, self.retry_after, self.delay


_FAULTS_LOCK = threading.Lock()


def with_faults(app, faults: Faults):
    """The ASGI app `app` behind `faults` (HTTP requests only; lifespan and others pass through)."""

    async def faulty(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        status, retry_after, delay = faults._take()
        if delay:
            await asyncio.sleep(delay)
        if status is None:
            return await app(scope, receive, send)
        body = json.dumps({"error": {"code": "SERVER_ERROR", "type": "api_error",
                                     "description": f"fault injected: HTTP {status}",
                                     "message": f"fault injected: HTTP {status}"}}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if retry_after is not None:
            headers.append((b"retry-after", retry_after.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return faulty


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve_in_thread(app, port: int | None = None, faults: Faults | None = None) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 until the block exits; yields the base URL (no trailing slash).
    With `faults`, every request goes through them first (switch them on and off while serving)."""
    port = port or free_port()
    if faults is not None:
        app = with_faults(app, faults)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"fake-server-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"fake server on port {port} did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
