"""Measurements and annotations of the viewer as DICOM SR (TID 1500 Measurement Report).

The web viewer sends its measurements as a list of plain records (kind, image,
points in image coordinates, values with UCUM units); :func:`build_report`
makes a Comprehensive 3D SR with one TID 1410 planar ROI measurement group per
record, built with highdicom, and :func:`read_report` turns such an SR back into
the same records. Each group's Tracking Identifier carries the kind and the
label ("Length", "Arrow: lesion"), readable by any SR viewer; geometry is a
SCOORD on the referenced image (PS3.3 C.18.6: pixel coordinates, (0,0) the top
left corner of the top left pixel).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.uid import UID

KINDS = ("length", "angle", "ellipse", "rectangle", "probe", "arrow", "text")
_KIND_LABEL = {
    "length": "Length",
    "angle": "Angle",
    "ellipse": "Ellipse",
    "rectangle": "Rectangle",
    "probe": "Probe",
    "arrow": "Arrow",
    "text": "Text",
}
_LABEL_KIND = {v.lower(): k for k, v in _KIND_LABEL.items()}
# SCOORD graphic type of each kind (PS3.3 C.18.6.1.2).
_GRAPHIC_TYPE = {
    "length": hd.sr.GraphicTypeValues.POLYLINE,
    "angle": hd.sr.GraphicTypeValues.POLYLINE,
    "ellipse": hd.sr.GraphicTypeValues.ELLIPSE,
    "rectangle": hd.sr.GraphicTypeValues.POLYLINE,
    "probe": hd.sr.GraphicTypeValues.POINT,
    "arrow": hd.sr.GraphicTypeValues.POLYLINE,
    "text": hd.sr.GraphicTypeValues.POINT,
}
_POINTS = {"length": 2, "angle": 3, "ellipse": 4, "rectangle": 5, "probe": 1, "arrow": 2, "text": 1}
_CONCEPTS = {
    "Length": codes.SCT.Length,
    "Angle": codes.SCT.Angle,
    "Area": codes.SCT.Area,
    "Mean": codes.SCT.Mean,
    "Standard deviation": codes.SCT.StandardDeviation,
    "Minimum": codes.SCT.Minimum,
    "Maximum": codes.SCT.Maximum,
}
_CONCEPT_NAMES = {(c.value, c.scheme_designator): name for name, c in _CONCEPTS.items()}
_UNIT_MEANINGS = {
    "mm": "millimeter",
    "mm2": "square millimeter",
    "deg": "degree",
    "[hnsf'U]": "Hounsfield unit",
    "{pixels}": "pixels",
    "{pixels2}": "square pixels",
    "1": "no units",
}
# Attributes copied from a referenced image into the evidence the SR is built from.
_EVIDENCE_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Modality",
    "FrameOfReferenceUID",
    "SpecificCharacterSet",
)
SERIES_DESCRIPTION = "Hilum measurements"
TITLE = codes.DCM.ImagingMeasurementReport


class AnnotationError(ValueError):
    """A measurement record that cannot be encoded (a 400 for the web layer)."""


@dataclass
class MeasuredValue:
    name: str
    value: float
    unit: str


@dataclass
class Record:
    kind: str
    series_instance_uid: str
    sop_instance_uid: str
    points: list[tuple[float, float]]
    frame: int | None = None
    label: str | None = None
    values: list[MeasuredValue] = field(default_factory=list)


def evidence_from_json(model: dict[str, Any]) -> Dataset:
    """A small data set with the identifying attributes of a stored instance's JSON model."""
    wanted = {}
    for keyword in _EVIDENCE_KEYWORDS:
        number = tag_for_keyword(keyword)
        if number is None:
            continue
        key = f"{number:08X}"
        if key in model and "BulkDataURI" not in model[key]:
            wanted[key] = model[key]
    return Dataset.from_json(wanted)


def _identifier(record: Record) -> str:
    base = _KIND_LABEL[record.kind]
    return f"{base}: {record.label}" if record.label else base


def _group(record: Record, sop_class_uid: str) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    if record.kind not in KINDS:
        raise AnnotationError(f"unknown kind {record.kind!r} (one of {', '.join(KINDS)})")
    points = np.asarray(record.points, dtype=float)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) != _POINTS[record.kind]:
        raise AnnotationError(
            f"a {record.kind} needs {_POINTS[record.kind]} points (x, y), "
            f"not {points.shape[0] if points.ndim == 2 else 0}"
        )
    if not np.all(np.isfinite(points)):
        raise AnnotationError("points must be finite numbers")
    source = hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=sop_class_uid,
        referenced_sop_instance_uid=record.sop_instance_uid,
        referenced_frame_numbers=[record.frame] if record.frame else None,
    )
    region = hd.sr.ImageRegion(
        graphic_type=_GRAPHIC_TYPE[record.kind], graphic_data=points, source_image=source
    )
    measurements = []
    for value in record.values:
        concept = _CONCEPTS.get(value.name)
        if concept is None:
            raise AnnotationError(f"unknown measurement {value.name!r} (one of {', '.join(_CONCEPTS)})")
        unit = hd.sr.CodedConcept(value.unit, "UCUM", _UNIT_MEANINGS.get(value.unit, value.unit))
        measurements.append(hd.sr.Measurement(name=concept, value=float(value.value), unit=unit))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(identifier=_identifier(record)[:64], uid=hd.UID()),
        referenced_region=region,
        measurements=measurements or None,
    )


