"""Patients, studies, series and instances: paged lists, details, deletion, zip download.

Lists take the same matching as C-FIND and QIDO-RS: every query parameter that
is not a paging or sorting parameter is an indexed attribute keyword whose
value becomes a :class:`~hilum.domain.query.Constraint` (``PatientName=DOE*``,
``StudyDate=20240101-20241231``, ``ModalitiesInStudy=CT``), and the rows come
from :func:`hilum.index.search.build_select`, only re-ordered and paged here.

Fields named like DICOM keywords (``PatientName``) are the indexed attributes;
snake_case fields (``pk``, ``created_at``) are Hilum's own bookkeeping.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, create_model
from pydicom.datadict import dictionary_description
from sqlalchemy import ColumnElement, Connection, Engine, func, select

from hilum.app import Services
from hilum.domain.attributes import ATTRIBUTES, BY_KEYWORD, INTEGER_VRS, Level
from hilum.domain.errors import InvalidQuery, NotFound
from hilum.domain.query import Constraint, MatchKind, constraint_for
from hilum.domain.query import Query as MatchQuery
from hilum.export.archive import stream_archive
from hilum.index import deletion
from hilum.index.reading import changed_after_read, parse_statuses, status_condition, status_rank
from hilum.index.search import TABLE, build_select, matching_instances
from hilum.web.deps import EngineDep, ServicesDep, checked_uid
from hilum.web.problems import Problem
from hilum.web.security import limit_to_caller

router = APIRouter()

P, S, SE, I = (TABLE[level] for level in (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE))  # noqa: E741
MAX_LIMIT = 1000
_MAX_OFFSET = 10**12
_PK = re.compile(r"[0-9]{1,18}")
# Stored backslash-joined, answered as JSON lists.
LIST_VALUED = frozenset({"ModalitiesInStudy", "SOPClassesInStudy", "ImageType", "OtherPatientNames"})
_PATIENT_MAIN = ["PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex"]


def _own(level: Level) -> list[str]:
    return [a.keyword for a in ATTRIBUTES if a.level is level]


# The DICOM attributes each level answers with.
KEYWORDS: dict[Level, list[str]] = {
    Level.PATIENT: _own(Level.PATIENT),
    Level.STUDY: [*_PATIENT_MAIN, *_own(Level.STUDY)],
    Level.SERIES: ["StudyInstanceUID", *_own(Level.SERIES)],
    Level.IMAGE: ["StudyInstanceUID", "SeriesInstanceUID", *_own(Level.IMAGE)],
}
# Bookkeeping columns each level answers with: field name -> column.
EXTRA: dict[Level, dict[str, Any]] = {
    Level.PATIENT: {"created_at": P.c.created_at, "updated_at": P.c.updated_at},
    Level.STUDY: {
        "patient_pk": S.c.patient_pk,
        "size_bytes": S.c.size_bytes,
        "created_at": S.c.created_at,
        "updated_at": S.c.updated_at,
        "reading_status": S.c.reading_status,
        "reading_user": S.c.reading_user,
        "reading_changed_at": S.c.reading_changed_at,
        "changed_after_read": changed_after_read,
    },
    Level.SERIES: {"created_at": SE.c.created_at, "updated_at": SE.c.updated_at},
    Level.IMAGE: {
        "TransferSyntaxUID": I.c.transfer_syntax_uid,
        "size_bytes": I.c.size_bytes,
        "sha256": I.c.sha256,
        "source": I.c.source,
        "received_at": I.c.received_at,
    },
}
# Sort keys (``sort=-StudyDate,PatientName``): name -> columns.
SORT_KEYS: dict[Level, dict[str, list[Any]]] = {
    Level.PATIENT: {
        "PatientName": [P.c.patient_name_key],
        "PatientID": [P.c.patient_id],
        "PatientBirthDate": [P.c.patient_birth_date],
        "created_at": [P.c.created_at],
        "updated_at": [P.c.updated_at],
    },
    Level.STUDY: {
        "StudyDate": [S.c.study_date, S.c.study_time],
        "PatientName": [P.c.patient_name_key],
        "PatientID": [P.c.patient_id],
        "AccessionNumber": [S.c.accession_number],
        "created_at": [S.c.created_at],
        "updated_at": [S.c.updated_at],
        "reading_status": [status_rank],  # workflow order: unread, in_progress, read
        "reading_changed_at": [S.c.reading_changed_at],
    },
    Level.SERIES: {
        "SeriesNumber": [SE.c.series_number],
        "SeriesDate": [SE.c.series_date, SE.c.series_time],
        "Modality": [SE.c.modality],
        "created_at": [SE.c.created_at],
        "updated_at": [SE.c.updated_at],
    },
    Level.IMAGE: {
        "InstanceNumber": [I.c.instance_number],
        "received_at": [I.c.received_at],
    },
}
_EXTRA_TYPES: dict[str, tuple[Any, str]] = {
    "patient_pk": (int, "the patient's pk (GET /patients/{pk})"),
    "size_bytes": (int, "stored bytes"),
    "created_at": (datetime, "when its first instance was received"),
    "updated_at": (datetime, "when it last changed"),
    "TransferSyntaxUID": (str, "(0002,0010) Transfer Syntax UID of the stored file"),
    "sha256": (str, "SHA-256 of the data set as stored"),
    "source": (str, 'where it came from: "dimse:<AE>@<host>", "stow", "import", ...'),
    "received_at": (datetime, "when it was stored"),
    "reading_status": (str, "unread, in_progress (being read) or read (PUT /studies/{uid}/reading)"),
    "reading_user": (str | None, "who is reading it (in_progress) or read it (read)"),
    "reading_changed_at": (datetime | None, "when its reading status last changed"),
    "changed_after_read": (bool, "read, but instances were stored or deleted after it was marked read"),
}


def _model(name: str, level: Level, **more: Any) -> type[BaseModel]:
    fields: dict[str, Any] = {"pk": (int, Field(description="Hilum's key of this resource"))}
    for keyword in KEYWORDS[level]:
        attr = BY_KEYWORD[keyword]
        text = f"({attr.tag >> 16:04X},{attr.tag & 0xFFFF:04X}) {dictionary_description(attr.tag)}"
        if keyword in LIST_VALUED:
            fields[keyword] = (list[str], Field(default_factory=list, description=text))
        else:
            kind: Any = int | None if attr.vr in INTEGER_VRS else str | None
            fields[keyword] = (kind, Field(default=None, description=text))
    for field_name in EXTRA[level]:
        kind, text = _EXTRA_TYPES[field_name]
        fields[field_name] = (kind, Field(description=text))
    fields.update(more)
    model: type[BaseModel] = create_model(name, **fields)
    return model


PatientOut = _model("Patient", Level.PATIENT)
StudyOut = _model("Study", Level.STUDY)
SeriesOut = _model("Series", Level.SERIES)
InstanceOut = _model("Instance", Level.IMAGE)
OUT = {Level.PATIENT: PatientOut, Level.STUDY: StudyOut, Level.SERIES: SeriesOut, Level.IMAGE: InstanceOut}
PatientDetail = _model("PatientDetail", Level.PATIENT, studies=(list[StudyOut], ...))  # type: ignore[valid-type]
StudyDetail = _model("StudyDetail", Level.STUDY, series=(list[SeriesOut], ...))  # type: ignore[valid-type]
SeriesDetail = _model("SeriesDetail", Level.SERIES, instances=(list[InstanceOut], ...))  # type: ignore[valid-type]


def _page_model(name: str, item: type[BaseModel]) -> type[BaseModel]:
    model: type[BaseModel] = create_model(
        name,
        items=(list[item], ...),  # type: ignore[valid-type]
        total=(int, Field(description="how many match, over all pages")),
        limit=(int, ...),
        offset=(int, ...),
        has_more=(bool, Field(description="offset + len(items) < total")),
    )
    return model


class DeletionReport(BaseModel):
    level: Literal["PATIENT", "STUDY", "SERIES", "IMAGE"]
    instances: int = Field(description="instances deleted")
    series: int = Field(description="series deleted (those left empty)")
    studies: int = Field(description="studies deleted (those left empty)")
    patients: int = Field(description="patients deleted (those left empty)")
    files_removed: int
    files_left: list[str] = Field(description="storage keys whose file could not be removed (logged)")


# -- query parameters -> the one query model ---------------------------------------------------

_RESERVED = {"limit", "offset", "sort", "reading_status"}
_FILTER_HELP = (
    "Any other parameter is an indexed attribute keyword at this level or above, matched as in "
    "C-FIND / QIDO-RS (PS3.4 C.2.2.2): single value, * and ? wildcards, backslash-separated "
    "lists, date/time ranges (StudyDate=20240101-20241231). Person names ignore case."
)
Limit = Query(100, ge=1, le=MAX_LIMIT, description="page size")
Offset = Query(0, ge=0, le=_MAX_OFFSET, description="rows to skip")


def _constraints(request: Request, level: Level) -> list[Constraint]:
    found: list[Constraint] = []
    seen: set[str] = set()
    for keyword, value in request.query_params.multi_items():
        if keyword in _RESERVED:
            continue
        attr = BY_KEYWORD.get(keyword)
        if attr is None or attr.level.depth > level.depth or (attr.computed and attr.level is not level):
            raise Problem(400, f"{keyword} is not a filter of {level.value.lower()} lists")
        if keyword in seen:
            raise Problem(400, f"{keyword} is given twice (a list is written A\\B)")
        if "\x00" in value:
            raise Problem(400, f"{keyword}: invalid character")
        seen.add(keyword)
        constraint = constraint_for(keyword, value)
        if attr.vr in INTEGER_VRS and any(abs(int(v)) >= 2**31 for v in constraint.values):
            raise InvalidQuery(f"{keyword}: {value!r} is out of range")
        found.append(constraint)
    return found


def _reading_filter(request: Request, level: Level) -> ColumnElement[bool] | None:
    """``reading_status=unread,in_progress`` (study lists): the condition, or None."""
    values = request.query_params.getlist("reading_status")
    if not values:
        return None
    if level is not Level.STUDY:
        raise Problem(400, f"reading_status is not a filter of {level.value.lower()} lists")
    if len(values) > 1:
        raise Problem(400, "reading_status is given twice (a list is written unread,in_progress)")
    if "\x00" in values[0]:
        raise Problem(400, "reading_status: invalid character")
    condition: ColumnElement[bool] | None = status_condition(parse_statuses(values[0]))
    return condition


def _ordering(level: Level, sort: str | None) -> list[Any]:
    order: list[Any] = []
    for part in (sort or "").split(","):
        name = part.strip()
        if not name:
            continue
        descending = name.startswith("-")
        columns = SORT_KEYS[level].get(name.lstrip("-+"))
        if columns is None:
            keys = ", ".join(SORT_KEYS[level])
            raise Problem(400, f"cannot sort {level.value.lower()} lists by {name!r} (use {keys})")
        order.extend((c.desc() if descending else c.asc()).nulls_last() for c in columns)
    return order


def _sort_help(level: Level) -> str:
    return (
        "comma-separated sort keys, '-' for descending: " + ", ".join(SORT_KEYS[level])
        + ". Default and tie-breaker: pk (the order resources were first stored)"
    )


def _uid(value: str) -> str:
    return checked_uid(value)


def _fetch(
    conn: Connection,
    level: Level,
    constraints: list[Constraint],
    *,
    where: ColumnElement[bool] | None = None,
    sort: str | None = None,
    limit: int | None = None,
    offset: int = 0,
    caller: Request | None = None,
) -> tuple[list[dict[str, Any]], int | None]:
    """Matching rows of ``level`` as answer dicts, and the total when paged.

    ``caller``: the request whose caller's study access limits the rows (lists); the
    routes naming one resource were checked by the guard (web.security)."""
    query = MatchQuery(level=level, constraints=constraints)
    matched = build_select(limit_to_caller(caller, query) if caller is not None else query)
    if where is not None:
        matched = matched.where(where)
    total = None
    if limit is not None:
        total = conn.execute(select(func.count()).select_from(matched.order_by(None).subquery())).scalar_one()
    stmt = matched.add_columns(*(c.label(f"_{name}") for name, c in EXTRA[level].items()))
    stmt = stmt.order_by(None).order_by(*_ordering(level, sort), TABLE[level].c.id)
    if limit is not None:
        stmt = stmt.limit(limit).offset(offset)
    return [_answer(level, row) for row in conn.execute(stmt).mappings()], total


def _answer(level: Level, row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"pk": row["_pk"]}
    for keyword in KEYWORDS[level]:
        value = row[keyword]
        out[keyword] = [v for v in (value or "").split("\\") if v] if keyword in LIST_VALUED else value
    for name in EXTRA[level]:
        value = row[f"_{name}"]
        if isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)  # SQLite keeps UTC without a zone
        out[name] = value
    return out


def _page(
    engine: Engine, request: Request, level: Level, sort: str | None, limit: int, offset: int
) -> dict[str, Any]:
    constraints = _constraints(request, level)
    where = _reading_filter(request, level)
    with engine.connect() as conn:
        items, total = _fetch(
            conn, level, constraints, where=where, sort=sort, limit=limit, offset=offset, caller=request,
        )
    assert total is not None
    return {
        "items": items,
        "total": total,
        "limit": limit,
        "offset": offset,
        "has_more": offset + len(items) < total,
    }


def _one(conn: Connection, level: Level, keyword: str, uid: str) -> dict[str, Any]:
    rows, _ = _fetch(conn, level, _by_uid(keyword, _uid(uid)))
    if not rows:
        raise NotFound(f"no {level.value.lower()} {uid}")
    return rows[0]


def _by_uid(keyword: str, uid: str) -> list[Constraint]:
    return [Constraint(keyword, "UI", MatchKind.SINGLE, values=(uid,))]


# -- lists -----------------------------------------------------------------------------------

@router.get("/patients", response_model=_page_model("PatientPage", PatientOut), description=_FILTER_HELP)
def list_patients(
    request: Request, engine: EngineDep, limit: int = Limit, offset: int = Offset,
    sort: str | None = Query(None, description=_sort_help(Level.PATIENT)),
) -> dict[str, Any]:
    """Patients, paged."""
    return _page(engine, request, Level.PATIENT, sort, limit, offset)


@router.get("/studies", response_model=_page_model("StudyPage", StudyOut), description=_FILTER_HELP)
def list_studies(
    request: Request, engine: EngineDep, limit: int = Limit, offset: int = Offset,
    sort: str | None = Query(None, description=_sort_help(Level.STUDY)),
    reading_status: str | None = Query(
        None, description="comma-separated reading statuses to keep: unread, in_progress, read"
    ),
) -> dict[str, Any]:
    """Studies with their patient's main attributes, paged."""
    return _page(engine, request, Level.STUDY, sort, limit, offset)  # reads reading_status itself


