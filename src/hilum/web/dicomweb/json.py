"""DICOM JSON model (PS3.18 F.2) for values taken from the index."""

from __future__ import annotations

from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

DICOM_JSON = "application/dicom+json"
_NUMBER_VRS = frozenset({"IS", "US", "UL", "SS", "SL", "FL", "FD", "DS", "SV", "UV"})


def element(vr: str, value: Any) -> dict[str, Any]:
    """One attribute: ``{"vr": vr, "Value": [...]}``, or just the VR when empty."""
    if value is None or value == "" or value == []:
        return {"vr": vr}
    values = value if isinstance(value, list | tuple) else _split(vr, value)
    if vr == "PN":
        return {"vr": vr, "Value": [_person_name(v) for v in values]}
    if vr in _NUMBER_VRS:
        return {"vr": vr, "Value": [_number(vr, v) for v in values]}
    return {"vr": vr, "Value": [str(v) for v in values]}


def _split(vr: str, value: Any) -> list[Any]:
    if isinstance(value, str) and "\\" in value and vr not in ("LT", "ST", "UT", "UR"):
        return value.split("\\")
    return [value]


def _person_name(value: Any) -> dict[str, str]:
    text = str(value)
    groups = text.split("=")
    out = {}
    for name, group in zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False):
        if group:
            out[name] = group
    return out


def _number(vr: str, value: Any) -> int | float | str:
    if isinstance(value, int | float):
        return value
    text = str(value).strip()
    try:
        return float(text) if vr in ("DS", "FL", "FD") else int(text)
    except ValueError:
        return text


def tag_key(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return f"{tag:08X}"


def vr_of(tag: int) -> str:
    try:
        return str(dictionary_VR(tag)).split(" or ")[0]
    except KeyError:
        return "UN"
