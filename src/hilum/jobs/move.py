"""Move jobs: ask a remote AE (the source) to C-MOVE studies to an AE title.

Used to pull studies from another PACS into Hilum (the destination defaults to
Hilum's own AE title, which the source must know). One C-MOVE per study (or
per series, when the job names one), in the Study Root model (PS3.4 C.4.2).
The step state is ``{"finished": [study UIDs], "counts": {study UID: [done,
failed, total]}}``; a restart or a retry moves only the unfinished studies.
"""

from __future__ import annotations

from collections.abc import Callable

from pydicom.dataset import Dataset
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

from hilum.app import Services
from hilum.config import RemoteAE
from hilum.dimse.scu import Scu, ScuError
from hilum.domain.errors import NotFound
from hilum.jobs.context import JobContext, JobFailed
from hilum.jobs.network import describe_association_failure
from hilum.jobs.settings import JobSettings

# PS3.4 C.4.2.1.5: C-MOVE status codes that are not success or pending
_MOVE_STATUS = {
    0xA701: "out of resources (cannot calculate number of matches)",
    0xA702: "out of resources (cannot perform sub-operations)",
    0xA801: "move destination unknown to the source",
    0xA900: "identifier does not match SOP class",
    0xB000: "sub-operations complete, one or more failures",
    0xFE00: "sub-operations cancelled",
}
_PENDING = (0xFF00, 0xFF01)


class _MovingScu(Scu):
    def move_with_progress(
        self,
        remote: RemoteAE,
        destination: str,
        identifier: Dataset,
        on_pending: Callable[[Dataset], None],
    ) -> Dataset:
        """C-MOVE; ``on_pending`` sees every pending response (sub-operation counts)."""
        model = StudyRootQueryRetrieveInformationModelMove
        ae = self._ae()
        ae.add_requested_context(model)
        assoc = self._associate(ae, remote)
        last: Dataset | None = None
        finished = False
        try:
            for status, _ in assoc.send_c_move(identifier, destination, model):
                if not status:
                    raise ScuError("no C-MOVE response (timeout or abort)")
                last = status
                if int(status.Status) in _PENDING:
                    on_pending(status)
            finished = True
        finally:
            # Interrupted (job cancelled, Hilum stopping): abort, which ends the
            # source's sub-operations too; otherwise a normal release.
            if finished:
                assoc.release()
            else:
                assoc.abort()
        if last is None:
            raise ScuError("no C-MOVE response")
        return last


def _counts(status: Dataset, *, final: bool) -> list[int]:
    """[done, failed, total] from a C-MOVE response's sub-operation counts."""
    completed = int(status.get("NumberOfCompletedSuboperations", 0) or 0)
    warning = int(status.get("NumberOfWarningSuboperations", 0) or 0)
    failed = int(status.get("NumberOfFailedSuboperations", 0) or 0)
    remaining = 0 if final else int(status.get("NumberOfRemainingSuboperations", 0) or 0)
    done = completed + warning
    return [done, failed, done + failed + remaining]


def _identifier(study_instance_uid: str, series_instance_uid: str | None) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES" if series_instance_uid else "STUDY"
    ds.StudyInstanceUID = study_instance_uid
    if series_instance_uid:
        ds.SeriesInstanceUID = series_instance_uid
    return ds


def run_move(ctx: JobContext, services: Services, config: JobSettings) -> None:
    job = ctx.job
    try:
        source = services.nodes.get(job.source or "")
    except NotFound as exc:
        raise JobFailed(str(exc), permanent=True) from None
    scu = _MovingScu.from_settings(services.settings.dicom, timeout=config.timeout)
    finished: list[str] = list(ctx.state.get("finished", []))
    counts: dict[str, list[int]] = {k: list(v) for k, v in ctx.state.get("counts", {}).items()}

    def sync() -> None:
        ctx.state = {"finished": finished, "counts": counts}
        ctx.done = sum(c[0] for c in counts.values())
        ctx.failed = sum(c[1] for c in counts.values())
        ctx.total = sum(c[2] for c in counts.values()) if counts else None

    failures: list[str] = []
    permanent = True
    for uid in job.study_instance_uids:
        if uid in finished:
            continue

        def on_pending(status: Dataset, uid: str = uid) -> None:
            counts[uid] = _counts(status, final=False)
            sync()
            ctx.checkpoint()

        try:
            final = scu.move_with_progress(
                source, job.destination, _identifier(uid, job.series_instance_uid), on_pending
            )
        except (ScuError, OSError) as exc:
            raise JobFailed(describe_association_failure(exc, source, scu.ae_title)) from None
        code = int(final.Status)
        counts[uid] = _counts(final, final=True)
        done, failed, _ = counts[uid]
        if code == 0x0000 and failed == 0 and done > 0:
            finished.append(uid)
        elif code == 0x0000 and failed == 0:
            failures.append(f"{source.ae_title} has no instances of study {uid}")
        else:
            permanent = False
            reason = _MOVE_STATUS.get(code) or (
                "unable to process" if 0xC000 <= code <= 0xCFFF else "failed"
            )
            comment = str(final.get("ErrorComment", "") or "")
            text = f"C-MOVE of study {uid} from {source.ae_title}: status 0x{code:04X} {reason}"
            if failed:
                text += f", {failed} sub-operation(s) failed"
            failures.append(f"{text} ({comment})" if comment else text)
        sync()
        ctx.checkpoint(force=True)
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise JobFailed(failures[0] + more, permanent=permanent)

