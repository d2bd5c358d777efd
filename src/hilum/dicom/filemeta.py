"""DICOM Part 10 file headers (PS3.10 7.1) built directly as bytes.

Received C-STORE data sets are stored as received; only this header is
Hilum's. Building it by hand avoids a pydicom Dataset round trip per instance
on the hot receive path (the bytes are what pydicom would write; tested).
"""

from __future__ import annotations

import struct

from hilum import __version__

# Hilum's Implementation Class UID (a UUID-derived UID, PS3.5 B.2).
IMPLEMENTATION_CLASS_UID = "2.25.60678443081478312280447108142932170206"
IMPLEMENTATION_VERSION_NAME = f"HILUM_{__version__}"[:16]


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) & 1 else raw


def _text(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b" " if len(raw) & 1 else raw


def file_meta_bytes(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    *,
    source_ae_title: str | None = None,
) -> bytes:
    """Preamble, ``DICM`` and the group 0002 elements, explicit VR little endian."""
    body = b"".join(
        (
            # (0002,0001) File Meta Information Version, OB: 00 01
            struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01",
            _element(0x0002, b"UI", _uid(sop_class_uid)),
            _element(0x0003, b"UI", _uid(sop_instance_uid)),
            _element(0x0010, b"UI", _uid(transfer_syntax_uid)),
            _element(0x0012, b"UI", _uid(IMPLEMENTATION_CLASS_UID)),
            _element(0x0013, b"SH", _text(IMPLEMENTATION_VERSION_NAME)),
            _element(0x0016, b"AE", _text(source_ae_title.strip())) if source_ae_title else b"",
        )
    )
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return b"\x00" * 128 + b"DICM" + group_length + body
