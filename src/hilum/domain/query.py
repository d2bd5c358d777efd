"""The one query model shared by C-FIND and QIDO-RS (PS3.4 C.2.2.2, PS3.18 8.3.4).

A :class:`Query` is a level plus :class:`Constraint` objects built from the
text a client sent (an identifier value, a QIDO parameter). Translating it to
SQL is :mod:`hilum.index.search`'s job; nothing here knows about tables.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from hilum.domain.attributes import (
    BY_KEYWORD,
    INTEGER_VRS,
    Level,
    normalize_date,
    normalize_time,
    person_name_key,
)
from hilum.domain.errors import InvalidQuery


class MatchKind(StrEnum):
    UNIVERSAL = "universal"  # C.2.2.2.3: empty value (or a lone "*")
    SINGLE = "single"  # C.2.2.2.1
    WILDCARD = "wildcard"  # C.2.2.2.4: * and ?
    LIST = "list"  # C.2.2.2.2: backslash-separated values (UID list matching)
    RANGE = "range"  # C.2.2.2.5: DA / TM / DT ranges


@dataclass(frozen=True, slots=True)
class Constraint:
    keyword: str
    vr: str
    kind: MatchKind
    values: tuple[str, ...] = ()
    low: str | None = None
    high: str | None = None


@dataclass(slots=True)
class Query:
    level: Level
    constraints: list[Constraint] = field(default_factory=list)
    # Keywords the answer should carry (C-FIND: the identifier's keys).
    return_keys: list[str] = field(default_factory=list)
    limit: int | None = None
    offset: int = 0
    fuzzy_person_names: bool = False
    # PATIENT root has no studies without a patient; STUDY root returns patient keys.
    root: str = "STUDY"
    # Which studies the caller may see: an index-level condition on studies (set by the
    # web layer from the caller's rights; None = all). Opaque to the domain.
    restrict: object | None = None
    # The caller sees only some studies: patient-level counts (NumberOfPatientRelated...)
    # are answered and matched over the studies ``restrict`` lets through, not taken from
    # the stored aggregates (which count every study, hidden ones included).
    count_visible_only: bool = False

    def constrained(self) -> list[Constraint]:
        return [c for c in self.constraints if c.kind is not MatchKind.UNIVERSAL]


_WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT", "AS"})


def parse_constraint(keyword: str, vr: str, raw: str | None) -> Constraint:
    """Turn a matching value as sent by a client into a Constraint."""
    text = (raw or "").strip() if vr != "PN" else (raw or "").strip().rstrip("^=")
    if text == "" or text == "*":
        return Constraint(keyword, vr, MatchKind.UNIVERSAL)
    if vr in ("DA", "TM", "DT") and "-" in text and "\\" not in text:
        return _range(keyword, vr, text)
    if "\\" in text:
        values = tuple(_single_value(keyword, vr, v) for v in text.split("\\") if v != "")
        if not values:
            return Constraint(keyword, vr, MatchKind.UNIVERSAL)
        return Constraint(keyword, vr, MatchKind.LIST, values=values)
    if ("*" in text or "?" in text) and vr in _WILDCARD_VRS:
        return Constraint(keyword, vr, MatchKind.WILDCARD, values=(_fold(vr, text),))
    return Constraint(keyword, vr, MatchKind.SINGLE, values=(_single_value(keyword, vr, text),))


def _fold(vr: str, text: str) -> str:
    return person_name_key(text) if vr == "PN" else text


def _single_value(keyword: str, vr: str, text: str) -> str:
    text = text.strip()
    if vr == "DA":
        value = normalize_date(text)
        if not (len(value) == 8 and value.isdigit()):
            raise InvalidQuery(f"{keyword}: {text!r} is not a date (YYYYMMDD)")
        return value
    if vr == "TM":
        value = normalize_time(text)
        if not value[:6].isdigit():
            raise InvalidQuery(f"{keyword}: {text!r} is not a time (HHMMSS)")
        return value
    if vr in INTEGER_VRS:
        try:
            return str(int(text))
        except ValueError:
            raise InvalidQuery(f"{keyword}: {text!r} is not an integer") from None
    return _fold(vr, text)


def _range(keyword: str, vr: str, text: str) -> Constraint:
    low_text, _, high_text = text.partition("-")
    low = high = None
    if vr == "DA":
        low = _single_value(keyword, vr, low_text) if low_text.strip() else None
        high = _single_value(keyword, vr, high_text) if high_text.strip() else None
    elif vr == "TM":
        low = _single_value(keyword, vr, low_text) if low_text.strip() else None
        high = _time_upper(keyword, high_text) if high_text.strip() else None
    else:  # DT: compare on the text, padded like TM
        low = low_text.strip() or None
        high = (high_text.strip() + "\uffff") if high_text.strip() else None
    if low is None and high is None:
        raise InvalidQuery(f"{keyword}: {text!r} is not a range")
    if low is not None and high is not None and low > high:
        raise InvalidQuery(f"{keyword}: range {text!r} ends before it starts")
    return Constraint(keyword, vr, MatchKind.RANGE, low=low, high=high)


def _time_upper(keyword: str, text: str) -> str:
    """The last instant a partial TM stands for: "10" -> "105959.999999"."""
    value = text.strip().replace(":", "")
    whole, _, fraction = value.partition(".")
    if not whole.isdigit() or len(whole) % 2 or len(whole) > 6:
        raise InvalidQuery(f"{keyword}: {text!r} is not a time (HHMMSS)")
    whole = whole + "5959"[: 6 - len(whole)] if len(whole) < 6 else whole
    return f"{whole}.{fraction.ljust(6, '9')}"


def constraint_for(keyword: str, raw: str | None) -> Constraint:
    """A constraint on an indexed attribute, by keyword; InvalidQuery if unknown."""
    attr = BY_KEYWORD.get(keyword)
    if attr is None:
        raise InvalidQuery(f"{keyword} is not a searchable attribute")
    return parse_constraint(keyword, attr.vr, raw)


def matches(constraint: Constraint, values: list[str]) -> bool:
    """Match values read from a data set (not from an index column) against a constraint.

    Used for attributes the index has no column for; the same semantics as the SQL
    translation: case-insensitive for PN, any value of a multi-valued attribute.
    """
    kind = constraint.kind
    if kind is MatchKind.UNIVERSAL:
        return True
    folded = [_normal(constraint.vr, v) for v in values if v is not None]
    if kind is MatchKind.RANGE:
        low, high = constraint.low, constraint.high
        return any((low is None or v >= low) and (high is None or v <= high) for v in folded if v)
    patterns = constraint.values
    for value in folded:
        for pattern in patterns:
            if kind is MatchKind.WILDCARD or ("*" in pattern or "?" in pattern):
                if _wildcard(pattern).fullmatch(value):
                    return True
            elif value == pattern:
                return True
    return False


def _normal(vr: str, value: str) -> str:
    text = str(value).strip()
    if vr == "PN":
        return person_name_key(text)
    if vr == "DA":
        return normalize_date(text)
    if vr == "TM":
        return normalize_time(text)
    if vr in INTEGER_VRS:
        try:
            return str(int(float(text)))
        except ValueError:
            return text
    return text


def _wildcard(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.S)
