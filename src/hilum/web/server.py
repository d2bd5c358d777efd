"""Runs the HTTP application with uvicorn in a thread of the main process."""

from __future__ import annotations

import threading
import time

import uvicorn

from hilum.app import build_services
from hilum.config import Settings
from hilum.domain.errors import HilumError
from hilum.jobs.runner import JobRunner
from hilum.web.app import create_app


class HttpServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.services = build_services(settings)
        self.services.writer.start()
        self.app = create_app(self.services)
        # Durable jobs (send / move) run in this process; the API wakes the runner.
        self.jobs = JobRunner(self.services)
        self.app.state.jobs = self.jobs
        config = uvicorn.Config(
            self.app,
            host=settings.http.host,
            port=settings.http.port,
            log_level="warning",
            access_log=False,
            timeout_keep_alive=30,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="http", daemon=True)

    def start(self, timeout: float = 30) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise HilumError(
                    f"HTTP server could not listen on {self.settings.http.host}:"
                    f"{self.settings.http.port} (port in use?)"
                )
            if time.monotonic() > deadline:
                raise HilumError("HTTP server did not start in time")
            time.sleep(0.05)
        self.jobs.start()

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self.jobs.stop()
        self.services.close()
