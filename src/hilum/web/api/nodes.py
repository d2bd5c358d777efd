"""Remote AEs: the DICOM nodes Hilum sends to, moves from, and answers C-MOVEs for."""

from __future__ import annotations

import time

from fastapi import APIRouter, Response
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError

from hilum.app import Services
from hilum.config import RemoteAE
from hilum.dimse.scu import Scu, ScuError
from hilum.domain.errors import HilumError
from hilum.jobs.network import describe_association_failure
from hilum.web.deps import ServicesDep
from hilum.web.problems import Problem

router = APIRouter()

ECHO_TIMEOUT = 10.0


class RemoteAEOut(BaseModel):
    name: str
    ae_title: str
    host: str
    port: int
    description: str
    # Services it may use on Hilum besides C-ECHO (store, find, move, get).
    permissions: list[str] = []
    # Hilum's associations to it use DICOM TLS.
    tls: bool = False
    # Defined in the configuration file: written again at every start, so it cannot
    # be deleted here.
    from_config: bool


class EchoResult(BaseModel):
    ok: bool
    status: int | None  # the C-ECHO response status (0 = success); None: no response
    elapsed_ms: float
    error: str | None


def _configured(services: Services) -> set[str]:
    return {node.name for node in services.settings.remote_aes}


def _out(services: Services, node: RemoteAE) -> RemoteAEOut:
    return RemoteAEOut(**node.model_dump(), from_config=node.name in _configured(services))


@router.get("/remote-aes")
def list_remote_aes(services: ServicesDep) -> list[RemoteAEOut]:
    return [_out(services, node) for node in services.nodes.all()]


@router.post("/remote-aes", status_code=201)
def create_remote_ae(node: RemoteAE, services: ServicesDep, response: Response) -> RemoteAEOut:
    try:
        services.nodes.add(node)
    except IntegrityError:  # added by someone else meanwhile
        raise Problem(409, f"a remote AE named {node.name!r} exists already") from None
    except HilumError as exc:
        raise Problem(409, str(exc)) from None
    response.headers["Location"] = f"/api/v1/remote-aes/{node.name}"
    return _out(services, services.nodes.get(node.name))


@router.get("/remote-aes/{name}")
def get_remote_ae(name: str, services: ServicesDep) -> RemoteAEOut:
    return _out(services, services.nodes.get(name))


@router.delete("/remote-aes/{name}", status_code=204)
def delete_remote_ae(name: str, services: ServicesDep) -> Response:
    node = services.nodes.get(name)
    if node.name in _configured(services):
        raise Problem(
            409,
            f"remote AE {name!r} is defined in the configuration file (remote_aes) and would be "
            "added again at the next start; remove it there",
        )
    services.nodes.remove(name)
    return Response(status_code=204)


@router.post("/remote-aes/{name}/echo")
def echo_remote_ae(name: str, services: ServicesDep) -> EchoResult:
    """C-ECHO (PS3.4 A) the remote AE, from Hilum's AE title; answers 200 either way."""
    node = services.nodes.get(name)
    scu = Scu.from_settings(services.settings.dicom, timeout=ECHO_TIMEOUT)
    started = time.perf_counter()
    status: int | None = None
    error: str | None = None
    try:
        status = scu.echo(node)
        if status != 0x0000:
            error = f"C-ECHO answered with status 0x{status:04X}"
    except (ScuError, OSError) as exc:
        error = describe_association_failure(exc, node, services.settings.dicom.ae_title)
    except Exception as exc:  # pynetdicom: e.g. the association dropped mid-way
        error = f"C-ECHO failed: {exc}"
    elapsed = (time.perf_counter() - started) * 1000
    return EchoResult(ok=error is None, status=status, elapsed_ms=round(elapsed, 1), error=error)
