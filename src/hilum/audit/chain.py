"""The hash chain: hash = SHA-256(prev_hash || canonical record bytes).

The canonical bytes are the JSON of every column but ``hash`` (keys sorted, no
spaces, UTF-8, time as xsd:dateTime in UTC to the millisecond), so they are the
same whichever database returns the row. The first record's prev_hash is 64 zeros.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hilum.audit.messages import format_datetime

GENESIS = "0" * 64
HASHED = (
    "seq", "at", "event_code", "event", "event_type", "action", "outcome", "user_id",
    "source_ip", "patient_ids", "study_uids", "xml", "prev_hash",
)


def canonical_bytes(row: Mapping[str, Any]) -> bytes:
    values: dict[str, Any] = {}
    for key in HASHED:
        value = row[key]
        if isinstance(value, datetime):
            value = format_datetime(value)
        values[key] = value
    return json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def record_hash(row: Mapping[str, Any]) -> str:
    return hashlib.sha256(str(row["prev_hash"]).encode("ascii") + canonical_bytes(row)).hexdigest()


@dataclass(frozen=True, slots=True)
class Verification:
    """The outcome of walking the chain: ``ok``, or the first problem found."""

    ok: bool
    records: int  # records checked
    head_seq: int  # the last good record (0: none)
    head_hash: str
    problem_seq: int | None = None
    problem: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "head": {"seq": self.head_seq, "hash": self.head_hash},
            "problem": None if self.ok else {"seq": self.problem_seq, "reason": self.problem},
        }


def verify_rows(rows: Iterable[Mapping[str, Any]]) -> Verification:
    """Walk rows in seq order; stop at the first removed, reordered or edited record."""
    expected_seq = 1
    prev_hash = GENESIS
    count = 0
    for row in rows:
        seq = int(row["seq"])
        if seq != expected_seq:
            if seq > expected_seq:
                missing = (
                    f"record {expected_seq} is missing" if seq == expected_seq + 1
                    else f"records {expected_seq}-{seq - 1} are missing"
                )
                return _broken(count, expected_seq - 1, prev_hash, expected_seq, f"{missing} (removed)")
            return _broken(count, expected_seq - 1, prev_hash, seq, f"record {seq} is out of order")
        if row["prev_hash"] != prev_hash:
            what = "the first record" if seq == 1 else f"record {seq - 1}"
            return _broken(
                count, seq - 1, prev_hash, seq,
                f"record {seq} does not follow {what} (prev_hash differs: a record before it "
                "was removed or replaced)",
            )
        if record_hash(row) != row["hash"]:
            return _broken(count, seq - 1, prev_hash, seq, f"record {seq} was edited (its hash differs)")
        prev_hash = str(row["hash"])
        count += 1
        expected_seq = seq + 1
    return Verification(ok=True, records=count, head_seq=expected_seq - 1, head_hash=prev_hash)


def _broken(count: int, head_seq: int, head_hash: str, seq: int, reason: str) -> Verification:
    return Verification(
        ok=False, records=count, head_seq=head_seq, head_hash=head_hash, problem_seq=seq, problem=reason
    )
