"""The DICOM server's supervising side: the listening sockets, the receiving processes
(hilum.dimse.receiver, started through hilum.processes) and the staging sweep.

The main process of `hilum serve` imports only this side: what a receiving process
needs (pynetdicom's AE, the handlers, the services) is imported in that process.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from hilum.config import Settings
from hilum.dimse import tls
from hilum.processes import WorkerPool, listen
from hilum.storage.filesystem import FilesystemStorage

LOG = logging.getLogger(__name__)

_MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "16777216",
    "MALLOC_TRIM_THRESHOLD_": "134217728",
    "MALLOC_TOP_PAD_": "16777216",
}


class DimseServer:
    """Supervises the receiving processes; restarts one that dies."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: WorkerPool | None = None

    def start(self, timeout: float = 60, *, stop: threading.Event | None = None) -> None:
        # glibc would otherwise mmap/munmap every >=128 KiB PDU buffer: constant
        # page faults (measured +20-40% throughput without). Read at process start.
        for name, value in _MALLOC_ENV.items():
            os.environ.setdefault(name, value)
        dicom = self.settings.dicom
        tls_sock = None
        if dicom.tls_port:
            tls.server_context(dicom)  # unusable certificate or key: fail here, not in each worker
            tls_sock = listen(dicom.host, dicom.tls_port, "DICOM TLS")
        try:
            # dicom.port = 0: TLS only. The pool still wants a socket: the TLS one, which
            # the receiving processes then serve with TLS only.
            sock = listen(dicom.host, dicom.port, "DICOM") if dicom.port else tls_sock
        except BaseException:
            if tls_sock is not None:
                tls_sock.close()
            raise
        assert sock is not None  # the settings refuse port = 0 without tls_port
        self._pool = WorkerPool(
            "dimse", "hilum.dimse.receiver:run_worker", self.settings.dicom_workers(),
            self.settings.model_dump(mode="json"), sock, tls_sock,
        )
        self._pool.start(timeout, stop=stop)

    def supervise(self, stop: threading.Event, *others: WorkerPool) -> None:
        """Until ``stop``: restart dead workers (of ``others`` too), sweep stale staging files."""
        storage = FilesystemStorage(self.settings.storage_dir)
        # An aborted association can leave a spilled data set in staging; one
        # untouched for twice the longest timeout belongs to no live transfer.
        stale = 2 * max(self.settings.dicom.network_timeout, self.settings.dicom.dimse_timeout)
        next_sweep = time.monotonic() + 60
        while not stop.wait(1.0):
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + 60
                removed = storage.recover(older_than=stale)
                if removed:
                    LOG.warning("removed %d abandoned transfer(s) from staging", removed)
            for pool in (self._pool, *others):
                if pool is not None:
                    pool.restart_dead()

    def terminate(self) -> None:
        """Tell the workers to stop, without waiting (then :meth:`stop`)."""
        if self._pool is not None:
            self._pool.terminate()

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.stop()
