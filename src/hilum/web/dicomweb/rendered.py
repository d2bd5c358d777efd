"""WADO-RS rendered and thumbnail resources (PS3.18 10.4.1.1.3, 10.4.1.1.4)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response

from hilum.app import Services
from hilum.dicom.pixels import NotTranscodable
from hilum.dicom.render import Viewport, parse_viewport, parse_window, render
from hilum.index.search import StoredInstance
from hilum.web.dicomweb.common import local_file, one_instance, stored_instances
from hilum.web.dicomweb.multipart import parse_accept
from hilum.web.problems import Problem

router = APIRouter()
RENDERED_TYPES = ("image/jpeg", "image/png", "image/gif")
_IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the rendered image", "content": {t: {} for t in RENDERED_TYPES}},
    400: {"description": "bad window, viewport or quality"},
    404: {"description": "unknown instance or frame"},
    406: {"description": "not renderable, or an unsupported media type"},
}
THUMBNAIL = Viewport(128, 128)


def choose_media_type(request: Request, accept_param: str | None) -> str:
    """From the ``accept`` query parameter (PS3.18 8.3.3.1) or the Accept header; JPEG by default."""
    header = accept_param if accept_param else request.headers.get("accept")
    for media in parse_accept(header):
        if media.type in ("*/*", "image/*"):
            return "image/jpeg"
        if media.type in RENDERED_TYPES:
            return media.type
    raise Problem(406, f"rendered images are served as {', '.join(RENDERED_TYPES)}")


def _render(
    request: Request,
    services: Services,
    instance: StoredInstance,
    frame: int,
    *,
    window: str | None,
    viewport: str | None,
    quality: int | None,
    accept: str | None,
    default_viewport: Viewport | None = None,
) -> Response:
    media_type = choose_media_type(request, accept)
    try:
        parsed_window = parse_window(window) if window else None
        parsed_viewport = parse_viewport(viewport) if viewport else default_viewport
    except ValueError as exc:
        raise Problem(400, str(exc)) from None
    if quality is not None and not 1 <= quality <= 100:
        raise Problem(400, "quality must be 1..100")
    path = local_file(services, instance)
    try:
        body = render(
            path,
            frame - 1,
            media_type=media_type,
            window=parsed_window,
            viewport=parsed_viewport,
            quality=quality or 90,
        )
    except IndexError:
        raise Problem(404, f"frame {frame} does not exist in instance {instance.sop_instance_uid}") from None
    except NotTranscodable as exc:
        raise Problem(406, f"instance {instance.sop_instance_uid} cannot be rendered: {exc}") from None
    except (ValueError, RuntimeError) as exc:  # a codec that cannot decode this data
        raise Problem(406, f"instance {instance.sop_instance_uid} cannot be decoded: {exc}") from None
    return Response(body, media_type=media_type)


_INSTANCE = "/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"


@router.get(f"{_INSTANCE}/rendered", summary="WADO-RS: an instance rendered", responses=_IMAGE_RESPONSES)
def instance_rendered(
    request: Request,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    window: str | None = Query(None, description="center,width[,function]"),
    viewport: str | None = Query(None, description="vw,vh[,sx,sy,sw,sh]"),
    quality: int | None = Query(None, description="1..100 (JPEG)"),
    accept: str | None = Query(None, description="media type, instead of the Accept header"),
) -> Response:
    services: Services = request.app.state.services
    instance = one_instance(services, study_uid, series_uid, sop_uid)
    return _render(
        request, services, instance, 1, window=window, viewport=viewport, quality=quality, accept=accept
    )


@router.get(
    f"{_INSTANCE}/frames/{{frame}}/rendered", summary="WADO-RS: a frame rendered", responses=_IMAGE_RESPONSES
)
def frame_rendered(
    request: Request,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    frame: str,
    window: str | None = Query(None, description="center,width[,function]"),
    viewport: str | None = Query(None, description="vw,vh[,sx,sy,sw,sh]"),
    quality: int | None = Query(None, description="1..100 (JPEG)"),
    accept: str | None = Query(None, description="media type, instead of the Accept header"),
) -> Response:
    if not frame.isdigit() or int(frame) < 1:
        raise Problem(400, f"frame number {frame[:20]!r} must be an integer from 1")
    services: Services = request.app.state.services
    instance = one_instance(services, study_uid, series_uid, sop_uid)
    return _render(
        request,
        services,
        instance,
        int(frame),
        window=window,
        viewport=viewport,
        quality=quality,
        accept=accept,
    )


def _middle_image(services: Services, study_uid: str, series_uid: str | None) -> StoredInstance:
    """The instance that stands for a series (its middle one) or a study (of its first series)."""
    with services.engine.connect() as conn:
        instances = stored_instances(conn, study_uid, series_uid)
    first_series = instances[0].series_instance_uid
    in_series = [i for i in instances if i.series_instance_uid == first_series]
    return in_series[len(in_series) // 2]


def _thumbnail(
    request: Request, instance: StoredInstance, viewport: str | None, accept: str | None
) -> Response:
    services: Services = request.app.state.services
    return _render(
        request, services, instance, 1, window=None, viewport=viewport, quality=80, accept=accept,
        default_viewport=THUMBNAIL,
    )


_VIEWPORT = Query(None, description="vw,vh (default 128,128)")


@router.get(f"{_INSTANCE}/thumbnail", summary="WADO-RS: instance thumbnail", responses=_IMAGE_RESPONSES)
def instance_thumbnail(
    request: Request, study_uid: str, series_uid: str, sop_uid: str,
    viewport: str | None = _VIEWPORT, accept: str | None = Query(None),
) -> Response:
    instance = one_instance(request.app.state.services, study_uid, series_uid, sop_uid)
    return _thumbnail(request, instance, viewport, accept)


@router.get(
    "/studies/{study_uid}/series/{series_uid}/thumbnail",
    summary="WADO-RS: series thumbnail (its middle instance)",
    responses=_IMAGE_RESPONSES,
)
def series_thumbnail(
    request: Request, study_uid: str, series_uid: str,
    viewport: str | None = _VIEWPORT, accept: str | None = Query(None),
) -> Response:
    instance = _middle_image(request.app.state.services, study_uid, series_uid)
    return _thumbnail(request, instance, viewport, accept)


@router.get(
    "/studies/{study_uid}/thumbnail",
    summary="WADO-RS: study thumbnail (middle instance of its first series)",
    responses=_IMAGE_RESPONSES,
)
def study_thumbnail(
    request: Request, study_uid: str, viewport: str | None = _VIEWPORT, accept: str | None = Query(None)
) -> Response:
    instance = _middle_image(request.app.state.services, study_uid, None)
    return _thumbnail(request, instance, viewport, accept)
