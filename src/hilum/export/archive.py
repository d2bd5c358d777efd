"""A study or series as a streamed zip: a DICOM File-set (PS3.10 8) with its DICOMDIR.

The zip is produced by a generator, member by member, in chunks of 1 MiB:
nothing is built in memory or on disk but the DICOMDIR (a few hundred bytes
per instance). Members are stored (ZIP_STORED: pixel data rarely compresses
and the client gets the files byte for byte) with data descriptors, since the
sink cannot seek, and in ZIP64 form when a member is larger than 4 GiB.

Each stored file is read once: its header (up to the pixel data) gives the
directory records, then the whole file is copied under its File ID
(``PT000000/ST000000/SE000000/IM000000``). The DICOMDIR is the last member,
so the download starts at once and an instance deleted meanwhile is simply
left out of both.

The directory records are pydicom's (``pydicom.fileset.DIRECTORY_RECORDERS``),
but the DICOMDIR is encoded here: ``FileSet.add`` is quadratic in the number
of instances (tens of seconds for a few thousand) and stages a copy of every
instance on disk.
"""

from __future__ import annotations

import itertools
import logging
import struct
import time
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.fileset import (
    _PREFIXES,
    DIRECTORY_RECORDERS,
    _four_level_record_type,
    _single_level_record_type,
)
from pydicom.filewriter import write_dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, MediaStorageDirectoryStorage, generate_uid

from hilum.dicom.filemeta import IMPLEMENTATION_CLASS_UID, file_meta_bytes
from hilum.index.search import StoredInstance
from hilum.storage.base import ObjectNotFound, StorageArea

LOG = logging.getLogger(__name__)

CHUNK = 1 << 20
DICOMDIR = "DICOMDIR"
# Type 1 keys of the directory records (PS3.3 F.5) that real instances often leave
# empty: invented for the record only (never in the file), as dcmmkdir --invent does.
_REQUIRED = {
    "PATIENT": ("PatientID",),
    "STUDY": ("StudyDate", "StudyTime", "StudyID"),
    "SERIES": ("Modality", "SeriesNumber"),
    "LEAF": ("InstanceNumber",),
}
_INVENTED = {"PatientID": "UNKNOWN", "StudyDate": "19000101", "StudyTime": "000000", "Modality": "OT"}
_MAX_INDEX = 10**6  # File ID components are 8 characters: 2-letter prefix + 6 digits


@dataclass(eq=False)
class _Node:
    """A directory record: its encoding without the three offset elements, and its children."""

    body: bytes
    component: str
    children: list[_Node] = field(default_factory=list)
    by_key: dict[str, _Node] = field(default_factory=dict)
    offset: int = 0


class DicomdirBuilder:
    """Collects directory records instance by instance; :meth:`encode` writes the DICOMDIR."""

    def __init__(self) -> None:
        self._roots: list[_Node] = []
        self._patients: dict[str, _Node] = {}
        self.count = 0

    def add(self, header: Dataset, instance: StoredInstance) -> str:
        """Record one instance; return its File ID as a zip path ("PT000000/.../IM000000")."""
        self.count += 1
        single = _single_level_record_type(header)
        if single != "PATIENT":  # PALETTE, IMPLANT, ...: a leaf at the root
            return self._leaf(header, instance, single, self._roots, [])
        patient = self._child(self._roots, self._patients, header, "PATIENT", "PatientID")
        study = self._child(patient.children, patient.by_key, header, "STUDY", "StudyInstanceUID")
        series = self._child(study.children, study.by_key, header, "SERIES", "SeriesInstanceUID")
        path = [patient.component, study.component, series.component]
        return self._leaf(header, instance, _four_level_record_type(header), series.children, path)

    def _child(
        self, siblings: list[_Node], by_key: dict[str, _Node], header: Dataset, kind: str, key: str
    ) -> _Node:
        _invent(header, (key,), len(siblings) + 1)
        value = str(header.get(key))
        node = by_key.get(value)
        if node is None:
            _invent(header, _REQUIRED[kind], len(siblings) + 1)
            node = by_key[value] = self._node(DIRECTORY_RECORDERS[kind](header), kind, header, siblings)
        return node

    def _leaf(
        self, header: Dataset, instance: StoredInstance, kind: str, siblings: list[_Node], path: list[str]
    ) -> str:
        _invent(header, _REQUIRED["LEAF"], len(siblings) + 1)
        try:
            record = DIRECTORY_RECORDERS[kind](header)
        except (ValueError, KeyError, AttributeError) as exc:
            # PS3.3 F.5: a PRIVATE record still references the file.
            LOG.warning("DICOMDIR: %s gets a PRIVATE record (%s)", instance.sop_instance_uid, exc)
            kind, record = "PRIVATE", Dataset()
            record.PrivateRecordUID = IMPLEMENTATION_CLASS_UID
        component = _component(kind, len(siblings))
        # PS3.10 8.2: the File ID is the path below the DICOMDIR, one value per directory level.
        record.ReferencedFileID = [*path, component]
        record.ReferencedSOPClassUIDInFile = instance.sop_class_uid
        record.ReferencedSOPInstanceUIDInFile = instance.sop_instance_uid
        record.ReferencedTransferSyntaxUIDInFile = instance.transfer_syntax_uid
        self._node(record, kind, header, siblings)
        return "/".join(record.ReferencedFileID)

    def _node(self, record: Dataset, kind: str, header: Dataset, siblings: list[_Node]) -> _Node:
        record.DirectoryRecordType = kind
        if "SpecificCharacterSet" in header:
            record.SpecificCharacterSet = header.SpecificCharacterSet
        node = _Node(body=_encode(record), component=_component(kind, len(siblings)))
        siblings.append(node)
        return node

    def encode(self) -> bytes:
        """The DICOMDIR file (PS3.3 F.3 Basic Directory IOD), explicit VR little endian."""
        meta = file_meta_bytes(MediaStorageDirectoryStorage, generate_uid(), ExplicitVRLittleEndian)
        order = list(_preorder(self._roots))
        # (0004,1130) File-set ID (empty), (0004,1200), (0004,1202), (0004,1212), the sequence
        head_length = 8 + 12 + 12 + 10 + 12
        # Offsets count from the first byte of the file (PS3.3 F.3.2.1).
        position = len(meta) + head_length
        for node in order:
            node.offset = position
            position += 8 + _FIXED + len(node.body)
        following: dict[int, int] = {}
        for siblings in _sibling_lists(self._roots):
            for before, after in itertools.pairwise(siblings):
                following[id(before)] = after.offset
        first = self._roots[0].offset if self._roots else 0
        last = self._roots[-1].offset if self._roots else 0
        parts = [
            meta,
            struct.pack("<HH2sH", 0x0004, 0x1130, b"CS", 0),
            struct.pack("<HH2sHI", 0x0004, 0x1200, b"UL", 4, first),
            struct.pack("<HH2sHI", 0x0004, 0x1202, b"UL", 4, last),
            struct.pack("<HH2sHH", 0x0004, 0x1212, b"US", 2, 0),
            struct.pack("<HH2sHI", 0x0004, 0x1220, b"SQ", 0, position - len(meta) - head_length),
        ]
        for node in order:
            lower = node.children[0].offset if node.children else 0
            parts.append(struct.pack("<HHI", 0xFFFE, 0xE000, _FIXED + len(node.body)))
            parts.append(_offsets(following.get(id(node), 0), lower))
            parts.append(node.body)
        return b"".join(parts)


