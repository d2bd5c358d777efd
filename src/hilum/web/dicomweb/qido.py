"""QIDO-RS (PS3.18 10.6): search for studies, series and instances.

Query parameters become the same :class:`~hilum.domain.query.Query` a C-FIND
identifier does, translated to SQL by :mod:`hilum.index.search`. Attributes the
index has no column for are still searchable: they are matched against the
DICOM JSON model kept for every instance (of the first instance of the study
or series at those levels), after the indexed constraints narrowed the rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import APIRouter, Request, Response
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from sqlalchemy import Connection, func, select

from hilum.app import Services
from hilum.domain.attributes import BY_KEYWORD, Level
from hilum.domain.errors import InvalidQuery
from hilum.domain.query import Constraint, MatchKind, Query, matches, parse_constraint
from hilum.index.metadata import StoredModel, as_dict, models_by_pk
from hilum.index.models import instances_t, series_t
from hilum.index.search import Hit, search
from hilum.web.deps import dicomweb_base
from hilum.web.dicomweb.json import DICOM_JSON, element
from hilum.web.security import limit_to_caller

router = APIRouter()

# PS3.18 Table 10.6.3-3..5: attributes every result carries, per level.
DEFAULT_KEYS: dict[Level, list[str]] = {
    Level.STUDY: [
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "StudyDescription",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ],
    Level.SERIES: [
        "Modality",
        "SeriesDescription",
        "SeriesNumber",
        "SeriesInstanceUID",
        "NumberOfSeriesRelatedInstances",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "BodyPartExamined",
        "SeriesDate",
        "SeriesTime",
    ],
    Level.IMAGE: [
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceNumber",
        "Rows",
        "Columns",
        "BitsAllocated",
        "NumberOfFrames",
    ],
}
_CONTROL = {"limit", "offset", "fuzzymatching", "includefield", "orderby"}
# Numbers in the DICOM JSON model are JSON numbers (DS "5" is 5.0): match them by value.
_NUMERIC_VRS = frozenset({"DS", "FL", "FD", "IS", "SL", "SS", "UL", "US", "SV", "UV"})
_IGNORED = {"charset"}  # accepted, no effect: results are UTF-8 JSON


@dataclass(slots=True)
class QidoRequest:
    query: Query
    # Constraints on attributes without an index column: (tag, constraint).
    extra: list[tuple[int, Constraint]] = field(default_factory=list)
    include_all: bool = False
    include: list[int] = field(default_factory=list)


def _resolve(name: str, *, matching: bool = True) -> tuple[int, str, str]:
    """A QIDO attribute name (keyword or 8-hex tag) -> (tag, keyword, VR).

    Sequences can be returned (includefield) but not matched."""
    if "." in name:
        raise InvalidQuery(f"{name}: matching on sequence items is not supported")
    tag: int | None
    if len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name):
        tag = int(name, 16)
    else:
        tag = tag_for_keyword(name)
    if tag is None:
        raise InvalidQuery(f"unknown query parameter or attribute {name!r}")
    if (tag >> 16) % 2 == 1:
        raise InvalidQuery(f"{name}: private attributes are not searchable")
    keyword = keyword_for_tag(tag) or f"{tag:08X}"
    try:
        vr = str(dictionary_VR(tag)).split(" or ")[0]
    except KeyError:
        raise InvalidQuery(f"unknown attribute {name!r}") from None
    if vr == "SQ" and matching:
        raise InvalidQuery(f"{name}: sequence attributes are not matchable")
    return tag, keyword, vr


def _flag(value: str, name: str) -> bool:
    text = value.strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", ""):
        return False
    raise InvalidQuery(f"{name} must be true or false, not {value!r}")


def _int(value: str, name: str, low: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise InvalidQuery(f"{name} must be an integer, not {value!r}") from None
    if number < low:
        raise InvalidQuery(f"{name} must be at least {low}")
    return number


def parse_request(request: Request, level: Level, fixed: dict[str, str], services: Services) -> QidoRequest:
    http = services.settings.http
    query = limit_to_caller(request, Query(level=level, limit=http.qido_default_limit))
    result = QidoRequest(query=query)
    given: dict[str, tuple[int, str, list[str]]] = {}
    for name, value in request.query_params.multi_items():
        if name in _IGNORED:
            continue
        if name == "limit":
            query.limit = min(_int(value, "limit", 1), http.qido_max_limit)
        elif name == "offset":
            query.offset = _int(value, "offset", 0)
        elif name == "fuzzymatching":
            query.fuzzy_person_names = _flag(value, name)
        elif name == "includefield":
            for item in (v.strip() for v in value.split(",")):
                if item == "all":
                    result.include_all = True
                elif item:
                    result.include.append(_resolve(item, matching=False)[0])
        elif name == "orderby":
            raise InvalidQuery("orderby is not supported; results come in a stable order")
        else:
            tag, keyword, vr = _resolve(name)
            if keyword in given and vr != "UI":
                raise InvalidQuery(f"{keyword} is given more than once")
            given.setdefault(keyword, (tag, vr, []))[2].append(value)
    for keyword, (tag, vr, values) in given.items():
        # A UID attribute given several times is one list of UIDs (PS3.18 8.3.4.1).
        _add_constraint(result, tag, keyword, vr, "\\".join(values))
    for keyword, value in fixed.items():  # UIDs from the path
        if keyword in given:
            raise InvalidQuery(f"{keyword} is already given in the path")
        _add_constraint(result, tag_for_keyword(keyword) or 0, keyword, "UI", value)
    return result


def _add_constraint(result: QidoRequest, tag: int, keyword: str, vr: str, value: str) -> None:
    if vr == "UI":
        # PS3.18 8.3.4.1: uid-list-match is attribute=1#value, a comma-separated list
        # (the backslash of C-FIND identifiers is accepted as well).
        value = value.replace(",", "\\")
    attr = BY_KEYWORD.get(keyword)
    if attr is not None:
        result.query.constraints.append(parse_constraint(keyword, attr.vr, value))
        return
    constraint = parse_constraint(keyword, vr, value)
    if vr in _NUMERIC_VRS and constraint.kind in (MatchKind.SINGLE, MatchKind.LIST):
        try:
            constraint = replace(constraint, values=tuple(_number_text(v) for v in constraint.values))
        except ValueError:
            raise InvalidQuery(f"{keyword}: {value!r} is not a number") from None
    result.extra.append((tag, constraint))


def _number_text(value: Any) -> str:
    """One text per numeric value: "5", "5.0" and 5.0 are all "5"."""
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


def _representatives(conn: Connection, level: Level, pks: list[int]) -> dict[int, int]:
    """entity pk -> pk of its first instance (whose DICOM JSON stands for the entity)."""
    if not pks:
        return {}
    if level is Level.IMAGE:
        return {pk: pk for pk in pks}
    if level is Level.SERIES:
        stmt = (
            select(instances_t.c.series_pk, func.min(instances_t.c.id))
            .where(instances_t.c.series_pk.in_(pks))
            .group_by(instances_t.c.series_pk)
        )
    else:
        stmt = (
            select(series_t.c.study_pk, func.min(instances_t.c.id))
            .select_from(instances_t.join(series_t, instances_t.c.series_pk == series_t.c.id))
            .where(series_t.c.study_pk.in_(pks))
            .group_by(series_t.c.study_pk)
        )
    return {entity: first for entity, first in conn.execute(stmt)}


def _values_of(model: dict[str, Any], tag: int) -> list[str]:
    found = model.get(f"{tag:08X}")
    if not found:
        return []
    values = found.get("Value") or []
    numeric = found.get("vr") in _NUMERIC_VRS
    out = []
    for value in values:
        if isinstance(value, dict):
            out.append(value.get("Alphabetic", ""))
        elif numeric:
            try:
                out.append(_number_text(value))
            except ValueError:
                out.append(str(value))
        else:
            out.append(str(value))
    return out


def run_query(
    services: Services, request: QidoRequest
) -> tuple[list[tuple[Hit, dict[str, Any] | None]], bool]:
    """Hits of one page, each with its representative DICOM JSON when needed; and whether more exist."""
    query = request.query
    limit = query.limit or services.settings.http.qido_default_limit
    offset = query.offset
    needs_model = bool(request.extra or request.include or request.include_all)
    with services.engine.connect() as conn:
        if not request.extra:
            query.limit, query.offset = limit + 1, offset
            hits = list(search(conn, query))
            more = len(hits) > limit
            hits = hits[:limit]
            models = _models_for(services, conn, query.level, hits) if needs_model else {}
            return [(hit, models.get(hit.pk)) for hit in hits], more
        # Attributes without a column: filter in pages of indexed matches.
        query.limit, query.offset = None, 0
        page: list[tuple[Hit, dict[str, Any] | None]] = []
        skipped = 0
        batch: list[Hit] = []
        for hit in search(conn, query):
            batch.append(hit)
            if len(batch) < 200:
                continue
            done = _filter_batch(services, conn, request, batch, page, offset, limit, skipped)
            skipped = done[1]
            batch = []
            if done[0]:
                return page[:limit], True
        _, skipped = _filter_batch(services, conn, request, batch, page, offset, limit, skipped)
        return page[:limit], len(page) > limit


def _filter_batch(
    services: Services,
    conn: Connection,
    request: QidoRequest,
    batch: list[Hit],
    page: list[tuple[Hit, dict[str, Any] | None]],
    offset: int,
    limit: int,
    skipped: int,
) -> tuple[bool, int]:
    models = _models_for(services, conn, request.query.level, batch)
    for hit in batch:
        model = models.get(hit.pk) or {}
        if all(matches(c, _values_of(model, tag)) for tag, c in request.extra):
            if skipped < offset:
                skipped += 1
                continue
            page.append((hit, model))
            if len(page) > limit:
                return True, skipped
    return False, skipped


def _models_for(
    services: Services, conn: Connection, level: Level, hits: list[Hit]
) -> dict[int, dict[str, Any]]:
    first = _representatives(conn, level, [h.pk for h in hits])
    stored: dict[int, StoredModel] = models_by_pk(conn, first.values())
    out = {}
    for entity, instance_pk in first.items():
        model = stored.get(instance_pk)
        if model is not None:
            out[entity] = as_dict(services.engine, services.storage, model)
    return out


def _levels_for(level: Level) -> list[Level]:
    if level is Level.STUDY:
        return [Level.STUDY]
    if level is Level.SERIES:
        return [Level.STUDY, Level.SERIES]
    return [Level.STUDY, Level.SERIES, Level.IMAGE]


def result_json(hit: Hit, model: dict[str, Any] | None, request: QidoRequest, base: str) -> dict[str, Any]:
    level = request.query.level
    out: dict[str, Any] = {}
    keywords: list[str] = []
    for lvl in _levels_for(level):
        keywords += DEFAULT_KEYS[lvl]
    if request.include_all:
        keywords += [
            a.keyword
            for a in BY_KEYWORD.values()
            if a.level.depth <= level.depth and a.level is not Level.PATIENT
        ]
        keywords += [a.keyword for a in BY_KEYWORD.values() if a.level is Level.PATIENT]
    keywords += [c.keyword for c in request.query.constraints]
    for keyword in keywords:
        attr = BY_KEYWORD.get(keyword)
        if attr is None or attr.level.depth > level.depth or keyword not in hit.values:
            continue
        out[f"{attr.tag:08X}"] = element(attr.vr, hit.values[keyword])
    if model:
        if request.include_all and level is Level.IMAGE:
            for key, value in model.items():
                if "BulkDataURI" not in value and "InlineBinary" not in value:
                    out.setdefault(key, value)
        wanted = list(request.include) + [tag for tag, _ in request.extra]
        for tag in wanted:
            key = f"{tag:08X}"
            if key not in out and key in model and "BulkDataURI" not in model[key]:
                out[key] = model[key]
    for tag in request.include:  # asked for, but nothing stored: present and empty
        key = f"{tag:08X}"
        if key not in out:
            out[key] = {"vr": str(dictionary_VR(tag)).split(" or ")[0]} if _known(tag) else {"vr": "UN"}
    study = hit.values.get("StudyInstanceUID")
    url = f"{base}/studies/{study}"
    if level is not Level.STUDY:
        url += f"/series/{hit.values.get('SeriesInstanceUID')}"
    if level is Level.IMAGE:
        url += f"/instances/{hit.values.get('SOPInstanceUID')}"
    out["00080056"] = element("CS", "ONLINE")  # InstanceAvailability
    out["00081190"] = element("UR", url)  # RetrieveURL
    return dict(sorted(out.items()))


def _known(tag: int) -> bool:
    try:
        dictionary_VR(tag)
        return True
    except KeyError:
        return False


def _answer(request: Request, level: Level, fixed: dict[str, str]) -> Response:
    services: Services = request.app.state.services
    parsed = parse_request(request, level, fixed, services)
    results, more = run_query(services, parsed)
    base = dicomweb_base(request)
    body = json.dumps(
        [result_json(hit, model, parsed, base) for hit, model in results],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    headers = {}
    if more:
        # PS3.18 8.3.4.4: tell the client the answer was limited.
        headers["Warning"] = '299 hilum: "There are additional results that can be requested"'
    return Response(body, media_type=DICOM_JSON, headers=headers)


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "matching entities as DICOM JSON", "content": {DICOM_JSON: {}}},
    400: {"description": "bad query parameter"},
}


@router.get("/studies", summary="QIDO-RS: search for studies", responses=_RESPONSES)
def search_studies(request: Request) -> Response:
    return _answer(request, Level.STUDY, {})


@router.get("/series", summary="QIDO-RS: search for series", responses=_RESPONSES)
def search_all_series(request: Request) -> Response:
    return _answer(request, Level.SERIES, {})


@router.get("/studies/{study_uid}/series", summary="QIDO-RS: search a study's series", responses=_RESPONSES)
def search_study_series(request: Request, study_uid: str) -> Response:
    return _answer(request, Level.SERIES, {"StudyInstanceUID": study_uid})


@router.get("/instances", summary="QIDO-RS: search for instances", responses=_RESPONSES)
def search_all_instances(request: Request) -> Response:
    return _answer(request, Level.IMAGE, {})


@router.get(
    "/studies/{study_uid}/instances", summary="QIDO-RS: search a study's instances", responses=_RESPONSES
)
def search_study_instances(request: Request, study_uid: str) -> Response:
    return _answer(request, Level.IMAGE, {"StudyInstanceUID": study_uid})


@router.get(
    "/studies/{study_uid}/series/{series_uid}/instances",
    summary="QIDO-RS: search a series' instances",
    responses=_RESPONSES,
)
def search_series_instances(request: Request, study_uid: str, series_uid: str) -> Response:
    return _answer(request, Level.IMAGE, {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid})
