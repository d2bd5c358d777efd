"""The options of the Basic Application Level Confidentiality Profile (PS3.15 E.3).

Each option has its column in Table E.1-1 and its code in CID 7050
(PS3.16), recorded in De-identification Method Code Sequence (0012,0064).
"""

from __future__ import annotations

from enum import StrEnum


class Option(StrEnum):
    SAFE_PRIVATE = "retain-safe-private"  # E.3.10
    UIDS = "retain-uids"  # E.3.9
    DEVICE = "retain-device-identity"  # E.3.8
    INSTITUTION = "retain-institution-identity"  # E.3.11
    PATIENT_CHARS = "retain-patient-characteristics"  # E.3.7
    FULL_DATES = "retain-full-dates"  # E.3.6
    MODIFIED_DATES = "retain-modified-dates"  # E.3.6
    DESCRIPTORS = "clean-descriptors"  # E.3.5
    STRUCTURED = "clean-structured-content"  # E.3.4
    GRAPHICS = "clean-graphics"  # E.3.3


# Column constants used by the generated table (hilum/deid/table_e11.py).
SAFE_PRIVATE = Option.SAFE_PRIVATE.value
UIDS = Option.UIDS.value
DEVICE = Option.DEVICE.value
INSTITUTION = Option.INSTITUTION.value
PATIENT_CHARS = Option.PATIENT_CHARS.value
FULL_DATES = Option.FULL_DATES.value
MODIFIED_DATES = Option.MODIFIED_DATES.value
DESCRIPTORS = Option.DESCRIPTORS.value
STRUCTURED = Option.STRUCTURED.value
GRAPHICS = Option.GRAPHICS.value

# CID 7050 "De-identification Method" (coding scheme DCM).
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
OPTION_CODES: dict[Option, tuple[str, str]] = {
    Option.GRAPHICS: ("113103", "Clean Graphics Option"),
    Option.STRUCTURED: ("113104", "Clean Structured Content Option"),
    Option.DESCRIPTORS: ("113105", "Clean Descriptors Option"),
    Option.FULL_DATES: ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    Option.MODIFIED_DATES: (
        "113107", "Retain Longitudinal Temporal Information Modified Dates Option"
    ),
    Option.PATIENT_CHARS: ("113108", "Retain Patient Characteristics Option"),
    Option.DEVICE: ("113109", "Retain Device Identity Option"),
    Option.UIDS: ("113110", "Retain UIDs Option"),
    Option.SAFE_PRIVATE: ("113111", "Retain Safe Private Option"),
    Option.INSTITUTION: ("113112", "Retain Institution Identity Option"),
}


def parse_options(values: list[str]) -> frozenset[Option]:
    """Option names as given on the command line -> options; ValueError if unknown/conflicting."""
    chosen: set[Option] = set()
    for raw in values:
        for name in raw.split(","):
            name = name.strip().lower()
            if not name:
                continue
            try:
                chosen.add(Option(name))
            except ValueError:
                known = ", ".join(o.value for o in Option)
                raise ValueError(f"unknown profile option {name!r} (known: {known})") from None
    check_options(chosen)
    return frozenset(chosen)


def check_options(options: set[Option] | frozenset[Option]) -> None:
    if Option.FULL_DATES in options and Option.MODIFIED_DATES in options:
        raise ValueError(
            "retain-full-dates and retain-modified-dates exclude each other (PS3.15 E.3.6)"
        )
