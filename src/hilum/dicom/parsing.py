"""Read what the index needs from a DICOM Part 10 file, without decoding pixels.

The header is parsed with large values deferred (pydicom ``defer_size``), so
pixel data is never read; the file's completeness is still checked by making
sure every top-level element ends inside the file.
"""

from __future__ import annotations

import struct
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
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
# Deflated data sets (PS3.5 A.5): bounds on inflating one (see inflated_limit) ...
MAX_INFLATED_BYTES = 4 << 30
MIN_INFLATED_LIMIT = 256 << 20
MAX_INFLATE_RATIO = 100
# ... and on parsing the inflated header (millions of tiny elements deflate very well).
PARSE_SECONDS = 20.0
_SPOOL_BYTES = 4 << 20  # an inflated data set beyond this goes to a temporary file


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
            preamble = read_preamble(handle, False)
            file_meta = _read_file_meta_info(handle)
            if file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
                # Value positions are offsets into the inflated data set, not the file.
                ds, parsed_to, size = _read_deflated(handle, preamble, file_meta)
            else:
                handle.seek(0)
                ds = dcmread(handle, defer_size=_DEFER, force=False)
                parsed_to = handle.tell()
                size = handle.seek(0, 2)
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
    _check_complete(ds, size)
    return ds


def inflated_limit(deflated_size: int) -> int:
    """The most bytes a deflated data set of ``deflated_size`` bytes may inflate to.

    Deflate reaches about 1000:1 on runs of zeros, so a small upload could
    otherwise make a receiver inflate gigabytes (a "deflate bomb"). Real data
    sets inflate by far less than :data:`MAX_INFLATE_RATIO`; small ones (a
    blank image) may go above it up to :data:`MIN_INFLATED_LIMIT`.
    """
    return min(MAX_INFLATED_BYTES, max(MIN_INFLATED_LIMIT, MAX_INFLATE_RATIO * deflated_size))


def _read_deflated(
    handle: BinaryIO, preamble: bytes | None, file_meta: FileMetaDataset
) -> tuple[Dataset, int, int]:
    """Inflate the data set after the file meta (bounded) and parse its header.

    pydicom would inflate the whole data set into memory at once; here it is
    inflated in chunks into a temporary file (memory up to :data:`_SPOOL_BYTES`),
    which the returned data set keeps for its deferred values. Returns the data
    set, where parsing stopped and the inflated size.
    """
    start = handle.tell()
    limit = inflated_limit(handle.seek(0, 2) - start)
    handle.seek(start)
    inflated = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115 (kept by ds)
    try:
        size = _inflate(handle, inflated, limit)
        inflated.seek(0)
        bounded = _Deadline(inflated, PARSE_SECONDS)
        dataset = read_dataset(bounded, False, True, defer_size=_DEFER)  # type: ignore[arg-type]
        parsed_to = inflated.tell()
    except BaseException:
        inflated.close()
        raise
    ds = FileDataset(inflated, dataset, preamble, file_meta, False, True)
    ds.filename = None  # deferred values come from the inflated copy, never the deflated file
    ds.set_original_encoding(False, True, dataset._character_set)
    return ds, parsed_to, size


class _Deadline:
    """A file object for pydicom to parse from that fails once ``seconds`` have passed."""

    def __init__(self, raw: IO[bytes], seconds: float) -> None:
        self._raw = raw
        self._deadline = time.monotonic() + seconds
        self._seconds = seconds
        self.seek = raw.seek
        self.tell = raw.tell

    def read(self, size: int = -1) -> bytes:
        if time.monotonic() > self._deadline:
            raise IngestFailure(
                IngestStatus.NOT_DICOM,
                f"deflated data set header not parsed within {self._seconds:g} s",
            )
        return self._raw.read(size)


def _inflate(source: BinaryIO, sink: IO[bytes], limit: int) -> int:
    """Inflate the raw deflate stream (PS3.5 A.5) from ``source`` into ``sink``; its size.

    Every round either consumes input or produces output, and output stops at
    ``limit`` bytes, so this ends on any input. Bytes after the end of the
    stream are not read: the padding byte PS3.5 A.5 asks for, or a trailer
    some writers leave (pydicom's image_dfl.dcm has a gzip one), as before.
    CPython may report such bytes in ``unconsumed_tail`` as well as in
    ``unused_data`` after the end: inflating them again never ended (the
    old loop hung there), hence the loop ends at ``eof``.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    size = 0
    pending = b""
    try:
        while not inflater.eof:
            if not pending:
                pending = source.read(_HASH_CHUNK)
                if not pending:
                    raise IngestFailure(IngestStatus.NOT_DICOM, "deflated data set is truncated")
            out = inflater.decompress(pending, _HASH_CHUNK)
            if not out and not inflater.eof and len(inflater.unconsumed_tail) >= len(pending):
                raise IngestFailure(IngestStatus.NOT_DICOM, "deflated data set: inflating makes no progress")
            pending = inflater.unconsumed_tail
            size += len(out)
            if size > limit:
                raise IngestFailure(
                    IngestStatus.NOT_DICOM,
                    f"deflated data set inflates to more than {limit} bytes (the limit for "
                    "its compressed size)",
                )
            sink.write(out)
    except zlib.error as exc:
        raise IngestFailure(IngestStatus.NOT_DICOM, f"bad deflated data set: {exc}") from None
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
        # From the data set only: the file meta (written from a C-STORE request, or
        # by whoever made the file) does not make a data set without them valid.
        sop_class = _uid(ds, "SOPClassUID")
        sop_instance = _uid(ds, "SOPInstanceUID")
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
