"""The job that makes a de-identified share link's copies (job kind ``share-copy``).

Each instance of the shared studies is read from the storage area,
de-identified with the Basic Application Level Confidentiality Profile
(PS3.15 Annex E, :mod:`hilum.deid`: new UIDs, consistent within the link,
Patient's Name and ID ``SHARE<link>-<n>``) and stored through the one ingest
path, as new studies. Instances that declare burned-in annotation are left
out. The link opens the copies once every instance is done (state
``ready``); until then, and for users other than administrators, the copies
are not listed (hilum.auth.access).

A run that is interrupted (restart, crash) starts again from nothing: the
copies it had made are deleted first, and a fresh de-identification secret
gives new UIDs. A run stops, and deletes what it made, when the link is
revoked or expires meanwhile.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert, select, update

from hilum.app import Services
from hilum.deid import DeidConfig, DeidentificationError, Deidentifier, DeidJob, deidentify_stream
from hilum.deid.export import select_instances
from hilum.domain.errors import HilumError, IngestFailure
from hilum.jobs.context import JobContext, JobFailed
from hilum.jobs.settings import JobSettings
from hilum.shares.models import share_link_studies_t, share_links_t
from hilum.shares.service import ShareService

LOG = logging.getLogger(__name__)
L, LS = share_links_t, share_link_studies_t
_CHECK_EVERY = 20  # instances between two looks at the link (revoked? expired?)


def run_share_copy(ctx: JobContext, services: Services, config: JobSettings) -> None:
    params = ctx.job.params
    share_id = int(params["share_id"])
    shares = ShareService.build(services.engine, services.storage, services.settings)
    engine = services.engine
    if not _wanted(services, share_id):
        shares.purge(share_id)
        raise JobFailed(f"share link {share_id} was revoked, has expired or is gone", permanent=True)
    # A run interrupted earlier may have stored part of a copy: start again from nothing.
    shares.delete_copies(share_id)
    shares.forget_copies(share_id)
    sources = [str(uid) for uid in params.get("study_instance_uids", [])]
    try:
        instances = select_instances(engine, tuple(sources), None)
    except HilumError as exc:
        _failed(services, share_id, str(exc))
        raise JobFailed(str(exc), permanent=True) from None
    deid_job = DeidJob.create(DeidConfig(pseudonym=f"SHARE{share_id}-{{n}}"))
    deid = Deidentifier(deid_job)
    copies = {uid: deid_job.output_uid(uid) for uid in sources}
    with engine.begin() as conn:  # recorded first: hidden from searches, found again after a crash
        conn.execute(insert(LS), [
            {"share_id": share_id, "study_instance_uid": copy, "source_study_instance_uid": source,
             "is_copy": True}
            for source, copy in copies.items()
        ])
    ctx.total, ctx.done, ctx.failed, ctx.bytes_sent = len(instances), 0, 0, 0
    refused: list[str] = []
    ctx.state = {"refused": refused}
    ctx.checkpoint(force=True)
    source = f"share:{params.get('requested_by') or '?'}@{params.get('client_ip') or 'unknown'}"
    copied: set[str] = set()
    for number, instance in enumerate(instances):
        ctx.check()
        if number and number % _CHECK_EVERY == 0 and not _wanted(services, share_id):
            shares.purge(share_id)
            raise JobFailed(f"share link {share_id} was revoked or has expired", permanent=True)
        fd, staged = services.ingest.new_staging_file()
        try:
            with os.fdopen(fd, "wb") as dst, services.storage.open(instance.storage_key) as src:
                result = deidentify_stream(src, dst, deid)
            stored = services.ingest.ingest_staged(staged, source=source)
        except (DeidentificationError, IngestFailure) as exc:
            staged.unlink(missing_ok=True)
            ctx.failed += 1
            if len(refused) < 100:
                refused.append(f"{instance.sop_instance_uid}: {exc}")
            ctx.checkpoint()
            continue
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        copied.add(stored.study_instance_uid)
        ctx.done += 1
        ctx.bytes_sent += result.bytes_written
        ctx.checkpoint()
    ctx.checkpoint(force=True)
    empty = [copy for copy in copies.values() if copy not in copied]
    if empty:
        with engine.begin() as conn:
            conn.execute(delete(LS).where(LS.c.share_id == share_id, LS.c.study_instance_uid.in_(empty)))
    if not copied:
        message = f"no instance could be de-identified ({ctx.failed} refused)"
        if refused:
            message += f"; first: {refused[0]}"
        _failed(services, share_id, message)
        raise JobFailed(message, permanent=True)
    note = None
    if ctx.failed:
        note = f"{ctx.failed} instance(s) left out of the copy"
        if refused:
            note += f"; first: {refused[0]}"
    with engine.begin() as conn:
        conn.execute(update(L).where(L.c.id == share_id, L.c.state == "preparing").values(state="ready",
                                                                                        error=note))
    if not _wanted(services, share_id):
        shares.purge(share_id)
    LOG.info("share link %d: %d instance(s) of %d stud(ies) de-identified", share_id, ctx.done, len(copied))


def _wanted(services: Services, share_id: int) -> bool:
    with services.engine.connect() as conn:
        row: Any = conn.execute(select(L.c.revoked_at, L.c.expires_at).where(L.c.id == share_id)).first()
    if row is None or row.revoked_at is not None:
        return False
    expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
    return bool(expires > datetime.now(UTC))


def _failed(services: Services, share_id: int, message: str) -> None:
    with services.engine.begin() as conn:
        conn.execute(update(L).where(L.c.id == share_id).values(state="failed", error=message[:2000]))
