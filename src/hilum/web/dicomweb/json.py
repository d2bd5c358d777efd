"""DICOM JSON model (PS3.18 F.2) for values taken from the index."""

from __future__ import annotations

from typing import Any

from hilum.dicom.jsonmodel import person_name_json

DICOM_JSON = "application/dicom+json"
_NUMBER_VRS = frozenset({"IS", "US", "UL", "SS", "SL", "FL", "FD", "DS", "SV", "UV"})


def element(vr: str, value: Any) -> dict[str, Any]:
    """One attribute: ``{"vr": vr, "Value": [...]}``, or just the VR when empty."""
    if value is None or value == "" or value == []:
        return {"vr": vr}
    values = value if isinstance(value, list | tuple) else _split(vr, value)
    if vr == "PN":
        return {"vr": vr, "Value": [person_name_json(str(v)) or {} for v in values]}
    if vr in _NUMBER_VRS:
        return {"vr": vr, "Value": [_number(vr, v) for v in values]}
    return {"vr": vr, "Value": [str(v) for v in values]}


def _split(vr: str, value: Any) -> list[Any]:
    if isinstance(value, str) and "\\" in value and vr not in ("LT", "ST", "UT", "UR"):
        return value.split("\\")
    return [value]


def _number(vr: str, value: Any) -> int | float | str:
    if isinstance(value, int | float):
        return value
    text = str(value).strip()
    try:
        return float(text) if vr in ("DS", "FL", "FD") else int(text)
    except ValueError:
        return text
