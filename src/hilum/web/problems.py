"""Errors as RFC 9457 problem details (application/problem+json), one place for all routes."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from hilum.domain.errors import HilumError, IngestFailure, InvalidQuery, NotFound
from hilum.storage.base import StorageIntegrityError

LOG = logging.getLogger(__name__)
PROBLEM = "application/problem+json"


class Problem(HilumError):
    """Raise from a route to answer with a problem body."""

    def __init__(
        self, status: int, detail: str, title: str | None = None, *,
        headers: dict[str, str] | None = None, **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title
        self.headers = headers or {}
        self.extra = extra


def problem_response(status: int, detail: str, title: str | None = None, **extra: Any) -> JSONResponse:
    from http import HTTPStatus

    body = {
        "type": "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM)


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem) -> JSONResponse:
        response = problem_response(exc.status, exc.detail, exc.title, **exc.extra)
        response.headers.update(exc.headers)
        return response

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return problem_response(404, str(exc))

    @app.exception_handler(InvalidQuery)
    async def _invalid(_: Request, exc: InvalidQuery) -> JSONResponse:
        return problem_response(400, str(exc))

    @app.exception_handler(IngestFailure)
    async def _ingest(_: Request, exc: IngestFailure) -> JSONResponse:
        return problem_response(exc.status.http_status, exc.message)

    @app.exception_handler(StorageIntegrityError)
    async def _integrity(_: Request, exc: StorageIntegrityError) -> JSONResponse:
        # Encrypted at rest: altered or damaged data, or a wrong master key. Never the bytes.
        LOG.error("stored data failed its integrity check: %s", exc)
        return problem_response(500, str(exc), "Stored data failed its integrity check")

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        messages = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ()))
            messages.append(f"{where}: {error.get('msg', 'invalid')}")
        return problem_response(400, "; ".join(messages) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = problem_response(exc.status_code, str(exc.detail))
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response
