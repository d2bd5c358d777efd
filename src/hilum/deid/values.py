"""Replacement values: dummies consistent with the VR, shifted dates, cleaned text."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date, timedelta

DUMMY_TEXT = "ANONYMIZED"
DUMMY_BY_VR: dict[str, object] = {
    "AE": DUMMY_TEXT, "AS": "000D", "CS": DUMMY_TEXT, "DA": "19000101", "DS": "0",
    "DT": "19000101000000", "IS": "0", "LO": DUMMY_TEXT, "LT": DUMMY_TEXT,
    "PN": DUMMY_TEXT, "SH": DUMMY_TEXT, "ST": DUMMY_TEXT, "TM": "000000",
    "UC": DUMMY_TEXT, "UR": "", "UT": DUMMY_TEXT, "FL": 0.0, "FD": 0.0,
    "SL": 0, "SS": 0, "UL": 0, "US": 0, "SV": 0, "UV": 0, "AT": 0,
    "OB": b"\x00\x00", "OD": b"\x00" * 8, "OF": b"\x00" * 4, "OL": b"\x00" * 4,
    "OV": b"\x00" * 8, "OW": b"\x00\x00", "UN": b"\x00\x00",
}
TEXT_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT", "CS", "AE"})
REDACTED = "***"


def dummy_for(vr: str) -> object:
    return DUMMY_BY_VR.get(vr, DUMMY_TEXT)


def shift_da(value: str, days: int) -> str:
    """Shift a DA value (YYYYMMDD); unreadable values become empty (never kept)."""
    text = value.strip()
    if len(text) == 10 and text[4] == "." and text[7] == ".":  # ACR-NEMA YYYY.MM.DD
        text = text.replace(".", "")
    if len(text) != 8 or not text.isdigit():
        return ""
    try:
        day = date(int(text[:4]), int(text[4:6]), int(text[6:8]))
        return (day + timedelta(days=days)).strftime("%Y%m%d")
    except (ValueError, OverflowError):
        return ""


def shift_dt(value: str, days: int) -> str:
    """Shift the date part of a DT value, keeping its time, fraction and offset."""
    text = value.strip()
    match = re.fullmatch(r"(\d{4})(\d{2})?(\d{2})?([0-9.]*)([+-]\d{4})?", text)
    if match is None:
        return ""
    year, month, day, rest, offset = match.groups()
    try:
        shifted = date(int(year), int(month or 1), int(day or 1)) + timedelta(days=days)
    except (ValueError, OverflowError):
        return ""
    head = shifted.strftime("%Y%m%d")[: 4 + (2 if month else 0) + (2 if day else 0)]
    return head + (rest or "") + (offset or "")


def identifying_strings(values: Iterable[object]) -> list[str]:
    """The strings to redact from cleaned text: whole values and name components."""
    found: set[str] = set()
    for value in values:
        if value is None:
            continue
        items = value if isinstance(value, list | tuple) else [value]
        for item in items:
            text = str(item).strip()
            if len(text) >= 3:
                found.add(text)
            for part in re.split(r"[\^=\s,]+", text):
                if len(part) >= 3:
                    found.add(part)
            if re.fullmatch(r"\d{8}", text):  # a DA: its usual spellings too
                y, m, d = text[:4], text[4:6], text[6:]
                found.update({f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{d}/{m}/{y}", f"{m}/{d}/{y}"})
    # Longest first, so a full name is replaced before its parts.
    return sorted(found, key=len, reverse=True)


def clean_text(text: str, identifiers: list[str]) -> str:
    """Redact every identifying string of the instance from free text (case-insensitive)."""
    for needle in identifiers:
        if needle.lower() in text.lower():
            text = re.sub(re.escape(needle), REDACTED, text, flags=re.IGNORECASE)
    return text