@router.get("/series", response_model=_page_model("SeriesPage", SeriesOut), description=_FILTER_HELP)
def list_series(
    request: Request, engine: EngineDep, limit: int = Limit, offset: int = Offset,
    sort: str | None = Query(None, description=_sort_help(Level.SERIES)),
) -> dict[str, Any]:
    """Series, paged (filter by StudyInstanceUID for one study's)."""
    return _page(engine, request, Level.SERIES, sort, limit, offset)


@router.get("/instances", response_model=_page_model("InstancePage", InstanceOut), description=_FILTER_HELP)
def list_instances(
    request: Request, engine: EngineDep, limit: int = Limit, offset: int = Offset,
    sort: str | None = Query(None, description=_sort_help(Level.IMAGE)),
) -> dict[str, Any]:
    """Instances, paged (filter by SeriesInstanceUID for one series')."""
    return _page(engine, request, Level.IMAGE, sort, limit, offset)


# -- details ---------------------------------------------------------------------------------

PatientRef = Literal["auto", "pk", "PatientID"]


def _patient_pk(conn: Connection, ref: str, by: PatientRef, issuer: str | None) -> int:
    """A patient by pk or PatientID; ambiguous references are refused, never guessed."""
    if "\x00" in ref or "\x00" in (issuer or ""):
        raise Problem(400, "invalid character in the patient reference")
    if by == "pk" and not _PK.fullmatch(ref):
        raise Problem(400, f"{ref[:80]!r} is not a patient pk")
    found: set[int] = set()
    if by != "PatientID" and _PK.fullmatch(ref):
        found.update(conn.execute(select(P.c.id).where(P.c.id == int(ref))).scalars())
    if by != "pk":
        stmt = select(P.c.id).where(P.c.patient_id == ref)
        if issuer is not None:
            stmt = stmt.where(func.coalesce(P.c.issuer_of_patient_id, "") == issuer)
        found.update(conn.execute(stmt).scalars())
    if not found:
        raise NotFound(f"no patient {ref}")
    if len(found) > 1:
        raise Problem(
            409,
            f"{ref!r} names several patients; add ?by=pk, ?by=PatientID or ?IssuerOfPatientID=",
            candidates=sorted(found),
        )
    return found.pop()


