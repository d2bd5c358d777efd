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
import zlib
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
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
        out[key] = _element_json(ds, tag, element)
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