def build_report(
    records: Sequence[Record],
    evidence: Sequence[Dataset],
    *,
    series_instance_uid: str,
    instance_number: int,
    author: str,
    when: datetime,
) -> Dataset:
    """A Comprehensive 3D SR (TID 1500) with the records, referencing ``evidence``."""
    if not evidence:
        raise AnnotationError("the study has no image to reference")
    classes = {str(ds.SOPInstanceUID): str(ds.SOPClassUID) for ds in evidence}
    groups = []
    for record in records:
        if record.sop_instance_uid not in classes:
            raise AnnotationError(f"instance {record.sop_instance_uid} is not an image of this study")
        groups.append(_group(record, classes[record.sop_instance_uid]))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=_person_name(author)),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion
        if any(getattr(ds, "Modality", "") == "CT" for ds in evidence)
        else codes.DCM.ImagingProcedure,
        imaging_measurements=groups or None,
        title=TITLE,
    )
    referenced = {r.sop_instance_uid for r in records}
    used = [ds for ds in evidence if str(ds.SOPInstanceUID) in referenced] or [evidence[0]]
    sr = hd.sr.Comprehensive3DSR(
        evidence=used,
        content=report,
        series_instance_uid=UID(series_instance_uid),
        series_number=9901,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer="Hilum",
        series_description=SERIES_DESCRIPTION,
        is_complete=True,
        is_final=False,
        content_date=when.date(),
        content_time=when.time(),
        institution_name=str(getattr(evidence[0], "InstitutionName", "") or "") or None,
    )
    return sr


def _person_name(username: str) -> str:
    # A Person Name (PN) value: the user name as the family name component ("jdoe^").
    cleaned = "".join(c for c in username if c.isprintable() and c not in "\\^=")[:60]
    return f"{cleaned or 'UNKNOWN'}^"


def read_report(sr: Dataset) -> list[Record]:
    """The records of a TID 1500 SR written by :func:`build_report` (or a compatible one)."""
    series_of: dict[str, str] = {}
    for study in getattr(sr, "CurrentRequestedProcedureEvidenceSequence", []):
        for series in getattr(study, "ReferencedSeriesSequence", []):
            for image in getattr(series, "ReferencedSOPSequence", []):
                series_of[str(image.ReferencedSOPInstanceUID)] = str(series.SeriesInstanceUID)
    out: list[Record] = []
    for container in getattr(sr, "ContentSequence", []):
        if getattr(container, "ValueType", "") != "CONTAINER":
            continue
        for group in getattr(container, "ContentSequence", []):
            record = _read_group(group)
            if record is not None:
                record.series_instance_uid = series_of.get(record.sop_instance_uid, "")
                out.append(record)
    return out


def _meaning(item: Dataset) -> str:
    seq = getattr(item, "ConceptNameCodeSequence", None)
    return str(seq[0].CodeMeaning) if seq else ""


def _read_group(group: Dataset) -> Record | None:
    if getattr(group, "ValueType", "") != "CONTAINER" or _meaning(group) != "Measurement Group":
        return None
    identifier = ""
    scoord: Dataset | None = None
    values: list[MeasuredValue] = []
    for item in getattr(group, "ContentSequence", []):
        name = _meaning(item)
        value_type = getattr(item, "ValueType", "")
        if value_type == "TEXT" and name == "Tracking Identifier":
            identifier = str(item.TextValue)
        elif value_type == "SCOORD":
            scoord = item
        elif value_type == "NUM":
            concept = item.ConceptNameCodeSequence[0]
            label = _CONCEPT_NAMES.get(
                (concept.CodeValue, concept.CodingSchemeDesignator), str(concept.CodeMeaning)
            )
            measured = getattr(item, "MeasuredValueSequence", None)
            if measured:
                unit = measured[0].MeasurementUnitsCodeSequence[0].CodeValue
                values.append(MeasuredValue(label, float(measured[0].NumericValue), str(unit)))
    if scoord is None:
        return None
    head, _, label = identifier.partition(": ")
    kind = _LABEL_KIND.get(head.lower())
    data = [float(v) for v in scoord.GraphicData]
    points = [(data[i], data[i + 1]) for i in range(0, len(data) - 1, 2)]
    if kind is None:  # another application's group: keep the geometry
        kind = {"POINT": "probe", "ELLIPSE": "ellipse"}.get(str(scoord.GraphicType), "length")
        label = identifier
    refs = getattr(scoord, "ContentSequence", [])
    if not refs:
        return None
    image = refs[0].ReferencedSOPSequence[0]
    frames = image.get("ReferencedFrameNumber")
    if frames is None or frames == "":
        frame = None
    else:
        frame = int(frames[0]) if isinstance(frames, MultiValue) else int(frames)
    return Record(
        kind=kind,
        series_instance_uid="",
        sop_instance_uid=str(image.ReferencedSOPInstanceUID),
        points=points,
        frame=frame,
        label=label or None,
        values=values,
    )
