"""AuditService: what the rest of Hilum calls to report an auditable event.

Every method returns at once and never raises: the message is queued, and a
background thread per process writes the queue in batches (at least every
``audit.flush_interval`` seconds, and at shutdown), chains the records, and
hands them to the syslog forwarder. Transfers of many instances (C-STORE,
C-MOVE, WADO-RS frames) are folded into one record per study and party.

A full queue does not block the caller: the message is counted and logged, and
the writer reports the loss in a Security Alert record.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine

from hilum.audit import builders, codes, store
from hilum.audit.builders import Party, Patient
from hilum.audit.codes import Code
from hilum.audit.messages import AuditMessage, AuditSource, ParticipantObject, to_xml, utc_now
from hilum.audit.settings import AuditSettings
from hilum.audit.syslog import SyslogForwarder, format_message
from hilum.domain.events import EventBus, InstanceRejected, InstanceStored

if TYPE_CHECKING:
    from hilum.config import Settings

LOG = logging.getLogger(__name__)
T = TypeVar("T")
Studies = dict[str, Counter[str]]
MakeMessage = Callable[[Studies, int, str], AuditMessage]

# Event types a caller may name by string in security_alert().
ALERT_TYPES: dict[str, Code] = {
    "node-authentication": codes.NODE_AUTHENTICATION,
    "network-configuration": codes.NETWORK_CONFIGURATION,
    "security-configuration": codes.SECURITY_CONFIGURATION,
    "software-configuration": codes.SOFTWARE_CONFIGURATION,
    "restricted-function": codes.USE_OF_RESTRICTED_FUNCTION,
    "user-attributes": codes.USER_SECURITY_ATTRIBUTES_CHANGED,
    "security-roles": codes.SECURITY_ROLES_CHANGED,
    "object-security-attributes": codes.OBJECT_SECURITY_ATTRIBUTES_CHANGED,
    "audit-recording-stopped": codes.AUDIT_RECORDING_STOPPED,
    "audit-recording-started": codes.AUDIT_RECORDING_STARTED,
}
AUDIT_LOG_URI = "hilum:audit_records"


def os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers)
        return str(os.getuid())


def party_from_source(source: str) -> tuple[str, Party]:
    """Ingest's ``source`` -> (protocol, party): ``dimse:AET@host``, ``stow:[user@]ip``, ``import``."""
    protocol, _, rest = source.partition(":")
    if protocol == "import" or not rest:
        return protocol, Party(os_user(), socket.gethostname())
    who, at, address = rest.rpartition("@")
    if not at:
        return protocol, Party(rest, rest)
    return protocol, Party(who, address)


@dataclass(slots=True)
class _Bucket:
    make: MakeMessage
    at: datetime
    first: float
    last: float
    outcome: int = codes.SUCCESS
    detail: str = ""
    count: int = 0
    studies: Studies = field(default_factory=dict)


