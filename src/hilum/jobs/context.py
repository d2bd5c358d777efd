"""What a job's steps see while they run: its record, progress counters and state."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from hilum.domain.errors import HilumError
from hilum.jobs.repository import JobRecord, JobStore


class JobInterrupted(Exception):
    """The job was cancelled or taken over, or this node is stopping: stop now."""


class JobFailed(HilumError):
    """This run of the job failed; ``permanent`` failures are not retried automatically."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class JobContext:
    """Progress of one run. Steps change the counters and ``state`` (the serialized
    step state, JSON), then call :meth:`checkpoint`, which saves them now and then
    and raises :class:`JobInterrupted` when the job must stop."""

    def __init__(
        self,
        store: JobStore,
        job: JobRecord,
        owner: str,
        *,
        progress_interval: float,
        stopping: threading.Event,
    ) -> None:
        self.store = store
        self.job = job
        self.owner = owner
        self.progress_interval = progress_interval
        self.stopping = stopping
        self.lost = threading.Event()  # cancelled or taken over
        self.total: int | None = job.total
        self.done = job.done
        self.failed = job.failed
        self.bytes_sent = job.bytes_sent
        self.state: dict[str, Any] = dict(job.step_state)
        self._saved_at = time.monotonic()

    def values(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "done": self.done,
            "failed": self.failed,
            "bytes_sent": self.bytes_sent,
            "state_json": json.dumps(self.state, separators=(",", ":")),
        }

    def check(self) -> None:
        if self.stopping.is_set() or self.lost.is_set():
            raise JobInterrupted

    def checkpoint(self, *, force: bool = False) -> None:
        self.check()
        if force or time.monotonic() - self._saved_at >= self.progress_interval:
            if not self.store.save(self.job.id, self.owner, self.values()):
                self.lost.set()
                raise JobInterrupted
            self._saved_at = time.monotonic()
