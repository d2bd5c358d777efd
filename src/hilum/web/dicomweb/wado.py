"""WADO-RS (PS3.18 10.4): instances, metadata, frames and bulk data.

Instances stream from storage as stored (``transfer-syntax=*``) or are
transcoded one at a time; metadata comes from the DICOM JSON kept in the index;
frames are read by offset from the stored file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRLittleEndian, MPEGTransferSyntaxes

from hilum.app import Services
from hilum.dicom.jsonmodel import with_base
from hilum.dicom.pixels import (
    DEFAULT_FRAME_SYNTAX,
    FRAME_MEDIA_TYPE,
    MEDIA_TYPE_ALIASES,
    NotTranscodable,
    PixelInfo,
    frame_in,
    pixel_info,
    transcode_instance,
)
from hilum.index.metadata import json_texts, models_of
from hilum.index.search import StoredInstance
from hilum.storage.base import ObjectNotFound, Source
from hilum.web.deps import dicomweb_base
from hilum.web.dicomweb.common import file_chunks, local_file, one_instance, stored_instances
from hilum.web.dicomweb.json import DICOM_JSON
from hilum.web.dicomweb.multipart import (
    MediaRange,
    Part,
    multipart_content_type,
    multipart_length,
    new_boundary,
    parse_accept,
    write_multipart,
)
from hilum.web.problems import Problem

LOG = logging.getLogger(__name__)
router = APIRouter()
_DICOM = "application/dicom"
_OCTETS = "application/octet-stream"
_MULTIPART = "multipart/related"
_RETRIEVE: dict[int | str, dict[str, Any]] = {
    200: {"description": 'multipart/related; type="application/dicom"', "content": {_MULTIPART: {}}},
    404: {"description": "unknown study, series or instance"},
    406: {"description": "the asked-for media type or transfer syntax cannot be produced"},
}


# -- instances ---------------------------------------------------------------------------
def _dicom_syntaxes(request: Request, single: bool) -> list[tuple[str, bool]]:
    """The acceptable (transfer syntax or "*", multipart?) choices from Accept, best first
    (PS3.18 8.7.3)."""
    choices: list[tuple[str, bool]] = []
    for media in parse_accept(request.headers.get("accept")):
        if media.type == _MULTIPART and (media.part_type in (None, _DICOM)):
            choices.append((media.transfer_syntax or ExplicitVRLittleEndian, True))
        elif media.type == _DICOM and single:
            choices.append((media.transfer_syntax or ExplicitVRLittleEndian, False))
        elif media.type in ("*/*", "multipart/*"):
            choices.append((ExplicitVRLittleEndian, True))
    if not choices:
        raise Problem(
            406,
            'instances are served as multipart/related; type="application/dicom"'
            + (" or application/dicom" if single else ""),
        )
    for ts, _ in choices:
        if ts != "*" and not UID(ts).is_valid:
            raise Problem(400, f"transfer-syntax {ts!r} is not a UID")
    return choices


def _instance_parts(
    services: Services, instances: list[StoredInstance], ts: str, first: bytes | None
) -> Iterator[Part]:
    for number, instance in enumerate(instances):
        if ts == "*" or ts == instance.transfer_syntax_uid:
            yield Part(
                f"{_DICOM}; transfer-syntax={instance.transfer_syntax_uid}", file_chunks(services, instance)
            )
            continue
        try:
            data = (
                first
                if number == 0 and first is not None
                else transcode_instance(local_file(services, instance), ts)
            )
            yield Part(f"{_DICOM}; transfer-syntax={ts}", [data])
        except NotTranscodable as exc:
            # The response has started: send this one as stored (its part says so).
            LOG.warning("instance %s sent as stored: %s", instance.sop_instance_uid, exc)
            yield Part(
                f"{_DICOM}; transfer-syntax={instance.transfer_syntax_uid}", file_chunks(services, instance)
            )


def _retrieve(request: Request, study: str, series: str | None, sop: str | None) -> Response:
    services: Services = request.app.state.services
    choices = _dicom_syntaxes(request, single=sop is not None)
    with services.engine.connect() as conn:
        instances = stored_instances(conn, study, series, sop)
    head = instances[0]
    # Answer 500 (missing file; encrypted at rest: wrong key, damaged header), not a response cut short.
    try:
        services.storage.open(head.storage_key).close()
    except ObjectNotFound:
        raise Problem(500, f"the stored file of instance {head.sop_instance_uid} is missing") from None
    # The best acceptable choice the first instance can be sent in; the others follow it.
    # Decided before the response starts, so that nothing acceptable is a 406.
    reasons: list[str] = []
    first: bytes | None = None
    for choice in choices:
        ts = choice[0]
        if ts == "*" or ts == head.transfer_syntax_uid:
            break
        try:
            first = transcode_instance(local_file(services, head), ts)
            break
        except NotTranscodable as exc:
            reasons.append(f"cannot send {head.sop_instance_uid} as {UID(ts).name or ts}: {exc}")
    else:
        raise Problem(406, "; ".join(reasons))
    ts, multipart = choice
    if not multipart:
        body = first if first is not None else b"".join(file_chunks(services, head))
        return Response(
            body, media_type=f"{_DICOM}; transfer-syntax={ts if first else head.transfer_syntax_uid}"
        )
    boundary = new_boundary()
    parts = _instance_parts(services, instances, ts, first)
    headers = {}
    if all(ts in ("*", i.transfer_syntax_uid) for i in instances):
        # All sent as stored: the length is known, so no chunked encoding (cheaper for clients).
        sizes = [(f"{_DICOM}; transfer-syntax={i.transfer_syntax_uid}", i.size_bytes) for i in instances]
        headers["Content-Length"] = str(multipart_length(boundary, sizes))
    return StreamingResponse(
        write_multipart(parts, boundary),
        media_type=multipart_content_type(_DICOM, boundary, None if ts == "*" else ts),
        headers=headers,
    )


@router.get("/studies/{study_uid}", summary="WADO-RS: retrieve a study", responses=_RETRIEVE)
def retrieve_study(request: Request, study_uid: str) -> Response:
    return _retrieve(request, study_uid, None, None)


@router.get(
    "/studies/{study_uid}/series/{series_uid}", summary="WADO-RS: retrieve a series", responses=_RETRIEVE
)
def retrieve_series(request: Request, study_uid: str, series_uid: str) -> Response:
    return _retrieve(request, study_uid, series_uid, None)


@router.get(
    "/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}",
    summary="WADO-RS: retrieve an instance",
    responses=_RETRIEVE,
)
def retrieve_instance(request: Request, study_uid: str, series_uid: str, sop_uid: str) -> Response:
    return _retrieve(request, study_uid, series_uid, sop_uid)


# -- metadata ----------------------------------------------------------------------------
def _metadata(request: Request, study: str, series: str | None, sop: str | None) -> Response:
    services: Services = request.app.state.services
    for media in parse_accept(request.headers.get("accept")):
        if media.matches(DICOM_JSON) or media.type in ("application/json", "application/*"):
            break
    else:
        raise Problem(406, "metadata is served as application/dicom+json")
    with services.engine.connect() as conn:
        models = models_of(conn, study, series, sop)
    base = dicomweb_base(request)

    def body() -> Iterator[bytes]:
        # Few, large chunks: each chunk of a streamed answer costs a thread hop.
        pending: list[bytes] = [b"["]
        size = 0
        for number, text in enumerate(json_texts(services.engine, services.storage, models)):
            if number:
                pending.append(b",")
            pending.append(with_base(text, base))
            size += len(text)
            if size >= 1 << 20:
                yield b"".join(pending)
                pending, size = [], 0
        pending.append(b"]")
        yield b"".join(pending)

    if len(models) <= 256:  # small answers in one piece (with a Content-Length)
        return Response(b"".join(body()), media_type=DICOM_JSON)
    return StreamingResponse(body(), media_type=DICOM_JSON)


_METADATA: dict[int | str, dict[str, Any]] = {
    200: {"description": "DICOM JSON array", "content": {DICOM_JSON: {}}},
    404: {"description": "unknown"},
}


@router.get("/studies/{study_uid}/metadata", summary="WADO-RS: study metadata", responses=_METADATA)
def study_metadata(request: Request, study_uid: str) -> Response:
    return _metadata(request, study_uid, None, None)


@router.get(
    "/studies/{study_uid}/series/{series_uid}/metadata",
    summary="WADO-RS: series metadata",
    responses=_METADATA,
)
def series_metadata(request: Request, study_uid: str, series_uid: str) -> Response:
    return _metadata(request, study_uid, series_uid, None)


@router.get(
    "/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/metadata",
    summary="WADO-RS: instance metadata",
    responses=_METADATA,
)
def instance_metadata(request: Request, study_uid: str, series_uid: str, sop_uid: str) -> Response:
    return _metadata(request, study_uid, series_uid, sop_uid)


# -- frames ------------------------------------------------------------------------------
def parse_frame_list(text: str, frames: int) -> list[int]:
    numbers = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) < 1:
            raise Problem(400, f"frame list {text!r}: frame numbers are integers from 1")
        if int(item) > frames:
            raise Problem(404, f"frame {item} does not exist: the instance has {frames} frame(s)")
        numbers.append(int(item))
    return numbers


def _frame_choices(accept: list[MediaRange], info: PixelInfo) -> list[tuple[str, str, bool]]:
    """The acceptable (transfer syntax to produce, part media type, multipart?) for frames,
    best first (PS3.18 8.7.3.3.2)."""
    choices = []
    for media in accept:
        multipart = media.type in (_MULTIPART, "*/*")
        kind = (media.part_type or _OCTETS) if media.type == _MULTIPART else media.type
        kind = MEDIA_TYPE_ALIASES.get(kind, kind)
        if kind in ("*/*", "*"):
            kind = _OCTETS
        requested = media.transfer_syntax
        if kind == _OCTETS:
            ts = requested or ExplicitVRLittleEndian
        elif kind == "image/*":
            ts = requested or "*"
        elif kind in DEFAULT_FRAME_SYNTAX:
            ts = requested or DEFAULT_FRAME_SYNTAX[kind]
            if ts == "*" and FRAME_MEDIA_TYPE.get(info.transfer_syntax) != kind:
                ts = DEFAULT_FRAME_SYNTAX[kind]
        else:
            continue
        if ts == "*":  # as stored; native frames always go out as little endian octets
            ts = info.transfer_syntax if info.encapsulated else ExplicitVRLittleEndian
        choices.append((ts, FRAME_MEDIA_TYPE.get(ts, _OCTETS), multipart))
    if not choices:
        raise Problem(
            406,
            "frames are served as multipart/related with application/octet-stream, "
            "image/jpeg, image/jls, image/jp2, image/jphc or image/dicom-rle parts",
        )
    return choices


def _first_frame(
    request: Request, path: Source, info: PixelInfo, index: int
) -> tuple[bytes, str, str, bool]:
    """Frame ``index`` in the best acceptable encoding it can be produced in, with that
    (transfer syntax, media type, multipart?); 406 when none can."""
    reasons = []
    for ts, media, multipart in _frame_choices(parse_accept(request.headers.get("accept")), info):
        try:
            return frame_in(path, info, index, ts), ts, media, multipart
        except NotTranscodable as exc:
            reasons.append(str(exc))
    raise Problem(406, "; ".join(reasons))


@router.get(
    "/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/frames/{frame_list}",
    summary="WADO-RS: frames of an instance",
    responses={200: {"content": {_MULTIPART: {}}, "description": "frames"}, 406: {"description": "-"}},
)
def retrieve_frames(
    request: Request, study_uid: str, series_uid: str, sop_uid: str, frame_list: str
) -> Response:
    services: Services = request.app.state.services
    instance = one_instance(services, study_uid, series_uid, sop_uid)
    path = local_file(services, instance)
    try:
        info = pixel_info(path)
    except NotTranscodable as exc:
        raise Problem(404, f"instance {sop_uid} has no frames: {exc}") from None
    numbers = parse_frame_list(frame_list, info.frames)
    if info.transfer_syntax in MPEGTransferSyntaxes:
        # A video's frames cannot be cut out of its stream: any of them is the whole
        # stream, as stored (PS3.18 8.7.3.3.2), or 406.
        return _video_stream(request, services, instance, path, info)
    first, ts, media, multipart = _first_frame(request, path, info, numbers[0] - 1)
    part_type = f"{media}; transfer-syntax={ts}"
    if not multipart:
        if len(numbers) > 1:
            raise Problem(406, "several frames need a multipart/related response")
        return Response(first, media_type=part_type)

    def parts() -> Iterator[Part]:
        yield Part(part_type, [first])
        for number in numbers[1:]:
            yield Part(part_type, [frame_in(path, info, number - 1, ts)])

    boundary = new_boundary()
    return StreamingResponse(
        write_multipart(parts(), boundary), media_type=multipart_content_type(media, boundary)
    )


# -- bulk data ---------------------------------------------------------------------------
@router.get(
    "/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/bulkdata/{tag}",
    summary="WADO-RS: a bulk data value (as referenced by BulkDataURI in metadata)",
)
def retrieve_bulkdata(request: Request, study_uid: str, series_uid: str, sop_uid: str, tag: str) -> Response:
    services: Services = request.app.state.services
    if len(tag) != 8 or any(c not in "0123456789abcdefABCDEF" for c in tag):
        raise Problem(400, f"bulk data tag {tag[:20]!r} is not 8 hex digits")
    instance = one_instance(services, study_uid, series_uid, sop_uid)
    path = local_file(services, instance)
    number = int(tag, 16)
    if number == 0x7FE00010:
        info = pixel_info(path)
        if info.transfer_syntax in MPEGTransferSyntaxes:
            return _video_stream(request, services, instance, path, info)
        if info.encapsulated:
            # One part per frame, in the media type asked for: uncompressed octets unless
            # the stored (or another) encoding is asked for (PS3.18 8.7.3.3).
            first, ts, media, _ = _first_frame(request, path, info, 0)
            part_type = f"{media}; transfer-syntax={ts}"

            def frame_parts() -> Iterator[Part]:
                yield Part(part_type, [first])
                for index in range(1, info.frames):
                    yield Part(part_type, [frame_in(path, info, index, ts)])

            boundary = new_boundary()
            return StreamingResponse(
                write_multipart(frame_parts(), boundary), media_type=multipart_content_type(media, boundary)
            )
    with path.open("rb") as handle:
        ds = dcmread(handle, defer_size=256)
    raw: Any = ds._dict.get(BaseTag(number))
    if raw is None:
        raise Problem(404, f"instance {sop_uid} has no attribute ({tag[:4]},{tag[4:]})")
    if isinstance(raw, RawDataElement) and raw.value is None and raw.value_tell is not None:
        start, length = raw.value_tell, raw.length
        body: Any = services.storage.open_range(instance.storage_key, start, length)
    else:
        value = raw.value if isinstance(raw, RawDataElement) else ds[BaseTag(number)].value
        body = [value if isinstance(value, bytes) else str(value).encode()]
    for accepted in parse_accept(request.headers.get("accept")):
        if accepted.type == _OCTETS:
            return StreamingResponse(iter(body), media_type=_OCTETS)
        if accepted.type in (_MULTIPART, "*/*"):
            break
    boundary = new_boundary()
    return StreamingResponse(
        write_multipart([Part(_OCTETS, body)], boundary), media_type=multipart_content_type(_OCTETS, boundary)
    )


# Video transfer syntaxes (MPEG-2, MPEG-4 AVC/H.264, HEVC/H.265, and their fragmentable
# variants, UID + ".1"): the media type of the stream (PS3.18 8.7.3.3.2).
_MPEG2 = ("1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101")
_VIDEO_MEDIA_TYPE: dict[str, str] = {
    str(ts): "video/mpeg" if ts.removesuffix(".1") in _MPEG2 else "video/mp4" for ts in MPEGTransferSyntaxes
}


def _video_stream(
    request: Request, services: Services, instance: StoredInstance, path: Source, info: PixelInfo
) -> Response:
    """The Pixel Data of a video object: one stream (all its fragments, in order), not
    frames, in one part (PS3.5 8.2.5-8.2.11, PS3.18 8.7.3.3). It cannot be decoded here:
    only the stored transfer syntax ("*" or its UID) is acceptable."""
    ts = info.transfer_syntax
    media = _VIDEO_MEDIA_TYPE[ts]
    for accepted in parse_accept(request.headers.get("accept")):
        multipart = accepted.type in (_MULTIPART, "*/*")
        kind = (accepted.part_type or _OCTETS) if accepted.type == _MULTIPART else accepted.type
        requested = accepted.transfer_syntax
        if kind in ("*/*", "*", "video/*", media) and requested in (None, "*", ts):
            break
        if kind == _OCTETS and requested in ("*", ts):
            break
    else:
        raise Problem(
            406, f"the Pixel Data is a {UID(ts).name} video stream: ask for {media} or transfer-syntax=*"
        )
    with path.open("rb") as handle:
        spans = _fragment_spans(handle, info.offset)
    key = instance.storage_key
    body = (chunk for start, length in spans for chunk in services.storage.open_range(key, start, length))
    part_type = f"{media}; transfer-syntax={ts}"
    if not multipart:
        return StreamingResponse(body, media_type=part_type)
    boundary = new_boundary()
    return StreamingResponse(
        write_multipart([Part(part_type, body)], boundary), media_type=multipart_content_type(media, boundary)
    )


def _fragment_spans(handle: Any, offset: int) -> list[tuple[int, int]]:
    """(file offset, length) of each fragment of encapsulated Pixel Data whose value starts
    at ``offset`` (the Basic Offset Table item), read from the item headers only."""
    spans: list[tuple[int, int]] = []
    handle.seek(offset)
    position, first = offset, True
    while True:
        header = handle.read(8)
        if len(header) < 8:
            raise Problem(500, "the stored encapsulated Pixel Data is truncated")
        group, element = int.from_bytes(header[0:2], "little"), int.from_bytes(header[2:4], "little")
        length = int.from_bytes(header[4:8], "little")
        if (group, element) == (0xFFFE, 0xE0DD):
            return spans
        if (group, element) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF:
            raise Problem(500, f"unexpected item ({group:04X},{element:04X}) in the stored Pixel Data")
        if not first and length:
            spans.append((position + 8, length))
        first = False
        position += 8 + length
        handle.seek(position)