def _invent(header: Dataset, keywords: Iterable[str], number: int) -> None:
    for keyword in keywords:
        if keyword not in header or header[keyword].VM == 0:
            setattr(header, keyword, _INVENTED.get(keyword, str(number)))


def _component(kind: str, index: int) -> str:
    if index >= _MAX_INDEX:
        raise ValueError(f"more than {_MAX_INDEX} {kind} records in one directory")
    return f"{(_PREFIXES.get(kind, 'IM') + 'X')[:2]}{index:06d}"


# (0004,1400) UL, (0004,1410) US, (0004,1420) UL: the first elements of every record.
_FIXED = 12 + 10 + 12


def _offsets(following: int, lower: int) -> bytes:
    return (
        struct.pack("<HH2sHI", 0x0004, 0x1400, b"UL", 4, following)
        + struct.pack("<HH2sHH", 0x0004, 0x1410, b"US", 2, 0xFFFF)
        + struct.pack("<HH2sHI", 0x0004, 0x1420, b"UL", 4, lower)
    )


def _encode(record: Dataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_dataset(buffer, record)
    return buffer.getvalue()


def _preorder(nodes: list[_Node]) -> Iterator[_Node]:
    for node in nodes:
        yield node
        yield from _preorder(node.children)


def _sibling_lists(nodes: list[_Node]) -> Iterator[list[_Node]]:
    yield nodes
    for node in nodes:
        yield from _sibling_lists(node.children)


class _Sink:
    """A write-only, non-seekable file for zipfile; the generator drains it."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def drain(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def _header(handle: BinaryIO, instance: StoredInstance) -> Dataset:
    header: Dataset
    try:
        header = dcmread(handle, stop_before_pixels=True)
    except Exception as exc:  # indexed once, so unlikely; still export the file
        LOG.warning("DICOMDIR: cannot read the header of %s: %s", instance.sop_instance_uid, exc)
        header = Dataset()
        header.StudyInstanceUID = instance.study_instance_uid
        header.SeriesInstanceUID = instance.series_instance_uid
        header.SOPClassUID = instance.sop_class_uid
        header.SOPInstanceUID = instance.sop_instance_uid
    if not hasattr(header, "file_meta"):
        header.file_meta = FileMetaDataset()
    header.file_meta.TransferSyntaxUID = UID(instance.transfer_syntax_uid)
    return header


def stream_archive(
    storage: StorageArea, instances: Iterable[StoredInstance], *, chunk_size: int = CHUNK
) -> Iterator[bytes]:
    """Yield a zip of ``instances`` (as stored, under File IDs) and their DICOMDIR."""
    sink = _Sink()
    builder = DicomdirBuilder()
    stamp = time.localtime()[:6]
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:  # type: ignore[call-overload]
        for instance in instances:
            try:
                handle = storage.open(instance.storage_key)
            except ObjectNotFound:
                LOG.info("archive: %s was deleted meanwhile; left out", instance.sop_instance_uid)
                continue
            with handle:
                header = _header(handle, instance)
                handle.seek(0, 2)
                size = handle.tell()
                handle.seek(0)
                info = _info(builder.add(header, instance), stamp, size)
                del header
                with archive.open(info, "w") as member:
                    while chunk := handle.read(chunk_size):
                        member.write(chunk)
                        yield sink.drain()
            yield sink.drain()
        dicomdir = builder.encode()
        with archive.open(_info(DICOMDIR, stamp, len(dicomdir)), "w") as member:
            member.write(dicomdir)
    yield sink.drain()


def _info(name: str, stamp: tuple[int, ...], size: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=stamp)  # type: ignore[arg-type]
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    # Declared up front so zipfile writes ZIP64 headers for members over 4 GiB.
    info.file_size = size
    return info
