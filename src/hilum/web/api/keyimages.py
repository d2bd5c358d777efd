"""Key images marked in the viewer, kept in the archive as Key Object Selection documents.

``POST /studies/{study}/key-images`` takes the images a reader marked, a document title
(CID 7010: Of Interest, For Teaching, ...) and an optional description, builds a Key
Object Selection document (TID 2010) with highdicom and stores it through the one ingest
path, like any instance received (source ``keyimages:<user>``), in the study's "Hilum
key images" series. A selection is a document of its own: documents are not edited, a
new selection is a new document. The viewer shows each as a "Key images" display set.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import highdicom as hd
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from sqlalchemy import Connection, func, select

from hilum.dicom import annotations as sr
from hilum.domain.errors import NotFound
from hilum.index.metadata import as_dict, models_of
from hilum.index.models import instances_t, series_t, studies_t
from hilum.web.api.annotations import store_created
from hilum.web.deps import ServicesDep, checked_uid
from hilum.web.problems import Problem
from hilum.web.security import principal_of

router = APIRouter()
SOURCE_PREFIX = "keyimages:"
SERIES_DESCRIPTION = "Hilum key images"
SERIES_NUMBER = 9902
MAX_IMAGES = 1000
I, SE, S = instances_t, series_t, studies_t  # noqa: E741
# CID 7010 Key Object Selection Document Titles (the common ones).
TITLES = {
    "Of Interest": codes.DCM.OfInterest,
    "For Teaching": codes.DCM.ForTeaching,
    "For Referring Provider": codes.DCM.ForReferringProvider,
    "For Surgery": codes.DCM.ForSurgery,
    "For Conference": codes.DCM.ForConference,
    "For Therapy": codes.DCM.ForTherapy,
    "For Patient": codes.DCM.ForPatient,
    "Quality Issue": codes.DCM.QualityIssue,
}
Title = Literal[
    "Of Interest",
    "For Teaching",
    "For Referring Provider",
    "For Surgery",
    "For Conference",
    "For Therapy",
    "For Patient",
    "Quality Issue",
]


class NewKeyImages(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sop_instance_uids: list[str] = Field(
        min_length=1, max_length=MAX_IMAGES, description="the key images, in the order to show them"
    )
    title: Title = "Of Interest"
    description: str | None = Field(None, max_length=1024, description="Key Object Description")


class SavedKeyImages(BaseModel):
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    title: str
    images: int
    saved_by: str


def _hilum_series(conn: Connection, study_uid: str) -> tuple[str | None, int]:
    """The study's Hilum key image series (if any) and how many documents it holds."""
    where = (S.c.study_instance_uid == study_uid) & I.c.source.like(f"{SOURCE_PREFIX}%")
    joined = I.join(SE, I.c.series_pk == SE.c.id).join(S, SE.c.study_pk == S.c.id)
    row = conn.execute(
        select(SE.c.series_instance_uid).select_from(joined).where(where).order_by(I.c.id.desc()).limit(1)
    ).first()
    count = conn.execute(select(func.count()).select_from(joined).where(where)).scalar_one()
    return (str(row[0]) if row else None), int(count)


def _evidence(model: dict[str, Any]) -> Dataset:
    """The identifying attributes of an instance; with Rows and Columns an image is
    referenced as an IMAGE content item (else COMPOSITE)."""
    ds = sr.evidence_from_json(model)
    for keyword, tag in (("Rows", "00280010"), ("Columns", "00280011")):
        value = model.get(tag, {}).get("Value")
        if value:
            setattr(ds, keyword, int(value[0]))
    # highdicom copies these from the first instance: present, if empty.
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "StudyID",
        "StudyDate",
        "StudyTime",
    ):
        if keyword not in ds:
            setattr(ds, keyword, None)
    return ds


def build_key_object_selection(
    evidence: list[Dataset],
    *,
    title: str,
    description: str | None,
    series_instance_uid: str,
    instance_number: int,
    author: str,
    when: datetime,
) -> Dataset:
    """A Key Object Selection document naming ``evidence`` (in that order)."""
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name=sr._person_name(author)  # the same PN form as the measurement SR
        ),
    )
    content = hd.ko.KeyObjectSelection(
        document_title=TITLES[title],
        referenced_objects=evidence,
        observer_person_context=observer,
        description=description or None,
    )
    return hd.ko.KeyObjectSelectionDocument(
        evidence=evidence,
        content=content,
        series_instance_uid=series_instance_uid,
        series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer="Hilum",
        institution_name=str(getattr(evidence[0], "InstitutionName", "") or "") or None,
        series_description=SERIES_DESCRIPTION,
        content_date=when.date(),
        content_time=when.time(),
    )


@router.post(
    "/studies/{study_uid}/key-images",
    status_code=201,
    summary="Store a selection of key images of a study as a Key Object Selection document",
)
def save_key_images(
    study_uid: str, body: NewKeyImages, request: Request, services: ServicesDep
) -> SavedKeyImages:
    checked_uid(study_uid, "StudyInstanceUID")
    principal = principal_of(request)
    author = principal.username if principal is not None else "anonymous"
    wanted = list(dict.fromkeys(body.sop_instance_uids))
    for sop in wanted:
        checked_uid(sop, "SOPInstanceUID")
    evidence: list[Dataset] = []
    with services.engine.connect() as conn:
        if conn.execute(select(S.c.id).where(S.c.study_instance_uid == study_uid)).first() is None:
            raise NotFound(f"no study {study_uid}")
        for sop in wanted:
            try:
                models = models_of(conn, study_uid, sop_uid=sop)
            except NotFound:
                raise Problem(400, f"instance {sop} is not in study {study_uid}") from None
            evidence.append(_evidence(as_dict(services.engine, services.storage, models[0])))
        series_uid, count = _hilum_series(conn, study_uid)
    try:
        dataset = build_key_object_selection(
            evidence,
            title=body.title,
            description=body.description,
            series_instance_uid=series_uid or generate_uid(),
            instance_number=count + 1,
            author=author,
            when=datetime.now(UTC),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise Problem(400, f"cannot encode the key object selection: {exc}") from None
    store_created(services, dataset, source=f"{SOURCE_PREFIX}{author}", study_uid=study_uid,
                  what="the key object selection")
    return SavedKeyImages(
        study_instance_uid=study_uid,
        series_instance_uid=str(dataset.SeriesInstanceUID),
        sop_instance_uid=str(dataset.SOPInstanceUID),
        title=body.title,
        images=len(evidence),
        saved_by=author,
    )
