"""STOW-RS (PS3.18 10.5): store instances sent as multipart/related application/dicom.

The whole body is received into the staging area first; only a complete,
well-formed body is ingested, so a truncated, malformed or oversized request
stores nothing. Each part then goes through the one ingest path (the same as
C-STORE), several at a time so they share group commits.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from hilum.app import Services
from hilum.domain.errors import IngestFailure, IngestStatus, out_of_space
from hilum.ingest.service import IngestResult, IngestService
from hilum.web.deps import dicomweb_base
from hilum.web.dicomweb.json import DICOM_JSON, element
from hilum.web.dicomweb.multipart import MultipartReader, PartWriter, boundary_of
from hilum.web.problems import Problem

LOG = logging.getLogger(__name__)
router = APIRouter()

_DICOM = "application/dicom"
_INGEST_THREADS = 8
# PS3.18 Table 10.5.3-3 / PS3.4 B.2.3 failure reasons for parts that are not instances.
_REASON_NOT_DICOM = 0xC000
# Retry-After (seconds) on answers that say the archive is out of storage space.
RETRY_AFTER_SECONDS = 60


class _StagedPart:
    """One received part: a staging file (for application/dicom) or a refusal."""

    def __init__(self, service: IngestService, content_type: str) -> None:
        self.content_type = content_type
        self.path: Path | None = None
        self.fd = -1
        self.size = 0
        self._head: bytes | None = b""  # first bytes, until the preamble is checked
        if content_type in (_DICOM, ""):
            try:
                self.fd, self.path = service.new_staging_file()
            except OSError as exc:
                raise staging_failed(exc) from exc

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.fd < 0:
            return
        if self._head is not None:
            self._head += data
            if len(self._head) < 132:
                return
            data, self._head = self._with_preamble(self._head), None
        self._write(data)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as exc:
            raise staging_failed(exc) from exc

    @staticmethod
    def _with_preamble(head: bytes) -> bytes:
        # Some clients (dicomweb-client, pydicom's dcmwrite without preamble) send the
        # file meta group without the 128-byte preamble and "DICM": add them.
        if head[128:132] != b"DICM" and head[:2] == b"\x02\x00":
            return bytes(128) + b"DICM" + head
        return head

    def close(self) -> None:
        if self.fd >= 0:
            if self._head is not None:
                self._write(self._with_preamble(self._head))
                self._head = None
            os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        self._head = None  # nothing more is written: the part is thrown away
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None


class _Receiver:
    def __init__(self, service: IngestService, limit: int) -> None:
        self.service = service
        self.limit = limit
        self.parts: list[_StagedPart] = []
        self.received = 0

    def begin(self, headers: dict[str, str]) -> PartWriter:
        media, _ = boundary_of(headers.get("content-type", ""))
        part = _StagedPart(self.service, media)
        self.parts.append(part)
        return part

    def discard(self) -> None:
        for part in self.parts:
            part.discard()


def staging_failed(exc: OSError) -> Exception:
    """A staging write failed: a full disk is 507 with Retry-After (the client may send the
    same request again once space is freed), anything else stays a server error."""
    if out_of_space(exc):
        LOG.warning("STOW-RS upload refused: out of storage space: %s", exc)
        return Problem(
            507, f"the archive is out of storage space; nothing of this request was stored: {exc}",
            "Insufficient Storage", headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    return exc


def _executor(services: Services) -> ThreadPoolExecutor:
    pool: ThreadPoolExecutor | None = getattr(services, "_stow_pool", None)
    if pool is None:
        pool = ThreadPoolExecutor(max_workers=_INGEST_THREADS, thread_name_prefix="stow-ingest")
        services._stow_pool = pool  # type: ignore[attr-defined]
    return pool


@router.post(
    "/studies",
    summary="STOW-RS: store instances",
    responses={
        200: {"description": "all stored"},
        202: {"description": "some failed"},
        409: {"description": "none stored"},
    },
)
async def store_instances(request: Request) -> JSONResponse:
    return await _store(request, None)


@router.post("/studies/{study_uid}", summary="STOW-RS: store instances of one study")
async def store_study_instances(request: Request, study_uid: str) -> JSONResponse:
    return await _store(request, study_uid)


async def _store(request: Request, study_uid: str | None) -> JSONResponse:
    services: Services = request.app.state.services
    limit = services.settings.http.max_upload_bytes
    media, params = boundary_of(request.headers.get("content-type", ""))
    if media != "multipart/related":
        raise Problem(415, f'STOW-RS takes multipart/related; type="{_DICOM}", not {media or "nothing"}')
    part_type = params.get("type", _DICOM).lower()
    if part_type != _DICOM:
        raise Problem(
            415,
            f"only application/dicom parts are accepted (type={part_type!r}); "
            "metadata + bulk data (application/dicom+json) uploads are not supported",
        )
    boundary = params.get("boundary")
    if not boundary:
        raise Problem(400, "Content-Type has no boundary parameter")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise Problem(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")

    receiver = _Receiver(services.ingest, limit)
    reader = MultipartReader(boundary, receiver)
    try:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise Problem(413, f"request body exceeds the limit of {limit} bytes")
            reader.feed(chunk)
        reader.finish()
        if not receiver.parts:
            raise Problem(400, "multipart body has no parts")
    except BaseException:
        receiver.discard()
        raise
    source = f"stow:{request.client.host if request.client else 'unknown'}"
    outcomes = await run_in_threadpool(_ingest_all, services, receiver.parts, source, study_uid)
    return _response(outcomes, dicomweb_base(request), study_uid)


def _ingest_one(
    service: IngestService, part: _StagedPart, source: str, study_uid: str | None
) -> IngestResult | IngestFailure:
    if part.path is None:
        failure = IngestFailure(
            IngestStatus.NOT_DICOM, f"part of type {part.content_type!r} is not application/dicom"
        )
        return failure
    path, part.path = part.path, None
    try:
        return service.ingest_staged(path, source=source, expected_study_uid=study_uid)
    except IngestFailure as failure:
        return failure


def _ingest_all(
    services: Services, parts: list[_StagedPart], source: str, study_uid: str | None
) -> list[IngestResult | IngestFailure]:
    pool = _executor(services)
    try:
        futures = [pool.submit(_ingest_one, services.ingest, part, source, study_uid) for part in parts]
        results: list[IngestResult | IngestFailure] = []
        for future in futures:
            try:
                results.append(future.result())
            except Exception as exc:  # a bug must not lose the other parts' answers
                results.append(IngestFailure(IngestStatus.PROCESSING_FAILURE, str(exc)))
        return results
    finally:
        for part in parts:
            part.discard()


def _response(outcomes: list[IngestResult | IngestFailure], base: str, study_uid: str | None) -> JSONResponse:
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    warnings = False
    study_uids = set()
    for outcome in outcomes:
        if isinstance(outcome, IngestResult):
            study_uids.add(outcome.study_instance_uid)
            url = (
                f"{base}/studies/{outcome.study_instance_uid}/series/{outcome.series_instance_uid}"
                f"/instances/{outcome.sop_instance_uid}"
            )
            item = {
                "00081150": element("UI", outcome.sop_class_uid),
                "00081155": element("UI", outcome.sop_instance_uid),
                "00081190": element("UR", url),
            }
            if outcome.message:
                warnings = True
                item["00081196"] = element("US", 0xB007)  # PS3.4 B.2.3: data set does not match
            referenced.append(item)
        else:
            reason = outcome.status.dimse_status
            if outcome.status is IngestStatus.NOT_DICOM:
                reason = _REASON_NOT_DICOM
            failed.append(
                {
                    "00081150": element("UI", outcome.sop_class_uid or None),
                    "00081155": element("UI", outcome.sop_instance_uid or None),
                    "00081197": element("US", reason),
                    # Not a standard attribute of the item: the reason in words, as a comment.
                    "00204000": element("LT", str(outcome.message)[:10240]),
                }
            )
    body: dict[str, Any] = {}
    retrieve_study = study_uid or (next(iter(study_uids)) if len(study_uids) == 1 else None)
    if retrieve_study and referenced:
        body["00081190"] = element("UR", f"{base}/studies/{retrieve_study}")
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    full = [o for o in outcomes if isinstance(o, IngestFailure) and o.status is IngestStatus.OUT_OF_RESOURCES]
    if full and len(full) == len(outcomes):
        # Nothing stored only because the archive is full: not a conflict (409 tells the client
        # not to send it again) but 507 with Retry-After; the same request succeeds later.
        raise Problem(
            507, f"the archive is out of storage space; none of the {len(outcomes)} instances was stored: "
            f"{full[0].message}", "Insufficient Storage", headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    if not referenced:
        status = 409  # PS3.18 10.5.3.1: none stored
    elif failed or warnings:
        status = 202  # some stored, some failed or stored with warnings
    else:
        status = 200
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if full else None
    return JSONResponse(body, status_code=status, media_type=DICOM_JSON, headers=headers)
