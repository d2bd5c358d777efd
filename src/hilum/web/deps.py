"""Typed FastAPI dependencies: the services of the running process."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine

from hilum.app import Services
from hilum.web.problems import Problem


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.services.engine
    return engine


ServicesDep = Annotated[Services, Depends(get_services)]
EngineDep = Annotated[Engine, Depends(get_engine)]


def dicomweb_base(request: Request) -> str:
    """The DICOMweb base URL clients should use in RetrieveURLs and BulkDataURIs."""
    services: Services = request.app.state.services
    public = services.settings.http.public_url.rstrip("/")
    if public:
        return f"{public}/dicomweb"
    return str(request.base_url).rstrip("/") + "/dicomweb"


BaseUrlDep = Annotated[str, Depends(dicomweb_base)]


_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def checked_uid(value: str, what: str = "") -> str:
    """A UID from a path or query parameter, or a 400 problem (PS3.5 9.1: digits and dots, <= 64)."""
    if len(value) > 64 or not _UID.fullmatch(value):
        raise Problem(400, f"{what + ' ' if what else ''}{value[:80]!r} is not a UID")
    return value