ByParam = Query("auto", description="what {patient} is: pk, PatientID, or auto (either, if unambiguous)")
IssuerParam = Query(None, alias="IssuerOfPatientID", description="narrows a PatientID lookup")


@router.get("/patients/{patient}", response_model=PatientDetail)
def get_patient(
    patient: str, engine: EngineDep, by: PatientRef = ByParam, issuer: str | None = IssuerParam
) -> dict[str, Any]:
    """A patient (by pk or PatientID) with its studies."""
    with engine.connect() as conn:
        pk = _patient_pk(conn, patient, by, issuer)
        rows, _ = _fetch(conn, Level.PATIENT, [], where=P.c.id == pk)
        if not rows:
            raise NotFound(f"no patient {patient}")
        rows[0]["studies"], _ = _fetch(conn, Level.STUDY, [], where=S.c.patient_pk == pk, sort="-StudyDate")
    return rows[0]


@router.get("/studies/{study_instance_uid}", response_model=StudyDetail)
def get_study(study_instance_uid: str, engine: EngineDep) -> dict[str, Any]:
    """A study with its series."""
    with engine.connect() as conn:
        study = _one(conn, Level.STUDY, "StudyInstanceUID", study_instance_uid)
        study["series"], _ = _fetch(
            conn, Level.SERIES, _by_uid("StudyInstanceUID", study_instance_uid), sort="SeriesNumber"
        )
    return study


