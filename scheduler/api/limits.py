"""The request body limit: a body over ``Settings.max_request_bytes`` is answered 413 and
never read whole (issue 16: a 205 MB job body was accepted and the server grew to 1.5 GB).

A pure ASGI middleware, not Starlette's ``BaseHTTPMiddleware`` (a task and a stream per
request): a request whose ``Content-Length`` is within the limit goes through untouched
(the HTTP server reads no more than that many bytes), one over it is refused before a
byte of its body is read, and one without a length (``Transfer-Encoding: chunked``) is
counted as it streams in and refused as soon as the count passes the limit, whatever the
route was doing with it. The fields of a body have their own limits (``gpuq.wire.common``),
a 422 naming the field.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gpuq.wire.common import MAX_ARGV_BYTES, MAX_ENV_BYTES, MAX_SCRIPT_BYTES


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n % (1024 * 1024) == 0 else f"{n} bytes"


class BodyTooLarge(Exception):
    """Raised into the route reading a chunked body that passed the limit."""


class BodyLimit:
    """Answer 413 to a request whose body is over ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.answer = json.dumps({
            "detail": f"the request body is over {max_bytes} bytes ({_size(max_bytes)}), "
                      f"the server's limit (max_request_bytes): send a smaller one. A job's "
                      f"script is at most {_size(MAX_SCRIPT_BYTES)}, its environment "
                      f"{_size(MAX_ENV_BYTES)} and its argv {_size(MAX_ARGV_BYTES)} (pass "
                      f"large data in a file instead); an admin can raise "
                      f"max_request_bytes",
            "limit_bytes": max_bytes,
        }).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    break  # not a length: counted below
                if length > self.max_bytes:
                    await self._refuse(send)
                    return
                # The server hands the app no more than Content-Length bytes.
                await self.app(scope, receive, send)
                return
        await self._counted(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A body of unknown length: count it as the app reads it. Past the limit, the
        app's read fails (``BodyTooLarge``) and whatever it answers or raises then is
        replaced by the 413."""
        seen = 0
        over = False
        started = False

        async def counting_receive() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    over = True
                    raise BodyTooLarge(f"the request body is over {self.max_bytes} bytes")
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over and not started:
                return  # the app's answer to the failed read: the 413 goes instead
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not over or started:
                raise
        if over and not started:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        headers: list[Any] = [(b"content-type", b"application/json"),
                              (b"content-length", str(len(self.answer)).encode()),
                              (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": self.answer})
