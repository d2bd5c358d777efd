"""A bound on every request body that is not a DICOM upload.

STOW-RS bodies (``POST /dicomweb/studies[/{study}]``) are streamed to staging and
bounded by ``http.max_upload_bytes`` in the route itself. Every other body (JSON
for logins, jobs, users, remote AEs, share links, annotations...) is read into
memory by its route, so it is bounded here by ``http.max_request_bytes``: a
declared Content-Length over the limit gets 413 before anything is read, and a
chunked body is cut off with 413 as soon as it passes the limit. Without this a
public endpoint such as the login would buffer whatever an anonymous client sends.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

_UPLOADS = re.compile(r"^/dicomweb/studies(/[^/]+)?/?$")


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` once a body passes the limit. An HTTPException, because
    FastAPI turns any other exception met while reading a body into 400 "error parsing
    the body"; this one its problem handler answers as 413 (hilum.web.problems)."""

    def __init__(self, detail: str) -> None:
        super().__init__(413, detail, headers={"Connection": "close"})


class RequestSizeLimit:
    def __init__(self, app: App, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "POST" and _UPLOADS.match(scope["path"]):
            await self.app(scope, receive, send)  # bounded by the STOW-RS route itself
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _too_large(send, "invalid Content-Length", 400)
                    return
                if declared > self.limit:
                    await _too_large(send, self._detail())
                    return
        received = 0
        started = False

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self._detail())
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracking_send)
        except BodyTooLarge:  # read outside a route (a middleware): answered here
            if not started:
                await _too_large(send, self._detail())

    def _detail(self) -> str:
        return (f"request body larger than {self.limit} bytes (http.max_request_bytes); "
                "DICOM uploads go to STOW-RS")


async def _too_large(send: Send, detail: str, status: int = 413) -> None:
    title = "Content Too Large" if status == 413 else "Bad Request"
    body = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": body})
