"""The attributes Hilum indexes, per query/retrieve level, and their normal forms.

One table drives the index columns, header extraction at ingest, C-FIND and
(later) QIDO-RS: adding an attribute here makes it stored, matchable and
returnable everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydicom.datadict import keyword_for_tag, tag_for_keyword


class Level(StrEnum):
    """Query/Retrieve levels (PS3.4 C.3)."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"

    @property
    def depth(self) -> int:
        return _DEPTH[self]


_DEPTH = {Level.PATIENT: 0, Level.STUDY: 1, Level.SERIES: 2, Level.IMAGE: 3}


@dataclass(frozen=True, slots=True)
class IndexedAttribute:
    keyword: str
    vr: str
    level: Level
    column: str
    # Computed attributes come from aggregates, not from any one instance.
    computed: bool = False

    @property
    def tag(self) -> int:
        tag = tag_for_keyword(self.keyword)
        assert tag is not None, self.keyword
        return tag


def _attrs(level: Level, *specs: tuple[str, str, str]) -> list[IndexedAttribute]:
    return [IndexedAttribute(kw, vr, level, col) for kw, vr, col in specs]


P, S, SE, I = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE  # noqa: E741

ATTRIBUTES: list[IndexedAttribute] = [
    # PS3.4 C.6.1.1.2 / C.6.2.1.2: patient level
    *_attrs(
        P,
        ("PatientName", "PN", "patient_name"),
        ("PatientID", "LO", "patient_id"),
        ("IssuerOfPatientID", "LO", "issuer_of_patient_id"),
        ("PatientBirthDate", "DA", "patient_birth_date"),
        ("PatientBirthTime", "TM", "patient_birth_time"),
        ("PatientSex", "CS", "patient_sex"),
        ("OtherPatientNames", "PN", "other_patient_names"),
        ("EthnicGroup", "SH", "ethnic_group"),
        ("PatientComments", "LT", "patient_comments"),
    ),
    IndexedAttribute("NumberOfPatientRelatedStudies", "IS", P, "num_studies", computed=True),
    IndexedAttribute("NumberOfPatientRelatedSeries", "IS", P, "num_series", computed=True),
    IndexedAttribute("NumberOfPatientRelatedInstances", "IS", P, "num_instances", computed=True),
    # PS3.4 C.6.1.1.3: study level
    *_attrs(
        S,
        ("StudyInstanceUID", "UI", "study_instance_uid"),
        ("StudyDate", "DA", "study_date"),
        ("StudyTime", "TM", "study_time"),
        ("AccessionNumber", "SH", "accession_number"),
        ("StudyID", "SH", "study_id"),
        ("StudyDescription", "LO", "study_description"),
        ("ReferringPhysicianName", "PN", "referring_physician_name"),
        ("NameOfPhysiciansReadingStudy", "PN", "name_of_physicians_reading_study"),
        ("AdmittingDiagnosesDescription", "LO", "admitting_diagnoses_description"),
        ("PatientAge", "AS", "patient_age"),
        ("PatientSize", "DS", "patient_size"),
        ("PatientWeight", "DS", "patient_weight"),
        ("InstitutionName", "LO", "institution_name"),
    ),
    IndexedAttribute("ModalitiesInStudy", "CS", S, "modalities_in_study", computed=True),
    IndexedAttribute("SOPClassesInStudy", "UI", S, "sop_classes_in_study", computed=True),
    IndexedAttribute("NumberOfStudyRelatedSeries", "IS", S, "num_series", computed=True),
    IndexedAttribute("NumberOfStudyRelatedInstances", "IS", S, "num_instances", computed=True),
    # PS3.4 C.6.1.1.4: series level
    *_attrs(
        SE,
        ("SeriesInstanceUID", "UI", "series_instance_uid"),
        ("Modality", "CS", "modality"),
        ("SeriesNumber", "IS", "series_number"),
        ("SeriesDescription", "LO", "series_description"),
        ("SeriesDate", "DA", "series_date"),
        ("SeriesTime", "TM", "series_time"),
        ("BodyPartExamined", "CS", "body_part_examined"),
        ("Laterality", "CS", "laterality"),
        ("ProtocolName", "LO", "protocol_name"),
        ("PerformedProcedureStepStartDate", "DA", "performed_procedure_step_start_date"),
        ("PerformedProcedureStepStartTime", "TM", "performed_procedure_step_start_time"),
        ("Manufacturer", "LO", "manufacturer"),
        ("ManufacturerModelName", "LO", "manufacturer_model_name"),
        ("StationName", "SH", "station_name"),
        ("OperatorsName", "PN", "operators_name"),
        ("FrameOfReferenceUID", "UI", "frame_of_reference_uid"),
    ),
    IndexedAttribute(
        "NumberOfSeriesRelatedInstances", "IS", SE, "num_instances", computed=True
    ),
    # PS3.4 C.6.1.1.5: composite object instance level
    *_attrs(
        I,
        ("SOPInstanceUID", "UI", "sop_instance_uid"),
        ("SOPClassUID", "UI", "sop_class_uid"),
        ("InstanceNumber", "IS", "instance_number"),
        ("ContentDate", "DA", "content_date"),
        ("ContentTime", "TM", "content_time"),
        ("AcquisitionNumber", "IS", "acquisition_number"),
        ("Rows", "US", "rows"),
        ("Columns", "US", "columns"),
        ("BitsAllocated", "US", "bits_allocated"),
        ("NumberOfFrames", "IS", "number_of_frames"),
        ("ImageType", "CS", "image_type"),
    ),
]

BY_KEYWORD: dict[str, IndexedAttribute] = {a.keyword: a for a in ATTRIBUTES}

# The unique key of each level (PS3.4 C.6.1.1 / C.6.2.1).
UNIQUE_KEY: dict[Level, str] = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}

# Attributes stored per level that are read from instance headers.
STORED: dict[Level, list[IndexedAttribute]] = {
    level: [a for a in ATTRIBUTES if a.level is level and not a.computed] for level in Level
}

INTEGER_VRS = frozenset({"IS", "US", "UL", "SS", "SL"})
DATE_VRS = frozenset({"DA", "TM", "DT"})


def keyword_of(tag: int) -> str:
    return keyword_for_tag(tag) or f"{tag:08X}"


def normalize_date(value: str) -> str:
    """``YYYYMMDD`` from DA, also accepting the ACR-NEMA ``YYYY.MM.DD`` form."""
    return value.strip().replace(".", "").replace("-", "")


def normalize_time(value: str) -> str:
    """``HHMMSS[.ffffff]`` from TM (also ``HH:MM:SS``), padded so text order is time order."""
    text = value.strip().replace(":", "")
    if not text:
        return ""
    whole, _, fraction = text.partition(".")
    whole = whole.ljust(6, "0")
    return f"{whole}.{fraction}" if fraction else whole


def person_name_key(value: str) -> str:
    """The case-folded form person names are matched on (PS3.4 C.2.2.2.1)."""
    return value.strip().upper()
