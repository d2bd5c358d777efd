"""One de-identification job: its options and the state every instance of it shares.

A job holds a random secret (unless given one), from which every replacement
UID and pseudonym is derived, so within a job the same original always gets
the same replacement (PS3.15 E.1.1: "internally consistent within a set of
Instances") and nothing can be derived back without the secret. The mapping
kept for ``--mapping`` is the only link back.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import os
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from hilum.deid.options import Option, check_options
from hilum.domain.errors import HilumError

DEFAULT_PSEUDONYM = "ANON-{hash}"
# Without --date-shift-days, Modified Dates shifts by a secret 1 to 10 years back.
RANDOM_SHIFT_RANGE = (365, 3650)


class DeidentificationError(HilumError):
    """An instance (or a job) cannot be de-identified as asked."""


class BurnedInAnnotationRefused(DeidentificationError):
    """The instance says it has burned-in annotation (0028,0301) = YES."""


@dataclass(frozen=True)
class DeidConfig:
    options: frozenset[Option] = frozenset()
    # Retain Longitudinal Temporal Information with Modified Dates: days to add
    # (negative = earlier). None: a random offset per job. Implies MODIFIED_DATES.
    date_shift_days: int | None = None
    # PatientName/PatientID of the output; "{n}" = 1, 2, ... per distinct patient,
    # "{hash}" = a keyed hash of the original patient.
    pseudonym: str | None = None
    # Keep instances with BurnedInAnnotation = YES (they are flagged, not refused).
    allow_burned_in: bool = False
    # Retain Safe Private: (private creator, group, element byte) known to be safe.
    safe_private: frozenset[tuple[str, int, int]] = frozenset()
    secret: bytes | None = None

    def normalized(self) -> DeidConfig:
        options = set(self.options)
        if self.date_shift_days is not None:
            if Option.FULL_DATES in options:
                raise DeidentificationError(
                    "--date-shift-days cannot be combined with retain-full-dates"
                )
            options.add(Option.MODIFIED_DATES)
        try:
            check_options(options)
        except ValueError as exc:
            raise DeidentificationError(str(exc)) from None
        return DeidConfig(
            options=frozenset(options), date_shift_days=self.date_shift_days,
            pseudonym=self.pseudonym, allow_burned_in=self.allow_burned_in,
            safe_private=self.safe_private, secret=self.secret,
        )


@dataclass
class DeidJob:
    config: DeidConfig
    secret: bytes = b""
    date_shift_days: int | None = None
    uids: dict[str, str] = field(default_factory=dict)
    patients: dict[str, str] = field(default_factory=dict)
    patient_names: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, config: DeidConfig | None = None) -> DeidJob:
        config = (config or DeidConfig()).normalized()
        shift = config.date_shift_days
        if shift is None and Option.MODIFIED_DATES in config.options:
            low, high = RANDOM_SHIFT_RANGE
            shift = -(low + secrets.randbelow(high - low + 1))
        job = cls(config=config, secret=config.secret or secrets.token_bytes(32), date_shift_days=shift)
        if config.pseudonym is not None:
            job._check_template(config.pseudonym)
        return job

    @property
    def options(self) -> frozenset[Option]:
        return self.config.options

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self.secret, f"{kind}\x00{value}".encode(), hashlib.sha256).digest()

    def map_uid(self, uid: str) -> str:
        """The replacement of ``uid``: 2.25.<UUID> from a keyed hash (PS3.5 B.2)."""
        uid = uid.strip().rstrip("\x00")
        if not uid:
            return uid
        mapped = self.uids.get(uid)
        if mapped is None:
            value = uuid.UUID(bytes=self._digest("uid", uid)[:16], version=4)
            mapped = self.uids[uid] = f"2.25.{value.int}"
        return mapped

    def output_uid(self, uid: str) -> str:
        """What ``uid`` becomes in this job's output (unchanged with Retain UIDs)."""
        return uid if Option.UIDS in self.options else self.map_uid(uid)

    def _check_template(self, template: str) -> None:
        try:
            template.format(n=1, hash="0")
        except (KeyError, IndexError, ValueError) as exc:
            raise DeidentificationError(
                f"invalid --pseudonym {template!r}: only {{n}} and {{hash}} may be used ({exc})"
            ) from None
        if not template.format(n=1, hash="0").strip():
            raise DeidentificationError("--pseudonym must not be empty")

    def pseudonym(self, patient_id: str, patient_name: str) -> str:
        """The PatientID/PatientName replacing one original patient, the same for all its instances."""
        key = patient_id.strip() or f"name:{patient_name.strip()}"
        found = self.patients.get(key)
        if found is not None:
            return found
        template = self.config.pseudonym or DEFAULT_PSEUDONYM
        n = len(self.patients) + 1
        value = template.format(n=n, hash=self._digest("patient", key).hex()[:12].upper())[:64]
        if value in self.patients.values():
            raise DeidentificationError(
                f"--pseudonym {template!r} gives the same name to two patients: "
                "add {n} or {hash} to it"
            )
        self.patients[key] = value
        self.patient_names[key] = patient_name
        return value

    def mapping_rows(self) -> Iterable[tuple[str, str, str]]:
        for key, pseudonym in self.patients.items():
            if key.startswith("name:"):
                yield ("PatientName", key[5:], pseudonym)
            else:
                yield ("PatientID", key, pseudonym)
                if self.patient_names.get(key):
                    yield ("PatientName", self.patient_names[key], pseudonym)
        if self.date_shift_days is not None:
            yield ("DateShiftDays", "", str(self.date_shift_days))
        for original, replacement in self.uids.items():
            yield ("UID", original, replacement)

    def write_mapping(self, path: Path) -> int:
        """Write the original -> replacement table as CSV (mode 0600); return its row count."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        rows = 0
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["kind", "original", "replacement"])
            for row in self.mapping_rows():
                writer.writerow(row)
                rows += 1
        return rows
