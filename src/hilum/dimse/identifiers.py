"""C-FIND / C-MOVE / C-GET identifiers <-> the shared query model."""

from __future__ import annotations

from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from hilum.domain.attributes import BY_KEYWORD, UNIQUE_KEY, Level
from hilum.domain.errors import InvalidQuery
from hilum.domain.query import Constraint, Query, parse_constraint

PATIENT_ROOT = "PATIENT"
STUDY_ROOT = "STUDY"

_NOT_KEYS = {"QueryRetrieveLevel", "SpecificCharacterSet", "TimezoneOffsetFromUTC"}


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return str(value)


def query_from_identifier(identifier: Dataset, root: str) -> Query:
    """PS3.4 C.4.1.1.3: build the query a C-FIND/C-MOVE/C-GET identifier asks for."""
    level_text = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    try:
        level = Level(level_text)
    except ValueError:
        raise InvalidQuery(f"invalid QueryRetrieveLevel {level_text!r}") from None
    if root == STUDY_ROOT and level is Level.PATIENT:
        raise InvalidQuery("the Study Root model has no PATIENT level")
    constraints: list[Constraint] = []
    keys: list[str] = []
    for element in identifier:
        keyword = element.keyword
        if not keyword or keyword in _NOT_KEYS or element.VR == "SQ":
            continue
        keys.append(keyword)
        attr = BY_KEYWORD.get(keyword)
        if attr is None:
            continue  # not matchable here: returned empty (PS3.4 C.2.2.1.2)
        constraints.append(parse_constraint(keyword, attr.vr, _text(element.value)))
    return Query(level=level, constraints=constraints, return_keys=keys, root=root)


def response_identifier(
    identifier: Dataset, values: dict[str, Any], level: Level, retrieve_aet: str
) -> Dataset:
    """A C-FIND pending response: the request's keys, filled from the hit (PS3.4 C.4.1.1.4)."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level.value
    non_ascii = False
    for element in identifier:
        keyword = element.keyword
        if not keyword or keyword in _NOT_KEYS:
            continue
        attr = BY_KEYWORD.get(keyword)
        if attr is None or attr.level.depth > level.depth:
            ds.add(DataElement(element.tag, element.VR, None))
            continue
        value = values.get(keyword)
        ds.add(_element(element.tag, attr.vr, value))
        if isinstance(value, str) and not value.isascii():
            non_ascii = True
    # Always give the unique keys of this level and above (C.4.1.2.1.4).
    for lvl in Level:
        if lvl.depth <= level.depth and (lvl is not Level.PATIENT or level is Level.PATIENT):
            key = UNIQUE_KEY[lvl]
            if key not in ds and key in values:
                ds.add(_element(BY_KEYWORD[key].tag, BY_KEYWORD[key].vr, values[key]))
    ds.RetrieveAETitle = retrieve_aet
    if "InstanceAvailability" in identifier:
        ds.InstanceAvailability = "ONLINE"
    if non_ascii:
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def _element(tag: int, vr: str, value: Any) -> DataElement:
    if value is None or value == "":
        return DataElement(tag, vr, None)
    if vr in ("IS", "US"):
        return DataElement(tag, vr, int(value) if vr == "US" else str(value))
    if isinstance(value, str) and "\\" in value:
        return DataElement(tag, vr, value.split("\\"))
    return DataElement(tag, vr, value)
