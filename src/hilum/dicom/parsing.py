"""Read what the index needs from a DICOM Part 10 file, without decoding pixels.

The header is parsed with large values deferred (pydicom ``defer_size``), so
pixel data is never read; the file's completeness is still checked by making
sure every top-level element ends inside the file.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from hilum.domain.attributes import (
    STORED,
    Level,
    normalize_date,
    normalize_time,
)
from hilum.domain.errors import IngestFailure, IngestStatus
from hilum.storage.base import Source

_STORED_TAGS = {
    level: [(BaseTag(attr.tag), attr.column, attr.vr) for attr in attrs]
    for level, attrs in STORED.items()
}
_DEFER = 2048  # bytes: larger values are skipped over, not read
_HASH_CHUNK = 1 << 20


@dataclass(slots=True)
class ParsedInstance:
    """The index-relevant content of one instance, by level."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    values: dict[Level, dict[str, Any]] = field(default_factory=dict)

    @property
    def patient(self) -> dict[str, Any]:
        return self.values[Level.PATIENT]

    @property
    def study(self) -> dict[str, Any]:
        return self.values[Level.STUDY]

    @property
    def series(self) -> dict[str, Any]:
        return self.values[Level.SERIES]

    @property
    def instance(self) -> dict[str, Any]:
        return self.values[Level.IMAGE]


def read_header(path: Source) -> Dataset:
    """Parse a Part 10 file's meta and dataset header; raise IngestFailure if it isn't one."""
    try:
        with path.open("rb") as handle:
            ds = dcmread(handle, defer_size=_DEFER, force=False)
            parsed_to = handle.tell()
            size = handle.seek(0, 2)
        deflated = ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
    except InvalidDicomError as exc:
        raise IngestFailure(IngestStatus.NOT_DICOM, f"not a DICOM file: {exc}") from None
    except (EOFError, OSError, ValueError, KeyError, TypeError, NotImplementedError,
            zlib.error, struct.error) as exc:
        raise IngestFailure(IngestStatus.NOT_DICOM, f"cannot parse DICOM: {exc}") from None
    if parsed_to < size:
        # pydicom stops early (with only a warning) when e.g. a sequence delimiter is missing.
        raise IngestFailure(
            IngestStatus.NOT_DICOM,
            f"file is truncated or malformed: parsing stopped at byte {parsed_to} of {size}",
        )
    # Deflated: value positions are offsets into the inflated data set, not the file.
    _check_complete(ds, _inflated_size(path) if deflated else size)
    return ds


def _inflated_size(path: Source) -> int:
    """The size of a deflated data set once inflated; IngestFailure if the stream is cut short."""
    with path.open("rb") as handle:
        read_preamble(handle, False)
        _read_file_meta_info(handle)
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        size = 0
        try:
            while chunk := handle.read(_HASH_CHUNK):
                while chunk:
                    size += len(inflater.decompress(chunk, _HASH_CHUNK))
                    chunk = inflater.unconsumed_tail
            size += len(inflater.flush())
        except zlib.error as exc:
            raise IngestFailure(IngestStatus.NOT_DICOM, f"bad deflated data set: {exc}") from None
    if not inflater.eof:
        raise IngestFailure(IngestStatus.NOT_DICOM, "deflated data set is truncated")
    return size


def _check_complete(ds: Dataset, size: int) -> None:
    last = None
    for tag, element in ds._dict.items():
        last = element
        if isinstance(element, RawDataElement) and element.length != 0xFFFFFFFF:
            end = element.value_tell + element.length
            if end > size:
                raise IngestFailure(
                    IngestStatus.NOT_DICOM,
                    f"file is truncated: element {tag} needs {end} bytes, file has {size}",
                )
    # pydicom silently stops at fewer than 8 bytes left: a header cut short.
    if isinstance(last, RawDataElement) and last.length != 0xFFFFFFFF:
        end = last.value_tell + last.length
        if end < size:
            raise IngestFailure(
                IngestStatus.NOT_DICOM,
                f"file is truncated: {size - end} byte(s) after the last element {last.tag}",
            )


def parse_instance(ds: Dataset) -> ParsedInstance:
    """Extract and validate the index attributes of ``ds`` (a header from read_header)."""
    meta = getattr(ds, "file_meta", None)
    try:
        sop_class = _uid(ds, "SOPClassUID") or _uid(meta, "MediaStorageSOPClassUID")
        sop_instance = _uid(ds, "SOPInstanceUID") or _uid(meta, "MediaStorageSOPInstanceUID")
        study_uid = _uid(ds, "StudyInstanceUID")
        series_uid = _uid(ds, "SeriesInstanceUID")
        ts = _uid(meta, "TransferSyntaxUID")
    except (ValueError, TypeError, KeyError) as exc:
        raise IngestFailure(IngestStatus.CANNOT_UNDERSTAND, f"cannot read UIDs: {exc}") from None
    missing = [
        name
        for name, value in (
            ("SOPClassUID", sop_class),
            ("SOPInstanceUID", sop_instance),
            ("StudyInstanceUID", study_uid),
            ("SeriesInstanceUID", series_uid),
        )
        if not value
    ]
    if missing:
        raise IngestFailure(
            IngestStatus.MISSING_ATTRIBUTE, f"missing required attribute(s): {', '.join(missing)}"
        )
    if not ts:
        raise IngestFailure(IngestStatus.CANNOT_UNDERSTAND, "file meta has no TransferSyntaxUID")
    for name, value in (
        ("SOPClassUID", sop_class),
        ("SOPInstanceUID", sop_instance),
        ("StudyInstanceUID", study_uid),
        ("SeriesInstanceUID", series_uid),
    ):
        if len(value) > 64 or not UID(value).is_valid:
            raise IngestFailure(IngestStatus.MISSING_ATTRIBUTE, f"{name} {value!r} is not a valid UID")

    values: dict[Level, dict[str, Any]] = {}
    present = ds._dict
    for level, attrs in _STORED_TAGS.items():
        row: dict[str, Any] = {}
        for tag, column, vr in attrs:
            if tag not in present:
                row[column] = None
                continue
            try:
                row[column] = _column_value(ds[tag], vr)
            except Exception:  # a malformed optional value is indexed as absent
                row[column] = None
        values[level] = row
    values[Level.STUDY]["study_instance_uid"] = study_uid
    values[Level.SERIES]["series_instance_uid"] = series_uid
    values[Level.IMAGE]["sop_instance_uid"] = sop_instance
    values[Level.IMAGE]["sop_class_uid"] = sop_class
    values[Level.PATIENT]["patient_id"] = values[Level.PATIENT]["patient_id"] or ""
    return ParsedInstance(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        transfer_syntax_uid=ts,
        values=values,
    )


def _uid(ds: Dataset | None, keyword: str) -> str:
    if ds is None:
        return ""
    value = ds.get(keyword)
    if value is None:
        return ""
    return str(value).strip().rstrip("\x00")


def _column_value(element: Any, vr: str) -> Any:
    value = element.value
    if value is None or value == "":
        return None
    if vr in ("IS", "US"):
        if isinstance(value, MultiValue | list):
            value = value[0] if value else None
        if value is None or value == "":
            return None
        number = int(value)
        return number if -(2**31) <= number < 2**31 else None
    if isinstance(value, MultiValue | list):
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    text = text.strip().rstrip("\x00")
    if vr == "DA":
        return normalize_date(text)[:8] or None
    if vr == "TM":
        return normalize_time(text) or None
    return text or None
