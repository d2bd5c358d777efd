"""De-identify one Part 10 file into a stream, without loading its pixel data.

The header (everything before Pixel Data) is read with pydicom
(``stop_before_pixels``), de-identified and written; the pixel data element
(native or encapsulated, any size) is then copied from the source byte for
byte in 1 MiB chunks, so memory stays bounded by the header, whatever the
size of the image. Elements after the pixel data (padding, digital
signatures) go through the profile like the header. Deflated transfer syntax
has no byte offsets to copy from: such files are read whole.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from io import BytesIO
from typing import BinaryIO

from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import dcmwrite, write_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from hilum.deid.job import DeidentificationError
from hilum.deid.profile import Deidentifier

PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                      b"UR", b"UT", b"UV"})
SEQUENCE_DELIMITER = 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class DeidentifiedInstance:
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    bytes_written: int
    burned_in: bool


def deidentify_stream(src: BinaryIO, dst: BinaryIO, deid: Deidentifier) -> DeidentifiedInstance:
    """Read a Part 10 file from ``src`` (seekable), write its de-identified copy to ``dst``."""
    try:
        ds = dcmread(src, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many kinds on bad input
        raise DeidentificationError(f"not a readable DICOM file: {exc}") from None
    transfer_syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if transfer_syntax is None:
        raise DeidentificationError("no File Meta Information (transfer syntax unknown)")
    pixel_start = src.tell()
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        src.seek(0)
        ds = dcmread(src)
        pixel_start = -1
    burned_in = str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES"
    header = BytesIO()
    try:
        deid.deidentify(ds)
        dcmwrite(header, ds, enforce_file_format=True)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise DeidentificationError(f"cannot de-identify this data set: {exc}") from None
    written = _write(dst, header.getvalue())
    if pixel_start >= 0:
        src.seek(pixel_start)
        written += _copy_tail(
            src, dst, deid,
            little_endian=transfer_syntax.is_little_endian,
            implicit_vr=transfer_syntax.is_implicit_VR,
        )
    return DeidentifiedInstance(
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        study_instance_uid=str(ds.get("StudyInstanceUID", "")),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
        bytes_written=written,
        burned_in=burned_in,
    )


def _write(dst: BinaryIO, data: bytes) -> int:
    dst.write(data)
    return len(data)


def _copy(src: BinaryIO, dst: BinaryIO, length: int) -> int:
    left = length
    while left > 0:
        chunk = src.read(min(CHUNK, left))
        if not chunk:
            raise DeidentificationError("file ends inside its pixel data")
        dst.write(chunk)
        left -= len(chunk)
    return length


def _copy_tail(
    src: BinaryIO, dst: BinaryIO, deid: Deidentifier, *, little_endian: bool, implicit_vr: bool
) -> int:
    """Copy the pixel data element(s) as they are; de-identify what follows them."""
    endian = "<" if little_endian else ">"
    written = 0
    while True:
        start = src.tell()
        head = src.read(8)
        if len(head) < 8:
            if head:
                raise DeidentificationError("file ends inside an element header")
            return written
        group, element = struct.unpack(endian + "HH", head[:4])
        if (group << 16 | element) not in PIXEL_TAGS:
            src.seek(start)
            return written + _rest(src, dst, deid, little_endian, implicit_vr)
        if implicit_vr:
            (length,) = struct.unpack(endian + "I", head[4:8])
        elif head[4:6] in LONG_VRS:
            extra = src.read(4)
            head += extra
            (length,) = struct.unpack(endian + "I", extra)
        else:
            (length,) = struct.unpack(endian + "H", head[6:8])
        written += _write(dst, head)
        if length != UNDEFINED:
            written += _copy(src, dst, length)
            continue
        while True:  # encapsulated: items until the sequence delimiter (PS3.5 A.4)
            item = src.read(8)
            if len(item) < 8:
                raise DeidentificationError("file ends inside encapsulated pixel data")
            group, element, item_length = struct.unpack(endian + "HHI", item)
            written += _write(dst, item)
            if (group << 16 | element) == SEQUENCE_DELIMITER:
                break
            written += _copy(src, dst, item_length)


def _rest(src: BinaryIO, dst: BinaryIO, deid: Deidentifier, little_endian: bool,
          implicit_vr: bool) -> int:
    trailing = read_dataset(BytesIO(src.read()), implicit_vr, little_endian)
    deid.clean_dataset(trailing)
    if not len(trailing):
        return 0
    out = DicomBytesIO()
    out.is_little_endian = little_endian
    out.is_implicit_VR = implicit_vr
    write_dataset(out, trailing)
    return _write(dst, out.getvalue())
