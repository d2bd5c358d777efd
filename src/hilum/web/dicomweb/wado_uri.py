"""WADO-URI (PS3.18 9): ``GET /dicomweb/wado?requestType=WADO&studyUID=...&seriesUID=...&objectUID=...``."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response
from pydicom.uid import UID, ExplicitVRLittleEndian

from hilum.app import Services
from hilum.dicom.pixels import LOSSY, NotTranscodable, transcode_instance
from hilum.dicom.render import Viewport, Window, render
from hilum.index.search import StoredInstance
from hilum.web.dicomweb.common import file_chunks, local_file, one_instance
from hilum.web.problems import Problem

router = APIRouter()
_RENDERED = ("image/jpeg", "image/png", "image/gif")


@router.get(
    "/wado",
    summary="WADO-URI: one instance as DICOM or rendered",
    responses={
        200: {
            "content": {"application/dicom": {}, "image/jpeg": {}, "image/png": {}},
            "description": "the object",
        },
        400: {"description": "bad parameters"},
        404: {"description": "unknown object"},
        406: {"description": "cannot produce the content type / transfer syntax"},
    },
)
def wado_uri(
    request: Request,
    request_type: str = Query(..., alias="requestType"),
    study_uid: str = Query(..., alias="studyUID"),
    series_uid: str = Query(..., alias="seriesUID"),
    object_uid: str = Query(..., alias="objectUID"),
    content_type: str | None = Query(None, alias="contentType"),
    transfer_syntax: str | None = Query(None, alias="transferSyntax"),
    frame_number: int | None = Query(None, alias="frameNumber", ge=1),
    rows: int | None = Query(None, ge=1, le=8192),
    columns: int | None = Query(None, ge=1, le=8192),
    window_center: float | None = Query(None, alias="windowCenter"),
    window_width: float | None = Query(None, alias="windowWidth", gt=0),
    image_quality: int | None = Query(None, alias="imageQuality", ge=1, le=100),
    anonymize: str | None = Query(None),
) -> Response:
    services: Services = request.app.state.services
    if request_type != "WADO":
        raise Problem(400, f"requestType must be WADO, not {request_type!r}")
    if anonymize:
        raise Problem(400, "anonymize=yes is not supported")
    instance = one_instance(services, study_uid, series_uid, object_uid)
    # PS3.18 9.1.2.2.1: the first acceptable of a comma-separated list; images default to JPEG.
    wanted = [t.split(";")[0].strip() for t in (content_type or "image/jpeg").split(",") if t.strip()]
    for media_type in wanted:
        if media_type == "application/dicom":
            return _dicom(services, instance, transfer_syntax)
        if media_type in _RENDERED:
            window = None
            if window_center is not None and window_width is not None:
                window = Window(window_center, window_width)
            viewport = None
            if rows or columns:
                viewport = Viewport(columns or rows or 1, rows or columns or 1)
            path = local_file(services, instance)
            try:
                body = render(
                    path,
                    (frame_number or 1) - 1,
                    media_type=media_type,
                    window=window,
                    viewport=viewport,
                    quality=image_quality or 90,
                )
            except IndexError:
                raise Problem(404, f"frame {frame_number} does not exist") from None
            except NotTranscodable as exc:
                if "application/dicom" in wanted:
                    continue
                raise Problem(406, f"cannot render {object_uid}: {exc}") from None
            return Response(body, media_type=media_type)
    raise Problem(406, f"contentType {content_type!r}: offered are application/dicom, {', '.join(_RENDERED)}")


def _dicom(services: Services, instance: StoredInstance, transfer_syntax: str | None) -> Response:
    if transfer_syntax is not None and not UID(transfer_syntax).is_valid:
        raise Problem(400, f"transferSyntax {transfer_syntax[:80]!r} is not a UID")  # PS3.18 9.4.2.4
    # Absent: explicit VR little endian (PS3.18 9.4.2.4), or the lossy form as stored (8.7.3.4).
    ts = transfer_syntax or ExplicitVRLittleEndian
    stored = instance.transfer_syntax_uid
    if ts == stored or (transfer_syntax is None and stored in LOSSY):
        return Response(b"".join(file_chunks(services, instance)), media_type="application/dicom")
    try:
        body = transcode_instance(local_file(services, instance), ts)
    except NotTranscodable as exc:
        raise Problem(406, f"cannot send {instance.sop_instance_uid} as {ts}: {exc}") from None
    return Response(body, media_type="application/dicom")
