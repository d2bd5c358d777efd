"""An HTTP worker process: N of them run the FastAPI app on one shared socket.

Like the DICOM receiving processes, every HTTP worker builds its own services
(index engine, writer, storage), so STOW-RS ingest, transcoding and rendering
use every core. Worker 0 also runs the durable job runner.
"""

from __future__ import annotations

import logging
import socket
import threading
from multiprocessing.connection import Connection
from typing import Any

import uvicorn

from hilum.app import build_services
from hilum.config import Settings
from hilum.dimse.tls import uvicorn_ssl_options
from hilum.processes import WorkerControl
from hilum.web.app import create_app

LOG = logging.getLogger(__name__)


def run_worker(
    control: WorkerControl, settings_data: dict[str, Any], index: int, ready: Connection | None,
    sock: socket.socket,
) -> None:
    """One HTTP worker process (started by hilum.processes.worker_entry)."""
    from hilum.jobs.runner import JobRunner
    from hilum.logging import configure_logging

    settings = Settings(**settings_data)
    configure_logging(settings.log_level, prefix=f"http-{index}")
    stop = control.stop
    services = build_services(settings)
    services.writer.on_failure = control.fail
    services.writer.start()
    app = create_app(services)
    jobs = None
    if index == 0:  # durable jobs (send / move) run in one process; the API wakes them
        jobs = JobRunner(services)
        app.state.jobs = jobs
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=10,
        **uvicorn_ssl_options(settings.http),  # HTTPS when http.tls_certificate is set
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="http", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise SystemExit(f"HTTP worker {index} could not start")
        if stop.wait(0.05):
            break
    if jobs is not None:
        jobs.start()
    control.serving(ready)
    stop.wait()
    control.exit_if_failed()  # the index writer stopped: no graceful finish without it
    server.should_exit = True
    thread.join(timeout=15)
    if jobs is not None:
        jobs.stop()
    services.close()
