"""The viewer's measurements of a study, kept in the archive as DICOM SR (TID 1500).

``POST /studies/{study}/annotations`` takes the viewer's measurement list, builds a
Comprehensive 3D SR with highdicom (:mod:`hilum.dicom.annotations`) and stores it
through the one ingest path, like any instance received (source
``annotations:<user>``). Each save is a complete snapshot: a new instance in the
study's "Hilum measurements" series. ``GET`` answers the newest snapshot as JSON,
so whoever may see the study sees the measurements.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import generate_uid
from sqlalchemy import Connection, func, select

from hilum.app import Services
from hilum.dicom import annotations as sr
from hilum.domain.errors import IngestFailure, NotFound
from hilum.index.metadata import as_dict, models_of
from hilum.index.models import instances_t, series_t, studies_t
from hilum.web.deps import ServicesDep, checked_uid
from hilum.web.problems import Problem
from hilum.web.security import principal_of

router = APIRouter()
SOURCE_PREFIX = "annotations:"
I, SE, S = instances_t, series_t, studies_t  # noqa: E741
MAX_MEASUREMENTS = 2000


class MeasuredValue(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["Length", "Angle", "Area", "Mean", "Standard deviation", "Minimum", "Maximum"]
    value: float
    unit: str = Field(max_length=16, description="UCUM: mm, mm2, deg, [hnsf'U], {pixels}, 1")


class Measurement(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["length", "angle", "ellipse", "rectangle", "probe", "arrow", "text"]
    series_instance_uid: str = Field(max_length=64)
    sop_instance_uid: str = Field(max_length=64)
    frame: int | None = Field(None, ge=1)
    points: list[tuple[float, float]] = Field(
        max_length=5,
        description="image coordinates (x = column, y = row); (0,0) is the top left pixel's corner",
    )
    label: str | None = Field(None, max_length=200)
    values: list[MeasuredValue] = Field(default_factory=list, max_length=8)


class NewAnnotations(BaseModel):
    model_config = ConfigDict(extra="forbid")
    measurements: list[Measurement] = Field(max_length=MAX_MEASUREMENTS)


class Annotations(BaseModel):
    study_instance_uid: str
    measurements: list[Measurement]
    saved_by: str | None = None
    saved_at: datetime | None = None
    sop_instance_uid: str | None = Field(None, description="the SR instance these come from")
    series_instance_uid: str | None = None


def _latest(conn: Connection, study_uid: str) -> tuple[str, str, str, str, int] | None:
    """(SOP UID, series UID, storage key, source, count) of the newest measurement SR of a study."""
    where = (S.c.study_instance_uid == study_uid) & I.c.source.like(f"{SOURCE_PREFIX}%")
    joined = I.join(SE, I.c.series_pk == SE.c.id).join(S, SE.c.study_pk == S.c.id)
    row = conn.execute(
        select(I.c.sop_instance_uid, SE.c.series_instance_uid, I.c.storage_key, I.c.source)
        .select_from(joined)
        .where(where)
        .order_by(I.c.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    count = conn.execute(select(func.count()).select_from(joined).where(where)).scalar_one()
    return str(row[0]), str(row[1]), str(row[2]), str(row[3]), int(count)


def _study_exists(conn: Connection, study_uid: str) -> bool:
    return conn.execute(select(S.c.id).where(S.c.study_instance_uid == study_uid)).first() is not None


def _read(services: Services, study_uid: str) -> Annotations:
    with services.engine.connect() as conn:
        latest = _latest(conn, study_uid)
        if latest is None:
            if not _study_exists(conn, study_uid):
                raise NotFound(f"no study {study_uid}")
            return Annotations(study_instance_uid=study_uid, measurements=[], sop_instance_uid=None)
    sop_uid, series_uid, key, source, _ = latest
    with services.storage.open(key) as handle:
        dataset = dcmread(handle)
    records = sr.read_report(dataset)
    saved_at = None
    if dataset.get("ContentDate") and dataset.get("ContentTime"):
        stamp = f"{dataset.ContentDate}{str(dataset.ContentTime)[:6]}"
        saved_at = datetime.strptime(stamp, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    return Annotations(
        study_instance_uid=study_uid,
        measurements=[
            Measurement(
                kind=r.kind,  # type: ignore[arg-type]
                series_instance_uid=r.series_instance_uid,
                sop_instance_uid=r.sop_instance_uid,
                frame=r.frame,
                points=r.points,
                label=r.label,
                values=[MeasuredValue(name=v.name, value=v.value, unit=v.unit) for v in r.values],  # type: ignore[arg-type]
            )
            for r in records
        ],
        saved_by=source[len(SOURCE_PREFIX) :] or None,
        saved_at=saved_at,
        sop_instance_uid=sop_uid,
        series_instance_uid=series_uid,
    )


@router.get("/studies/{study_uid}/annotations", summary="The saved measurements of a study (newest snapshot)")
def get_annotations(study_uid: str, services: ServicesDep) -> Annotations:
    checked_uid(study_uid, "StudyInstanceUID")
    return _read(services, study_uid)


@router.post(
    "/studies/{study_uid}/annotations",
    status_code=201,
    summary="Save the measurements of a study as a DICOM SR (TID 1500) in the archive",
)
def save_annotations(
    study_uid: str, body: NewAnnotations, request: Request, services: ServicesDep
) -> Annotations:
    checked_uid(study_uid, "StudyInstanceUID")
    principal = principal_of(request)
    author = principal.username if principal is not None else "anonymous"
    wanted = {m.sop_instance_uid for m in body.measurements}
    for m in body.measurements:
        checked_uid(m.sop_instance_uid, "SOPInstanceUID")
    evidence: list[Dataset] = []
    with services.engine.connect() as conn:
        latest = _latest(conn, study_uid)
        if not _study_exists(conn, study_uid):
            raise NotFound(f"no study {study_uid}")
        if wanted:
            for sop in sorted(wanted):
                try:
                    models = models_of(conn, study_uid, sop_uid=sop)
                except NotFound:
                    raise Problem(400, f"instance {sop} is not in study {study_uid}") from None
                evidence.extend(
                    sr.evidence_from_json(as_dict(services.engine, services.storage, m)) for m in models
                )
        else:
            first = models_of(conn, study_uid)[:1]
            evidence.extend(
                sr.evidence_from_json(as_dict(services.engine, services.storage, m)) for m in first
            )
    records = [
        sr.Record(
            kind=m.kind,
            series_instance_uid=m.series_instance_uid,
            sop_instance_uid=m.sop_instance_uid,
            points=[(float(x), float(y)) for x, y in m.points],
            frame=m.frame,
            label=m.label,
            values=[sr.MeasuredValue(v.name, v.value, v.unit) for v in m.values],
        )
        for m in body.measurements
    ]
    series_uid = latest[1] if latest else generate_uid()
    number = (latest[4] if latest else 0) + 1
    try:
        dataset = sr.build_report(
            records,
            evidence,
            series_instance_uid=series_uid,
            instance_number=number,
            author=author,
            when=datetime.now(UTC),
        )
    except (sr.AnnotationError, ValueError, TypeError) as exc:
        raise Problem(400, f"cannot encode the measurements: {exc}") from None
    store_created(services, dataset, source=f"{SOURCE_PREFIX}{author}", study_uid=study_uid,
                  what="the measurement report")
    return _read(services, study_uid)


def store_created(services: Services, dataset: Dataset, *, source: str, study_uid: str, what: str) -> None:
    """Store an object Hilum made (a report, a key object selection) in ``study_uid``
    through the one ingest path, as any received instance; 409 if it was not stored."""
    buffer = DicomBytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    staged = services.ingest.stage_bytes(buffer.getvalue())
    try:
        result = services.ingest.ingest_staged(staged, source=source, expected_study_uid=study_uid)
    except IngestFailure as failure:
        raise Problem(409, f"{what} was not stored: {failure}") from None
    if not result.ok:
        raise Problem(409, f"{what} was not stored: {result.message}")
