"""The DICOM JSON model (PS3.18 F.2) of an instance, prepared once at ingest.

WADO-RS metadata is then served from the index without opening stored files.
The header is the one :func:`hilum.dicom.parsing.read_header` parsed: large
values were deferred (never read), and they become ``BulkDataURI`` entries
pointing at the instance's ``/bulkdata/{tag}`` resource. The base URL of
the server is not known at ingest, so the URIs are stored with the
:data:`BASE_PLACEHOLDER` prefix and completed when served.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import zlib
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

BASE_PLACEHOLDER = "@@HILUM_BASE@@"
_BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
# PS3.18 F.2.2: the only VRs a BulkDataURI may stand for. Large values of any other
# VR (a long SQ such as an SR's Content Sequence, UI, PN, ...) are given inline.
_BULK_URI_VRS = _BULK_VRS | {
    "DS", "FL", "FD", "IS", "LT", "SL", "SS", "ST", "SV", "UC", "UL", "US", "UT", "UV"
}
# Binary values above this size are referenced, not inlined (PS3.18 F.2.7).
BULK_THRESHOLD = 1024
_NESTED_INLINE = 1 << 30  # bulk data inside sequences stays inline (no nested bulk URIs)


def instance_path(study_uid: str, series_uid: str, sop_uid: str) -> str:
    return f"/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"


def bulkdata_uri(study_uid: str, series_uid: str, sop_uid: str, tag: int) -> str:
    return f"{BASE_PLACEHOLDER}{instance_path(study_uid, series_uid, sop_uid)}/bulkdata/{tag:08X}"


def _vr_of(raw: RawDataElement) -> str:
    if raw.VR:
        return str(raw.VR)
    try:
        vr = str(dictionary_VR(raw.tag))
    except KeyError:
        return "UN"
    if " or " in vr:
        # Implicit VR: "OB or OW" values (Pixel Data, ...) are OW (PS3.5 A.1), so large
        # ones become bulk data like any other; "US or SS" takes the first.
        options = vr.split(" or ")
        return "OW" if "OW" in options else options[0]
    return vr


def instance_json(ds: Dataset, study_uid: str, series_uid: str, sop_uid: str) -> dict[str, Any]:
    """The DICOM JSON object of ``ds`` (file meta excluded), large values as BulkDataURIs."""
    out: dict[str, Any] = {}
    fast = _fast_encoding(ds)
    for tag, element in ds._dict.items():
        tag = BaseTag(tag)
        if tag.group == 0x0002 or tag.element == 0x0000:
            continue  # file meta and group lengths are not part of the model
        key = f"{tag:08X}"
        if isinstance(element, RawDataElement):
            vr = _vr_of(element)
            deferred = element.value is None and element.length not in (0,)
            large_binary = vr in _BULK_VRS and element.length > BULK_THRESHOLD
            if (deferred or large_binary) and vr in _BULK_URI_VRS:
                out[key] = {"vr": vr, "BulkDataURI": bulkdata_uri(study_uid, series_uid, sop_uid, tag)}
                continue
            if fast is not None and element.value is not None and element.VR and " or " not in element.VR:
                quick = _fast_json(vr, element.value, fast)
                if quick is not None:
                    out[key] = quick
                    continue
        elif fast is not None and isinstance(element, DataElement) and element.VR in _FAST_VRS:
            quick = _fast_value_json(element.VR, element.value)
            if quick is not None:
                out[key] = quick
                continue
        out[key] = _element_json(ds, tag, element)
    return out


def _fast_value_json(vr: str, value: Any) -> dict[str, Any] | None:
    """The same fast path for an element pydicom already converted (values are Python objects)."""
    if value is None or value == "" or (isinstance(value, list | MultiValue) and len(value) == 0):
        return {"vr": vr}
    values = list(value) if isinstance(value, list | MultiValue) else [value]
    try:
        if vr == "PN":
            return {"vr": vr, "Value": [person_name_json(str(v)) for v in values]}
        if vr == "IS":
            return {"vr": vr, "Value": [int(v) if v != "" and v is not None else None for v in values]}
        if vr == "DS":
            numbers = [_ds_number(str(v)) if v != "" and v is not None else None for v in values]
            return {"vr": vr, "Value": numbers}
        if vr in _BINARY_NUMBERS:
            if not all(isinstance(v, int | float) for v in values):
                return None
            return {"vr": vr, "Value": values}
        if not all(isinstance(v, str) for v in values):
            return None
        return {"vr": vr, "Value": values}
    except ValueError:
        return None


# -- a fast path for the common case --------------------------------------------------------
# pydicom's DataElement.to_json_dict costs ~20 us per element; most elements of an image
# header are plain text or little-endian numbers, converted here straight from their bytes.
# Anything unusual (sequences, AT, binary, big endian, ISO 2022 character sets, a value that
# does not parse) goes the pydicom way.
_SIMPLE_CHARSETS = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}
_MULTI_TEXT = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "SH", "TM", "UC", "UI"})
_SINGLE_TEXT = frozenset({"LT", "ST", "UT", "UR"})
_BINARY_NUMBERS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
_FAST_VRS = _MULTI_TEXT | _SINGLE_TEXT | {"IS", "DS", "PN"} | set(_BINARY_NUMBERS)


def _fast_encoding(ds: Dataset) -> str | None:
    meta = getattr(ds, "file_meta", None)
    if meta is not None and str(meta.get("TransferSyntaxUID", "")) == "1.2.840.10008.1.2.2":
        return None  # big endian: numbers need swapping
    element = ds._dict.get(BaseTag(0x00080005))
    if element is None:
        return "latin-1"
    value = element.value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, list | MultiValue):
        if len(value) > 1:
            return None  # ISO 2022 code extensions
        value = value[0] if value else ""
    if not isinstance(value, str):
        return None
    return _SIMPLE_CHARSETS.get(value.strip(" \x00"))


def _fast_json(vr: str, value: bytes, encoding: str) -> dict[str, Any] | None:
    if vr not in _FAST_VRS:
        return None
    try:
        if not value:
            return {"vr": vr}
        if vr in _MULTI_TEXT or vr in ("IS", "DS", "PN"):
            text = value.decode(encoding)
            if vr == "UI":
                text = text.rstrip("\x00")
            parts = [p.strip(" \x00") for p in text.split("\\")]
            if vr in ("DA", "TM", "DT", "UI") and "" in parts and len(parts) == 1:
                return {"vr": vr}
            if vr == "IS":
                numbers: list[Any] = [int(p) if p else None for p in parts]
                return {"vr": vr, "Value": numbers}
            if vr == "DS":
                numbers = [_ds_number(p) if p else None for p in parts]
                return {"vr": vr, "Value": numbers}
            if vr == "PN":
                return {"vr": vr, "Value": [person_name_json(p) for p in parts]}
            if parts == [""]:
                return {"vr": vr}
            return {"vr": vr, "Value": parts}
        if vr in _SINGLE_TEXT:
            text = value.decode(encoding).rstrip(" \x00")
            return {"vr": vr, "Value": [text]} if text else {"vr": vr}
        code = _BINARY_NUMBERS.get(vr)
        if code is not None:
            size = struct.calcsize(code)
            if len(value) % size:
                return None
            return {"vr": vr, "Value": list(struct.unpack(f"<{len(value) // size}{code}", value))}
    except (UnicodeDecodeError, ValueError):
        return None
    return None


def _ds_number(text: str) -> int | float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(text)
    return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number


def person_name_json(text: str) -> dict[str, str] | None:
    """A PN value in the DICOM JSON model (PS3.18 F.2.2): its component groups by name."""
    if not text:
        return None
    groups = text.split("=")
    out = {}
    for name, group in zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False):
        if group:
            out[name] = group
    return out


def _element_json(ds: Dataset, tag: BaseTag, element: Any) -> dict[str, Any]:
    try:
        converted: DataElement = ds[tag]
        return converted.to_json_dict(None, _NESTED_INLINE)
    except Exception:
        # A malformed value (e.g. a bad DS string): keep its bytes rather than drop it.
        raw = element.value if isinstance(element, RawDataElement) else None
        if isinstance(raw, bytes) and raw:
            return {"vr": "UN", "InlineBinary": base64.b64encode(raw).decode("ascii")}
        vr = _vr_of(element) if isinstance(element, RawDataElement) else getattr(element, "VR", "UN")
        return {"vr": vr}


def pack(model: dict[str, Any]) -> bytes:
    """Compact, compressed form kept in the index (about a tenth of the text)."""
    text = json.dumps(model, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return zlib.compress(text, 1)


def unpack(blob: bytes) -> bytes:
    """The JSON text of a packed model, with bulk data URIs still relative."""
    return zlib.decompress(blob)


def with_base(text: bytes, base_url: str) -> bytes:
    """Complete the stored bulk data URIs with the server's DICOMweb base URL."""
    return text.replace(BASE_PLACEHOLDER.encode(), base_url.rstrip("/").encode())
