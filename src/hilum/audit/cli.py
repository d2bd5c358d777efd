"""`hilum audit verify|list`: check the hash chain, search the records."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from hilum.domain.errors import HilumError

if TYPE_CHECKING:
    from rich.console import Console

    from hilum.config import Settings


def add_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    audit = sub.add_parser("audit", help="the audit trail: verify the hash chain, list records")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser(
        "verify", help="walk the hash chain; exit 1 naming the first removed or edited record"
    )
    common(verify)
    listing = audit_sub.add_parser("list", help="list audit records, newest first")
    common(listing)
    listing.add_argument("--since", type=_when, help="at or after (ISO 8601 date or time; UTC if no zone)")
    listing.add_argument("--until", type=_when, help="before")
    listing.add_argument("--user", help="the requestor's UserID (user name, AE title or IP)")
    listing.add_argument("--patient-id", help="records naming this PatientID")
    listing.add_argument("--study", help="records naming this Study Instance UID")
    listing.add_argument("--event", help="EventID code or meaning (e.g. Query, 110104), or an event type")
    listing.add_argument("--outcome", type=int, choices=[0, 4, 8, 12], help="EventOutcomeIndicator")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--oldest-first", action="store_true")
    listing.add_argument("--xml", action="store_true", help="print each record's audit message (XML)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")


def _when(text: str) -> datetime:
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 date or date-time") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def run(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from hilum.app import prepare
    from hilum.audit import store
    from hilum.audit.service import AuditService, os_user
    from hilum.index.database import make_engine

    prepare(settings)
    engine = make_engine(settings.index_url, pool_size=1)
    audit = AuditService(settings, engine)
    user = os_user()
    try:
        if args.audit_command == "verify":
            result = store.verify(engine)
            audit.audit_log_used(user=user, ip=audit.hostname, what="verify (command line)")
            if result.ok:
                console.print(
                    f"audit trail intact: {result.records} record(s); head seq {result.head_seq} "
                    f"hash {result.head_hash}", markup=False, highlight=False,
                )
                return 0
            from hilum.audit import builders, codes
            from hilum.audit.service import AUDIT_LOG_URI

            audit.security_alert(
                codes.OBJECT_SECURITY_ATTRIBUTES_CHANGED, user=user, ip=audit.hostname,
                subject=builders.resource_subject(AUDIT_LOG_URI), outcome=codes.SERIOUS_FAILURE,
                detail=f"audit trail verification failed: {result.problem}",
            )
            console.print(
                f"audit trail BROKEN at seq {result.problem_seq}: {result.problem}\n"
                f"{result.records} record(s) before it are intact (last: seq {result.head_seq}, "
                f"hash {result.head_hash})", markup=False, highlight=False,
            )
            return 1
        if args.limit < 1:
            raise HilumError("--limit must be at least 1")
        where = store.AuditFilter(
            since=args.since, until=args.until, user=args.user, patient_id=args.patient_id,
            study=args.study, event=args.event, outcome=args.outcome,
        )
        rows = store.search(engine, where, limit=args.limit, newest_first=not args.oldest_first)
        audit.audit_log_used(user=user, ip=audit.hostname, what="list (command line)")
        _print(rows, args, console)
        return 0
    finally:
        audit.close()
        engine.dispose()


def _print(rows: list[dict[str, Any]], args: argparse.Namespace, console: Console) -> None:
    from rich.table import Table

    from hilum.audit.store import members

    if args.json:
        for row in rows:
            record = {**row, "at": row["at"].isoformat(), "event_type": members(row["event_type"]),
                      "patient_ids": members(row["patient_ids"]), "study_uids": members(row["study_uids"])}
            if not args.xml:
                record.pop("xml")
            console.print(json.dumps(record), markup=False, highlight=False, soft_wrap=True)
        return
    if args.xml:
        for row in rows:
            console.print(f"# seq {row['seq']}", markup=False, highlight=False)
            console.print(row["xml"], markup=False, highlight=False, soft_wrap=True)
        return
    table = Table(
        "seq", "at (UTC)", "event", "type", "action", "outcome", "user", "from", "patients", "studies"
    )
    for row in rows:
        table.add_row(
            str(row["seq"]), row["at"].strftime("%Y-%m-%d %H:%M:%S"), row["event"],
            ", ".join(members(row["event_type"])), row["action"], str(row["outcome"]), row["user_id"],
            row["source_ip"], ", ".join(members(row["patient_ids"])), ", ".join(members(row["study_uids"])),
        )
    console.print(table)
    console.print(f"{len(rows)} record(s)")