@router.get("/series/{series_instance_uid}", response_model=SeriesDetail)
def get_series(series_instance_uid: str, engine: EngineDep) -> dict[str, Any]:
    """A series with its instances."""
    with engine.connect() as conn:
        series = _one(conn, Level.SERIES, "SeriesInstanceUID", series_instance_uid)
        series["instances"], _ = _fetch(
            conn, Level.IMAGE, _by_uid("SeriesInstanceUID", series_instance_uid), sort="InstanceNumber"
        )
    return series


@router.get("/instances/{sop_instance_uid}", response_model=InstanceOut)
def get_instance(sop_instance_uid: str, engine: EngineDep) -> dict[str, Any]:
    """An instance: its indexed attributes and its stored file's size and checksum."""
    with engine.connect() as conn:
        return _one(conn, Level.IMAGE, "SOPInstanceUID", sop_instance_uid)


# -- deletion --------------------------------------------------------------------------------

def _report(result: deletion.DeletionResult) -> dict[str, Any]:
    return {
        "level": result.level.value,
        "instances": result.instances,
        "series": result.series,
        "studies": result.studies,
        "patients": result.patients,
        "files_removed": result.files_removed,
        "files_left": result.files_left,
    }


@router.delete("/patients/{patient}", response_model=DeletionReport)
def delete_patient(
    patient: str, services: ServicesDep, by: PatientRef = ByParam, issuer: str | None = IssuerParam
) -> dict[str, Any]:
    """Delete a patient with all its studies."""
    with services.engine.connect() as conn:
        pk = _patient_pk(conn, patient, by, issuer)
    return _report(deletion.delete_patient(services.engine, services.storage, pk))


