"""Store jobs: C-STORE the stored instances of studies to a remote AE.

The data sets are sent as stored (the stored transfer syntax is proposed, and
the file's bytes go on the wire unchanged). Instances are sent in index order,
``batch_size`` per association. The step state is ``{"cursor": id, "retry":
[ids]}``: every instance up to ``cursor`` was handled, and the ones in
``retry`` were refused (or not answered) and are sent again by the next run.
A crash resends at most the instances sent since the last progress save.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Select, func, select

from hilum.app import Services
from hilum.audit import builders, codes
from hilum.audit.builders import Party
from hilum.config import RemoteAE
from hilum.dimse.scu import Scu, ScuError
from hilum.dimse.stored_send import sendable
from hilum.domain.errors import NotFound
from hilum.index.models import instances_t, series_t, studies_t
from hilum.jobs.context import JobContext, JobFailed, JobInterrupted
from hilum.jobs.network import describe_association_failure
from hilum.jobs.repository import JobRecord
from hilum.jobs.settings import JobSettings
from hilum.storage.base import readable

# PS3.4 B.2.3: success, and the warnings (coercion, elements discarded, not checked)
STORED_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class _Item:
    id: int
    sop_instance_uid: str
    storage_key: str
    size: int
    study_instance_uid: str = ""
    sop_class_uid: str = ""


def _matching(job: JobRecord, *columns: Any) -> Select[Any]:
    stmt = (
        select(*columns)
        .select_from(
            instances_t.join(series_t, instances_t.c.series_pk == series_t.c.id).join(
                studies_t, series_t.c.study_pk == studies_t.c.id
            )
        )
        .where(studies_t.c.study_instance_uid.in_(job.study_instance_uids))
    )
    if job.series_instance_uid:
        stmt = stmt.where(series_t.c.series_instance_uid == job.series_instance_uid)
    return stmt


def _items(job: JobRecord) -> Select[Any]:
    return _matching(
        job,
        instances_t.c.id,
        instances_t.c.sop_instance_uid,
        instances_t.c.storage_key,
        instances_t.c.size_bytes,
        studies_t.c.study_instance_uid,
        instances_t.c.sop_class_uid,
    ).order_by(instances_t.c.id)


def run_store(ctx: JobContext, services: Services, config: JobSettings) -> None:
    job = ctx.job
    try:
        remote = services.nodes.get(job.destination)
    except NotFound as exc:
        raise JobFailed(str(exc), permanent=True) from None
    sender = _Sender(ctx, services, remote, config)
    with services.engine.connect() as conn:
        remaining = conn.execute(
            _matching(job, func.count()).where(instances_t.c.id > sender.cursor)
        ).scalar_one()
    ctx.total = ctx.done + len(sender.retry) + int(remaining)
    if ctx.total == 0:
        raise JobFailed("no stored instance matches the job (deleted since?)", permanent=True)
    ctx.checkpoint(force=True)

    # What failed in earlier runs first, then the rest in index order.
    earlier = sorted(sender.retry)
    for start in range(0, len(earlier), config.batch_size):
        ids = earlier[start : start + config.batch_size]
        with services.engine.connect() as conn:
            items = [_Item(*row) for row in conn.execute(_items(job).where(instances_t.c.id.in_(ids)))]
        gone = set(ids) - {item.id for item in items}
        if gone:  # deleted from the index since: nothing left to send
            sender.retry -= gone
            ctx.total = max(ctx.total - len(gone), ctx.done)
        sender.send(items, sequential=False)
    while True:
        with services.engine.connect() as conn:
            stmt = _items(job).where(instances_t.c.id > sender.cursor).limit(config.batch_size)
            items = [_Item(*row) for row in conn.execute(stmt)]
        if not items:
            break
        sender.send(items, sequential=True)
    sender.sync_state()
    ctx.checkpoint(force=True)
    if sender.retry:
        raise JobFailed(sender.summary())


class _Sender:
    def __init__(
        self, ctx: JobContext, services: Services, remote: RemoteAE, config: JobSettings
    ) -> None:
        self.ctx = ctx
        self.services = services
        self.remote = remote
        self.scu = Scu.from_settings(services.settings.dicom, timeout=config.timeout)
        self.cursor = int(ctx.state.get("cursor", 0))
        self.retry: set[int] = {int(i) for i in ctx.state.get("retry", [])}
        self.errors: dict[int, str] = {}

    @property
    def peer(self) -> str:
        return f"{self.remote.ae_title}@{self.remote.host}:{self.remote.port}"

    def summary(self) -> str:
        first = next((self.errors[i] for i in sorted(self.retry) if i in self.errors), "")
        text = f"{len(self.retry)} of {self.ctx.total} instance(s) not stored by {self.peer}"
        return f"{text}; {first}" if first else text

    def sync_state(self) -> None:
        self.ctx.failed = len(self.retry)
        self.ctx.state = {"cursor": self.cursor, "retry": sorted(self.retry)}

    def record(self, item: _Item, code: int | None, reason: str = "", *, sequential: bool) -> None:
        stored = code is not None and code in STORED_STATUSES
        self._audit(item, stored, reason or ("" if stored else f"status 0x{(code or 0) & 0xFFFF:04X}"))
        if stored:
            self.ctx.done += 1
            self.ctx.bytes_sent += item.size
            self.retry.discard(item.id)
            self.errors.pop(item.id, None)
        else:
            if not reason:
                reason = "no response" if code is None or code < 0 else f"status 0x{code:04X}"
            self.retry.add(item.id)
            self.errors[item.id] = f"{item.sop_instance_uid}: {reason}"
        if sequential:
            self.cursor = max(self.cursor, item.id)
        self.sync_state()

    def _audit(self, item: _Item, stored: bool, reason: str) -> None:
        """One DICOM Instances Transferred record per study and outcome (PS3.15 A.5.3.5)."""
        audit = self.services.audit
        job = self.ctx.job
        destination = Party(self.remote.ae_title, self.remote.host)
        by = str(job.params.get("requested_by") or "")
        requestor = Party(by, "") if by else audit.node()

        def make(studies: Any, outcome: int, detail: str) -> Any:
            return builders.transferred(
                source=audit.node(), destination=destination, requestor=requestor,
                studies=studies, action="R", outcome=outcome,
                detail=f"job {job.id}" + (f": {detail}" if detail else ""),
            )

        audit.aggregate(
            ("job-store", job.id, item.study_instance_uid, stored), make,
            study_uid=item.study_instance_uid, sop_class_uid=item.sop_class_uid,
            outcome=codes.SUCCESS if stored else codes.MINOR_FAILURE,
            detail="" if stored else f"not stored by {self.peer}: {reason}",
        )

    def send(self, items: list[_Item], *, sequential: bool) -> None:
        """Send ``items`` on one association (more if a file cannot be sent at all)."""
        pending = items
        while pending:
            pending = self._send_once(pending, sequential=sequential)
        self.ctx.checkpoint()

    def _send_once(self, items: list[_Item], *, sequential: bool) -> list[_Item]:
        """One association; what is left to send if one file could not be sent at all."""
        handled: set[int] = set()
        order = {item.id: n for n, item in enumerate(items)}
        with _files(self.services, items) as paths:
            by_path = dict(zip(paths, items, strict=True))

            def on_progress(path: Path, code: int) -> None:
                item = by_path[path]
                # Scu.store sends in order and skips files it cannot read: the
                # unhandled ones before this one were skipped.
                for skipped in items[: order[item.id]]:
                    if skipped.id not in handled:
                        handled.add(skipped.id)
                        self.record(skipped, None, "not readable as DICOM", sequential=sequential)
                handled.add(item.id)
                self.record(item, code, sequential=sequential)
                self.ctx.checkpoint()

            try:
                report = self.scu.store(self.remote, paths, on_progress=on_progress)
            except (JobInterrupted, JobFailed):
                raise
            except (ScuError, OSError) as exc:
                raise JobFailed(
                    describe_association_failure(exc, self.remote, self.scu.ae_title)
                ) from None
            except RuntimeError as exc:  # the association was aborted under us
                raise JobFailed(f"association with {self.peer} lost: {exc}") from None
            except Exception as exc:
                # One file could not be sent at all (e.g. the peer accepted no
                # context for its transfer syntax): it fails, the rest goes on.
                rest = [item for item in items if item.id not in handled]
                if not rest:
                    raise JobFailed(f"sending to {self.peer} failed: {exc}") from None
                self.record(rest[0], None, f"cannot be sent: {exc}", sequential=sequential)
                self.ctx.checkpoint()
                return rest[1:]
        for path_text, reason in report.failed:
            failed = by_path.get(Path(path_text))
            if failed is None:
                continue
            if failed.id in handled:
                self.errors[failed.id] = f"{failed.sop_instance_uid}: {reason}"
            else:
                handled.add(failed.id)
                self.record(failed, None, reason, sequential=sequential)
        return []


@contextmanager
def _files(services: Services, items: list[_Item]) -> Iterator[list[Path]]:
    """Paths to send the stored files from: local paths, or (no local path, e.g. encrypted
    at rest) virtual paths read through the storage area (dimse/stored_send.py)."""
    with ExitStack() as stack:
        yield [
            stack.enter_context(sendable(readable(services.storage, item.storage_key)))
            for item in items
        ]

