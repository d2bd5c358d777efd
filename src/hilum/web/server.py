"""The HTTP server's supervising side: the listening socket and the HTTP worker
processes (hilum.web.worker, started through hilum.processes).

The main process of `hilum serve` imports only this side; the FastAPI application
and the services are imported in the workers.
"""

from __future__ import annotations

import threading

from hilum.config import Settings
from hilum.domain.errors import HilumError
from hilum.processes import WorkerPool, listen


class HttpServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pool: WorkerPool | None = None

    def start(
        self, timeout: float = 60, *, wait: bool = True, stop: threading.Event | None = None
    ) -> None:
        http = self.settings.http
        try:
            sock = listen(http.host, http.port, "HTTP")
        except HilumError:
            where = f"{http.host}:{http.port}"
            raise HilumError(f"HTTP server could not listen on {where} (port in use?)") from None
        self.pool = WorkerPool(
            "http", "hilum.web.worker:run_worker", self.settings.http_workers(),
            self.settings.model_dump(mode="json"), sock,
        )
        self.pool.start(timeout, wait=wait, stop=stop)

    def wait_ready(self, timeout: float = 60, *, stop: threading.Event | None = None) -> None:
        if self.pool is not None:
            self.pool.wait_ready(timeout, stop=stop)

    def terminate(self) -> None:
        """Tell the workers to stop, without waiting (then :meth:`stop`)."""
        if self.pool is not None:
            self.pool.terminate()

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.stop()