@router.delete("/studies/{study_instance_uid}", response_model=DeletionReport)
def delete_study(study_instance_uid: str, services: ServicesDep) -> dict[str, Any]:
    """Delete a study (and its patient if it has no other study)."""
    uid = _uid(study_instance_uid)
    return _report(deletion.delete_study(services.engine, services.storage, uid))


@router.delete("/series/{series_instance_uid}", response_model=DeletionReport)
def delete_series(series_instance_uid: str, services: ServicesDep) -> dict[str, Any]:
    """Delete a series (and the parents it leaves empty)."""
    uid = _uid(series_instance_uid)
    return _report(deletion.delete_series(services.engine, services.storage, uid))


@router.delete("/instances/{sop_instance_uid}", response_model=DeletionReport)
def delete_instance(sop_instance_uid: str, services: ServicesDep) -> dict[str, Any]:
    """Delete an instance (and the parents it leaves empty)."""
    uid = _uid(sop_instance_uid)
    return _report(deletion.delete_instance(services.engine, services.storage, uid))


# -- zip download ----------------------------------------------------------------------------

_ZIP_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/zip": {}}, "description": "a DICOM File-set: DICOMDIR and files"}
}


def _archive(services: Services, level: Level, keyword: str, uid: str) -> StreamingResponse:
    with services.engine.connect() as conn:
        _one(conn, level, keyword, uid)  # 404 before the stream starts
        instances = matching_instances(conn, MatchQuery(level=level, constraints=_by_uid(keyword, uid)))
    return StreamingResponse(
        stream_archive(services.storage, instances),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{uid}.zip"'},
    )


@router.get(
    "/studies/{study_instance_uid}/archive", response_class=StreamingResponse, responses=_ZIP_RESPONSE
)
def study_archive(study_instance_uid: str, services: ServicesDep) -> StreamingResponse:
    """The study as a zip: its stored files under File IDs, with a DICOMDIR (PS3.10)."""
    return _archive(services, Level.STUDY, "StudyInstanceUID", study_instance_uid)


@router.get(
    "/series/{series_instance_uid}/archive", response_class=StreamingResponse, responses=_ZIP_RESPONSE
)
def series_archive(series_instance_uid: str, services: ServicesDep) -> StreamingResponse:
    """The series as a zip: its stored files under File IDs, with a DICOMDIR (PS3.10)."""
    return _archive(services, Level.SERIES, "SeriesInstanceUID", series_instance_uid)
