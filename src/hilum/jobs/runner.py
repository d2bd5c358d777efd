"""The job runner: a thread of the HTTP (main) process that runs queued jobs.

It claims due queued jobs (atomically, see :mod:`hilum.jobs.repository`), runs
each in a thread of its own, up to ``jobs.workers`` at a time, and schedules
failed runs again with exponential backoff until ``max_attempts`` runs were
made. At start it queues again the jobs this node was running when it
stopped; while running it refreshes its claims (heartbeat) and queues again
jobs whose node stopped refreshing them (another node sharing the index that
crashed). Every ``housekeeping_interval`` it deletes the de-identified copies of
share links that have expired.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from pynetdicom import _config

from hilum.app import Services
from hilum.jobs.context import JobContext, JobFailed, JobInterrupted
from hilum.jobs.move import run_move
from hilum.jobs.repository import FAILED, SUCCEEDED, JobStore, utcnow
from hilum.jobs.settings import JobSettings, job_settings
from hilum.jobs.store import run_store
from hilum.shares.copy import run_share_copy
from hilum.shares.service import ShareService

LOG = logging.getLogger(__name__)

Executor = Callable[[JobContext, Services, JobSettings], None]
EXECUTORS: dict[str, Executor] = {"store": run_store, "move": run_move, "share-copy": run_share_copy}


def node_name(services: Services) -> str:
    """This node, stable across restarts (one `hilum serve` per data directory)."""
    return f"{socket.gethostname()}:{services.settings.data_dir.resolve()}"


class JobRunner:
    def __init__(self, services: Services, config: JobSettings | None = None) -> None:
        self.services = services
        self.config = config or job_settings(services.settings)
        self.store = JobStore(services.engine)
        self.owner = node_name(services)
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._active: dict[int, JobContext] = {}
        self._threads: dict[int, threading.Thread] = {}
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # Stored files are sent as their bytes, not re-encoded by pydicom.
        _config.STORE_SEND_CHUNKED_DATASET = True
        requeued = self.store.requeue_owned(self.owner)
        if requeued:
            LOG.warning("queued again %d job(s) left running when Hilum stopped", requeued)
        self._thread = threading.Thread(target=self._loop, name="jobs", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """A job was queued or changed: look now instead of at the next poll."""
        self._wake.set()

    def cancelled(self, job_id: int) -> None:
        """The job was cancelled: if this node runs it, stop it now (not at its next save)."""
        with self._lock:
            ctx = self._active.get(job_id)
        if ctx is not None:
            ctx.lost.set()

    def stop(self, timeout: float = 15) -> None:
        """Stop claiming; running jobs save their progress and go back to the queue."""
        self._stopping.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(timeout=max(deadline - time.monotonic(), 0.1))
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(timeout=max(deadline - time.monotonic(), 0.1))
        # Any still running (stuck in a network call) are queued again at next start.

    # -- the loop ----------------------------------------------------------------------
    def _loop(self) -> None:
        last_beat = 0.0
        last_housekeeping = time.monotonic()
        while not self._stopping.is_set():
            wait = self.config.poll_interval
            try:
                if time.monotonic() - last_beat >= self.config.heartbeat_interval:
                    self._heartbeat()
                    last_beat = time.monotonic()
                wait = self._start_due_jobs()
            except Exception:
                LOG.exception("job runner: cannot reach the index; trying again")
            if time.monotonic() - last_housekeeping >= self.config.housekeeping_interval:
                self._housekeeping()
                last_housekeeping = time.monotonic()
            self._wake.wait(
                min(wait, self.config.poll_interval, self.config.heartbeat_interval,
                    self.config.housekeeping_interval)
            )
            self._wake.clear()

    def _housekeeping(self) -> None:
        services = self.services
        try:
            removed = ShareService.build(services.engine, services.storage, services.settings).purge()
        except Exception:  # tried again at the next round
            LOG.exception("housekeeping: cannot delete the copies of expired share links")
            return
        if removed:
            LOG.info("housekeeping: deleted %d de-identified cop(ies) of expired share links", removed)

    def _heartbeat(self) -> None:
        with self._lock:
            active = list(self._active.values())
        for ctx in active:
            if not self.store.save(ctx.job.id, self.owner, {}):
                ctx.lost.set()  # cancelled, or taken over: the job's thread stops
        stale = utcnow() - timedelta(seconds=self.config.stale_after)
        requeued = self.store.requeue_stale(stale)
        if requeued:
            LOG.warning("queued again %d job(s) whose node stopped answering", requeued)

    def _start_due_jobs(self) -> float:
        """Claim and start due jobs while workers are free; seconds until the next is due."""
        while not self._stopping.is_set():
            with self._lock:
                if len(self._active) >= self.config.workers:
                    return self.config.poll_interval
            job = self.store.claim(self.owner)
            if job is None:
                break
            ctx = JobContext(
                self.store, job, self.owner,
                progress_interval=self.config.progress_interval, stopping=self._stopping,
            )
            thread = threading.Thread(target=self._run, args=(ctx,), name=f"job-{job.id}", daemon=True)
            with self._lock:
                self._active[job.id] = ctx
                self._threads[job.id] = thread
            thread.start()
        due = self.store.next_due()
        if due is None:
            return self.config.poll_interval
        return max((due - utcnow()).total_seconds(), 0.05)

    def _run(self, ctx: JobContext) -> None:
        try:
            self._execute(ctx)
        except Exception:
            LOG.exception("job %d: could not record its outcome", ctx.job.id)
        finally:
            with self._lock:
                self._active.pop(ctx.job.id, None)
                self._threads.pop(ctx.job.id, None)
            self._wake.set()

    def _execute(self, ctx: JobContext) -> None:
        job = ctx.job
        LOG.info("job %d: %s to %s, attempt %d of %d", job.id, job.kind, job.destination,
                 job.attempts, job.max_attempts)
        try:
            EXECUTORS[job.kind](ctx, self.services, self.config)
        except JobInterrupted:
            if self._stopping.is_set() and not ctx.lost.is_set():
                self.store.release(job.id, self.owner, ctx.values())
                LOG.info("job %d: paused while Hilum stops", job.id)
            else:
                LOG.info("job %d: stopped (cancelled or taken over)", job.id)
            return
        except JobFailed as exc:
            error, permanent = str(exc), exc.permanent
        except Exception as exc:
            LOG.exception("job %d failed", job.id)
            error, permanent = f"{type(exc).__name__}: {exc}", False
        else:
            self.store.finish(job.id, self.owner, SUCCEEDED, {**ctx.values(), "last_error": None})
            LOG.info("job %d: succeeded (%d instance(s))", job.id, ctx.done)
            return
        if permanent or job.attempts >= job.max_attempts:
            self.store.finish(job.id, self.owner, FAILED, {**ctx.values(), "last_error": error})
            LOG.warning("job %d: failed after %d attempt(s): %s", job.id, job.attempts, error)
            return
        delay = min(job.retry_delay * 2 ** (job.attempts - 1), self.config.max_retry_delay)
        self.store.retry_later(
            job.id, self.owner, ctx.values(), error, utcnow() + timedelta(seconds=delay)
        )
        LOG.info("job %d: attempt %d failed (%s); next in %.1f s", job.id, job.attempts, error, delay)
