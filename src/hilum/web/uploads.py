"""Request bodies: too slow, too many at once from one client, or abandoned.

A plain ASGI middleware around every route (inside the audit middleware, so what it
refuses is audited):

* ``http.body_timeout``: while a request body is being received, each chunk must
  arrive within this many seconds. A client that declares a body and stalls gets
  408 (problem+json, ``Connection: close``) and its connection is closed; the
  route's partial work (a STOW-RS request's staging files) is undone like any
  failed read. Without it a stalled upload held its connection and staging file
  for ever.
* ``http.max_uploads_per_client``: requests with a body in progress at once from
  one client address (per HTTP worker process). One more gets 429 with
  Retry-After before anything of its body is read. 0 = no limit.
* A client that goes away before its body is complete is logged in one line (no
  traceback) and marked in the request state (:data:`CLIENT_DISCONNECTED`) so the
  audit middleware folds it into a minor failure instead of a serious one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

LOG = logging.getLogger(__name__)
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

# request.state key (scope["state"]) set when the client left before its body was complete
CLIENT_DISCONNECTED = "client_disconnected"
RETRY_AFTER_SECONDS = 5


class BodyTimeout(HTTPException):
    """Raised from ``receive`` when a body chunk does not come in time. An HTTPException
    so that FastAPI's body reading lets it through and the problem handler answers it."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            408,
            f"no request body data for {seconds:g} s (http.body_timeout): the upload was abandoned",
            headers={"Connection": "close"},
        )


def _has_body(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding":
            return True
        if name == b"content-length":
            return value.strip() not in (b"", b"0")
    return False


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class UploadGuard:
    def __init__(self, app: App, body_timeout: float, max_per_client: int) -> None:
        self.app = app
        self.body_timeout = body_timeout
        self.max_per_client = max_per_client
        # Requests with a body in progress, per client address. The event loop runs one
        # coroutine at a time and nothing awaits between the check and the increment.
        self.in_progress: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        address = client_address(scope)
        if self.max_per_client and self.in_progress[address] >= self.max_per_client:
            LOG.warning("HTTP %s %s from %s refused: %d uploads from this address in progress "
                        "(http.max_uploads_per_client)", scope["method"], scope["path"], address,
                        self.in_progress[address])
            await _too_many(send, self.max_per_client)
            return
        self.in_progress[address] += 1
        received = 0
        complete = False
        started = False

        async def timed_receive() -> Message:
            nonlocal received, complete
            if complete:  # after the body only http.disconnect comes: no deadline on it
                return await receive()
            try:
                async with asyncio.timeout(self.body_timeout):  # no task per chunk, unlike wait_for
                    message = await receive()
            except TimeoutError:
                LOG.warning("HTTP %s %s from %s: no body data for %g s after %d bytes (http.body_timeout); "
                            "closing the connection", scope["method"], scope["path"], address,
                            self.body_timeout, received)
                raise BodyTimeout(self.body_timeout) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
            elif message["type"] == "http.disconnect":
                complete = True
                scope.setdefault("state", {})[CLIENT_DISCONNECTED] = True
                LOG.info("HTTP %s %s from %s: client disconnected after %d bytes of its request body",
                         scope["method"], scope["path"], address, received)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, tracking_send)
        except ClientDisconnect:
            pass  # logged above in one line; no response can reach the client any more
        except BodyTimeout as exc:  # raised outside a route (a middleware read the body)
            if not started:
                await _problem(send, 408, str(exc.detail))
        finally:
            self.in_progress[address] -= 1
            if self.in_progress[address] <= 0:
                del self.in_progress[address]


async def _too_many(send: Send, limit: int) -> None:
    await _problem(
        send, 429, f"more than {limit} uploads from this address at once (http.max_uploads_per_client); "
        f"retry after {RETRY_AFTER_SECONDS} s",
        [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())],
    )


async def _problem(
    send: Send, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    from http import HTTPStatus

    body = json.dumps({"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status,
                       "detail": detail}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"), *(extra or []),
    ]})
    await send({"type": "http.response.body", "body": body})