class AuditService:
    def __init__(self, settings: Settings, engine: Engine, events: EventBus | None = None) -> None:
        self.config: AuditSettings = settings.audit
        self.enabled = self.config.enabled
        self.engine = engine
        self.hostname = socket.gethostname()
        self.ae_title = settings.dicom.ae_title
        self.source = AuditSource(
            self.config.source_id or f"{self.ae_title}@{self.hostname}", self.config.enterprise_site_id
        )
        self.forwarder: SyslogForwarder | None = None
        if self.enabled and self.config.syslog_url:
            self.forwarder = SyslogForwarder(
                self.config.syslog_url,
                ca_file=self.config.syslog_ca_file,
                cert_file=self.config.syslog_cert_file,
                key_file=self.config.syslog_key_file,
                queue_size=self.config.syslog_queue_size,
            )
        self._cond = threading.Condition()
        self._pending: list[AuditMessage] = []
        self._retry: list[AuditMessage] = []
        self._flush_waiters: list[threading.Event] = []
        self._buckets: dict[tuple[Any, ...], _Bucket] = {}
        self._bucket_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.lost = 0  # messages refused because the queue was full
        self._lost_reported = 0
        self.written = 0
        self._write_failures = 0
        if events is not None and self.enabled:
            events.subscribe(InstanceStored, self._on_stored)
            events.subscribe(InstanceRejected, self._on_rejected)

    # -- parties --------------------------------------------------------------------------
    def node(self, user_id: str | None = None) -> Party:
        """Hilum itself: its AE title (or the URL a request invoked), host and process id."""
        return Party(user_id or self.ae_title, self.hostname, alternative_user_id=str(os.getpid()))

    # -- queueing ----------------------------------------------------------------------
    def record(self, message: AuditMessage) -> None:
        """Queue one message for the writer thread."""
        if not self.enabled:
            return
        with self._cond:
            if len(self._pending) >= self.config.queue_size:
                self.lost += 1
                if self.lost == 1 or self.lost % 1000 == 0:
                    LOG.error("audit queue full: %d audit message(s) lost so far", self.lost)
                return
            self._pending.append(message)
            self._ensure_thread()
            if len(self._pending) >= 512:
                self._cond.notify()

    def aggregate(
        self,
        key: tuple[Any, ...],
        make: MakeMessage,
        *,
        study_uid: str = "",
        sop_class_uid: str = "",
        count: int = 1,
        outcome: int = codes.SUCCESS,
        detail: str = "",
    ) -> None:
        """Fold one transfer into the open record for ``key`` (one study, one pair of parties)."""
        if not self.enabled:
            return
        now = time.monotonic()
        with self._bucket_lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(make=make, at=utc_now(), first=now, last=now)
            bucket.last = now
            bucket.count += count
            if study_uid:
                classes = bucket.studies.setdefault(study_uid, Counter())
                if sop_class_uid:
                    classes[sop_class_uid] += count
            if outcome > bucket.outcome:
                bucket.outcome = outcome
            if detail and not bucket.detail:
                bucket.detail = detail
        with self._cond:
            self._ensure_thread()

    def _due_buckets(self, force: bool) -> list[AuditMessage]:
        now = time.monotonic()
        idle, longest = self.config.aggregate_seconds, self.config.max_aggregate_seconds
        due: list[_Bucket] = []
        with self._bucket_lock:
            for key, bucket in list(self._buckets.items()):
                if force or now - bucket.last >= idle or now - bucket.first >= longest:
                    due.append(self._buckets.pop(key))
        messages = []
        for bucket in due:
            detail = bucket.detail
            if detail and bucket.count > 1:
                detail = f"{detail} ({bucket.count} in all)"
            try:
                message = bucket.make(bucket.studies, bucket.outcome, detail)
            except Exception:
                LOG.exception("cannot build an audit message")
                continue
            message.at = bucket.at
            messages.append(message)
        return messages

    def flush(self, timeout: float = 30.0) -> bool:
        """Write everything queued so far (open transfer records too); True when done."""
        if not self.enabled:
            return True
        done = threading.Event()
        with self._cond:
            self._ensure_thread()
            self._flush_waiters.append(done)
            self._cond.notify()
        return done.wait(timeout) and not self._retry

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, stop the writer thread and the syslog forwarder."""
        with self._cond:
            thread = self._thread
            self._stopping = True
            self._cond.notify()
        if thread is not None:
            thread.join(timeout)
        elif self._buckets or self._pending:
            self._write_cycle(force=True)
        if self._retry:
            LOG.error("%d audit record(s) could not be written at shutdown", len(self._retry))
        if self.forwarder is not None:
            self.forwarder.close()

    def _ensure_thread(self) -> None:  # with self._cond held
        if self._thread is None and not self._stopping:
            self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
            self._thread.start()

    # -- the writer thread -------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                if not (self._stopping or self._flush_waiters or len(self._pending) >= 512):
                    self._cond.wait(self._wait_time())
                stopping = self._stopping
                waiters, self._flush_waiters = self._flush_waiters, []
            self._write_cycle(force=stopping or bool(waiters))
            for waiter in waiters:
                waiter.set()
            if stopping:
                return

    def _wait_time(self) -> float:
        interval = self.config.flush_interval
        if self._buckets:
            interval = min(interval, max(0.05, self.config.aggregate_seconds / 2))
        return interval

    def _write_cycle(self, *, force: bool) -> None:
        with self._cond:
            batch, self._pending = self._pending, []
            lost = self.lost - self._lost_reported
            self._lost_reported = self.lost
        batch = self._retry + batch + self._due_buckets(force)
        self._retry = []
        if lost:
            batch.append(self._lost_alert(lost))
        if not batch:
            return
        try:
            self._write(batch)
        except Exception as exc:
            self._write_failures += 1
            if self._write_failures == 1 or self._write_failures % 60 == 0:
                LOG.error("cannot write %d audit record(s), will retry: %s", len(batch), exc)
            self._retry = self._isolate(batch) if self._write_failures >= 3 else batch
        else:
            self._write_failures = 0
            self.written += len(batch)

    def _isolate(self, batch: list[AuditMessage]) -> list[AuditMessage]:
        """After repeated failures, write one record at a time: one that fails while
        others succeed can never be written (it is logged, counted as lost and reported
        by a Security Alert) and must not hold up the rest. If none succeeds the
        database is unavailable: everything is kept for the next attempt."""
        kept: list[AuditMessage] = []
        for message in batch:
            try:
                self._write([message])
            except Exception:
                kept.append(message)
            else:
                self.written += 1
        if kept and len(kept) < len(batch):
            for message in kept:
                LOG.error("audit record cannot be written, dropped: %s %s at %s",
                          message.event_id.meaning, message.requestor, message.at)
            with self._cond:
                self.lost += len(kept)
            return []
        return kept

    def _lost_alert(self, lost: int) -> AuditMessage:
        return builders.security_alert(
            reporter=self.node(), node=self.node(), event_type=codes.AUDIT_RECORDING_STOPPED,
            subject=builders.resource_subject(AUDIT_LOG_URI), outcome=codes.SERIOUS_FAILURE,
            detail=f"{lost} audit message(s) lost: the audit queue of process {os.getpid()} was full",
        )

    def _write(self, batch: list[AuditMessage]) -> None:
        wanted = sorted({uid for m in batch if m.patients_from_index for uid in m.study_uids})
        patients: dict[str, Patient] = {}
        if wanted:
            with self.engine.connect() as conn:
                for start in range(0, len(wanted), 500):
                    patients.update(store.patients_of_studies(conn, wanted[start : start + 500]))
        rows = [self._row(message, patients) for message in batch]
        store.append(self.engine, rows)
        if self.forwarder is not None:
            self.forwarder.submit(
                [
                    format_message(row["xml"], at=row["at"], hostname=self.hostname, sequence_id=row["seq"])
                    for row in rows
                ]
            )

    def _row(self, message: AuditMessage, patients: Mapping[str, Patient]) -> dict[str, Any]:
        if message.patients_from_index:
            known = set(message.patient_ids)
            for uid in message.study_uids:
                patient = patients.get(uid)
                if patient is not None and patient.patient_id not in known:
                    known.add(patient.patient_id)
                    message.objects.append(patient.to_object())
            message.patients_from_index = False
        requestor = message.requestor
        return {
            "at": message.at,
            "event_code": message.event_id.code,
            "event": message.event_id.meaning,
            "event_type": _members(t.meaning for t in message.event_types),
            "action": message.action,
            "outcome": message.outcome,
            "user_id": _text(requestor.user_id) if requestor else "",
            "source_ip": _text(requestor.network_access_point) if requestor else "",
            "patient_ids": _members(pid.split("^^^")[0] for pid in message.patient_ids),
            "study_uids": _members(message.study_uids),
            "xml": to_xml(message, self.source),
        }

    # -- events anyone may report ------------------------------------------------------
    def _safe(self, build: Callable[[], AuditMessage | None]) -> None:
        if not self.enabled:
            return
        try:
            message = build()
        except Exception:  # auditing never breaks the caller
            LOG.exception("cannot build an audit message")
            return
        if message is not None:
            self.record(message)

    def application_activity(self, *, started: bool, launcher: str | None = None) -> None:
        """Application Start / Stop (A.5.3.1); ``launcher``: the OS user who started it."""
        self._safe(lambda: builders.application_activity(
            self.node(), Party(launcher or os_user(), self.hostname), started=started
        ))

    def user_authentication(
        self, user: str, ip: str, success: bool, detail: str = "", *, logout: bool = False,
        user_name: str = "",
    ) -> None:
        """Login (or logout) of ``user`` from ``ip``, successful or not (A.5.3.12)."""
        self._safe(lambda: builders.user_authentication(
            user=Party(user or "unknown", ip, user_name=user_name), node=self.node(),
            success=success, logout=logout, detail=detail,
        ))

    def security_alert(
        self,
        event_type: str | Code,
        *,
        user: str,
        ip: str = "",
        subject: ParticipantObject | None = None,
        detail: str = "",
        outcome: int = codes.SUCCESS,
    ) -> None:
        """Security Alert (A.5.3.11), e.g. ``"user-attributes"``, ``"network-configuration"``."""
        kind = ALERT_TYPES[event_type] if isinstance(event_type, str) else event_type
        self._safe(lambda: builders.security_alert(
            reporter=Party(user or "unknown", ip), node=self.node(), event_type=kind, subject=subject,
            outcome=outcome, detail=detail,
        ))

    def user_changed(self, *, by: str, ip: str, user: str, detail: str, roles: bool = False,
                     outcome: int = codes.SUCCESS) -> None:
        """A user account created, changed, disabled (or its roles changed) by ``by``."""
        self.security_alert(
            "security-roles" if roles else "user-attributes", user=by, ip=ip,
            subject=builders.user_subject(user), detail=detail, outcome=outcome,
        )

    def configuration_changed(self, *, by: str, ip: str, subject: str, detail: str,
                              kind: str = "network-configuration", outcome: int = codes.SUCCESS) -> None:
        """A configuration item (``subject``, a URI or name) changed by ``by``."""
        self.security_alert(
            kind, user=by, ip=ip, subject=builders.resource_subject(subject), detail=detail, outcome=outcome,
        )

    def node_authentication_failure(self, *, ae_title: str, address: str, detail: str) -> None:
        """An association refused: unknown or disallowed AE, failed TLS client check (110126)."""
        self.security_alert(
            "node-authentication", user=ae_title, ip=address,
            subject=builders.node_subject(f"{ae_title}@{address}"), detail=detail,
            outcome=codes.MINOR_FAILURE,
        )

    def audit_log_used(self, *, user: str, ip: str, what: str = "", outcome: int = codes.SUCCESS) -> None:
        """Someone read or verified the audit log (A.5.3.2)."""
        self._safe(lambda: builders.audit_log_used(
            Party(user or "unknown", ip), self.node(), AUDIT_LOG_URI, outcome=outcome, detail=what,
        ))

    # -- ingest (C-STORE, STOW-RS, import): subscribed to the event bus ------------------
    def _on_stored(self, event: InstanceStored) -> None:
        protocol, party = party_from_source(event.source)
        action = "U" if event.status == "replaced" else "C"
        node = self.node()
        if protocol == "import":
            def make_import(studies: Studies, outcome: int, detail: str) -> AuditMessage:
                return builders.imported(requestor=party, node=node, studies=studies, outcome=outcome,
                                         detail=detail)
            make: MakeMessage = make_import
        else:
            def make_stored(studies: Studies, outcome: int, detail: str) -> AuditMessage:
                return builders.transferred(
                    source=party, destination=node, requestor=party, studies=studies, action=action,
                    outcome=outcome, detail=detail,
                )
            make = make_stored
        self.aggregate(
            ("stored", event.source, action, event.study_instance_uid), make,
            study_uid=event.study_instance_uid, sop_class_uid=event.sop_class_uid,
        )

    def _on_rejected(self, event: InstanceRejected) -> None:
        _protocol, party = party_from_source(event.source)
        node = self.node()

        def make(studies: Studies, outcome: int, detail: str) -> AuditMessage:
            return builders.transferred(
                source=party, destination=node, requestor=party, studies=studies, action="C",
                outcome=outcome, detail=detail,
            )

        self.aggregate(
            ("rejected", event.source), make, outcome=codes.MINOR_FAILURE,
            detail=f"instance refused: {event.reason}"[:1000],
        )

    # -- DIMSE (called from dimse/handlers.py) -----------------------------------------
    def dimse_query(self, event: Any, identifier: Any) -> None:
        """A C-FIND request (A.5.3.10): the identifier as received, base64 in the record."""
        def build() -> AuditMessage:
            requestor = event.assoc.requestor
            raw = event.request.Identifier
            query_bytes = raw.getvalue() if hasattr(raw, "getvalue") else bytes(raw or b"")
            patient_id = str(identifier.get("PatientID", "") or "")
            patients = [Patient(patient_id)] if patient_id and not _wildcard(patient_id) else []
            study_uids = exact_values(identifier.get("StudyInstanceUID"))
            return builders.query(
                requestor=Party(requestor.ae_title, requestor.address), node=self.node(),
                sop_class_uid=str(event.request.AffectedSOPClassUID),
                query_bytes=query_bytes, transfer_syntax=str(event.context.transfer_syntax),
                patients=patients, study_uids=study_uids,
            )
        self._safe(build)

    def dimse_retrieving(self, event: Any, instances: Iterable[T], destination: Any = None) -> Iterator[T]:
        """Pass C-MOVE / C-GET ``instances`` through, then report what was handed out.

        One DICOM Instances Transferred record per study (A.5.3.5, action R), written
        when the loop ends: success if every instance was handed to the sub-operations,
        minor failure if the retrieve was cancelled or the association ended first.
        """
        items = list(instances)
        handed: list[T] = []
        try:
            for item in items:
                yield item
                handed.append(item)  # the handler came back for more: this one was sent
        finally:
            self._safe_retrieved(event, items, handed, destination)

    def _safe_retrieved(self, event: Any, items: list[Any], handed: list[Any], destination: Any) -> None:
        if not self.enabled:
            return
        try:
            requestor_ae = event.assoc.requestor
            requestor = Party(requestor_ae.ae_title, requestor_ae.address)
            target = requestor if destination is None else Party(destination.ae_title, destination.host)
            complete = len(handed) == len(items)
            detail = "" if complete else f"retrieve ended after {len(handed)} of {len(items)} instances"
            outcome = codes.SUCCESS if complete else codes.MINOR_FAILURE
            by_study: dict[str, Counter[str]] = {}
            for item in handed or items[:1]:
                by_study.setdefault(item.study_instance_uid, Counter())
            for item in handed:
                by_study[item.study_instance_uid][item.sop_class_uid] += 1
            for study_uid, classes in by_study.items():
                self.record(builders.transferred(
                    source=self.node(), destination=target, requestor=requestor,
                    studies={study_uid: classes}, action="R", outcome=outcome, detail=detail,
                ))
        except Exception:
            LOG.exception("cannot build an audit message")


def _text(value: str) -> str:
    """A column value: no NUL (PostgreSQL text cannot hold it)."""
    return value.replace("\x00", "\ufffd")


def _members(values: Iterable[str]) -> str:
    items = [_text(v) for v in dict.fromkeys(values) if v]
    return "|" + "|".join(v.replace("|", "/") for v in items) + "|" if items else ""


def _wildcard(value: str) -> bool:
    return "*" in value or "?" in value or "\\" in value


def exact_values(value: Any) -> list[str]:
    """UIDs a matching key names exactly (a single value or a UID list), not a wildcard."""
    if value is None:
        return []
    items = list(value) if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue" else (
        str(value).split("\\")
    )
    return [str(v).strip() for v in items if str(v).strip() and "*" not in str(v) and "?" not in str(v)]
