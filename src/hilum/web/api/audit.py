"""The audit trail: search the records, verify the hash chain.

Reading the log is itself audited (Audit Log Used, PS3.15 A.5.3.2); a chain
that fails verification raises a Security Alert. Who may call these is decided
by the one authorization dependency (``audit.read``: auditors and
administrators, see hilum.auth.policy).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from hilum.audit import codes, store
from hilum.audit.builders import resource_subject
from hilum.audit.http import requestor
from hilum.audit.service import AUDIT_LOG_URI
from hilum.web.deps import ServicesDep
from hilum.web.problems import Problem

router = APIRouter()
MAX_LIMIT = 1000


class AuditRecordOut(BaseModel):
    seq: int = Field(description="position in the chain: 1, 2, 3 ... without gaps")
    at: datetime = Field(description="EventDateTime (UTC)")
    event_code: str = Field(description="EventID code (DCM), e.g. 110112")
    event: str = Field(description="EventID meaning, e.g. Query")
    event_types: list[str] = Field(description="EventTypeCode meanings, e.g. Login")
    action: str = Field(description="EventActionCode: C, R, U, D or E")
    outcome: int = Field(description="EventOutcomeIndicator: 0 success, 4 minor, 8 serious, 12 major failure")
    user: str = Field(description="UserID of the requestor (user name, AE title, or IP address)")
    source_ip: str = Field(description="the requestor's network access point")
    patient_ids: list[str]
    study_instance_uids: list[str]
    xml: str = Field(description="the DICOM audit message (PS3.15 A.5)")
    prev_hash: str
    hash: str = Field(description="SHA-256(prev_hash || canonical record bytes)")


class AuditPage(BaseModel):
    records: list[AuditRecordOut]
    limit: int
    offset: int
    more: bool = Field(description="true when more records match after this page")


class Head(BaseModel):
    seq: int
    hash: str


class ChainProblem(BaseModel):
    seq: int | None
    reason: str


class VerifyReport(BaseModel):
    ok: bool
    records: int = Field(description="records checked and found intact")
    head: Head = Field(description="the last intact record: keep it elsewhere to detect truncation")
    problem: ChainProblem | None = Field(description="the first broken, edited or missing record")


def _utc(value: datetime | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise Problem(400, f"{name}: out of range") from None


def _text(value: str | None, name: str) -> str | None:
    if value is not None and "\x00" in value:
        raise Problem(400, f"{name}: invalid character")
    return value


def _out(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "seq": record["seq"],
        "at": record["at"],
        "event_code": record["event_code"],
        "event": record["event"],
        "event_types": store.members(record["event_type"]),
        "action": record["action"],
        "outcome": record["outcome"],
        "user": record["user_id"],
        "source_ip": record["source_ip"],
        "patient_ids": store.members(record["patient_ids"]),
        "study_instance_uids": store.members(record["study_uids"]),
        "xml": record["xml"],
        "prev_hash": record["prev_hash"],
        "hash": record["hash"],
    }


@router.get("/audit", response_model=AuditPage)
def list_audit_records(
    request: Request,
    services: ServicesDep,
    since: datetime | None = Query(None, description="records at or after (ISO 8601; UTC if no zone)"),
    until: datetime | None = Query(None, description="records before"),
    user: str | None = Query(None, max_length=256, description="the requestor's UserID, exactly"),
    patient_id: str | None = Query(None, max_length=256, description="a PatientID the record names"),
    study: str | None = Query(None, max_length=64, description="a Study Instance UID the record names"),
    event: str | None = Query(None, max_length=64,
                              description="EventID code or meaning (Query, 110104 ...), or an event type"),
    outcome: Literal[0, 4, 8, 12] | None = Query(None, description="EventOutcomeIndicator"),
    limit: int = Query(100, ge=1, le=MAX_LIMIT),
    offset: int = Query(0, ge=0, le=2**31),
    order: Literal["desc", "asc"] = Query("desc", description="newest first (desc) or oldest first"),
) -> dict[str, Any]:
    """Audit records matching every given condition."""
    services.audit.flush(timeout=5)  # this process's queued records first
    where = store.AuditFilter(
        since=_utc(since, "since"), until=_utc(until, "until"), user=_text(user, "user"),
        patient_id=_text(patient_id, "patient_id"), study=_text(study, "study"), event=_text(event, "event"),
        outcome=outcome,
    )
    rows = store.search(services.engine, where, limit=limit + 1, offset=offset, newest_first=order == "desc")
    who = requestor(request.scope)
    terms = {k: v for k, v in request.query_params.items()}
    services.audit.audit_log_used(user=who.user_id, ip=who.address, what=f"search {terms}" if terms else "")
    return {"records": [_out(r) for r in rows[:limit]], "limit": limit, "offset": offset,
            "more": len(rows) > limit}


@router.get("/audit/verify", response_model=VerifyReport)
def verify_audit_trail(request: Request, services: ServicesDep) -> dict[str, Any]:
    """Walk the whole hash chain; report the first removed, reordered or edited record."""
    services.audit.flush(timeout=5)
    result = store.verify(services.engine)
    who = requestor(request.scope)
    services.audit.audit_log_used(user=who.user_id, ip=who.address, what="verify")
    if not result.ok:
        services.audit.security_alert(
            codes.OBJECT_SECURITY_ATTRIBUTES_CHANGED, user=who.user_id, ip=who.address,
            subject=resource_subject(AUDIT_LOG_URI), outcome=codes.SERIOUS_FAILURE,
            detail=f"audit trail verification failed: {result.problem}",
        )
    return result.to_json()
