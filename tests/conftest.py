"""Shared fixtures: settings and services on SQLite *and* PostgreSQL, a real server.

Every test that takes ``settings``, ``services`` or ``server`` runs once per
index backend: ``[sqlite]`` and ``[postgresql]`` (a fresh database on the
server at 127.0.0.1:5432, dropped afterwards). Set HILUM_TEST_BACKENDS=sqlite
to run only one.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from hilum.app import Services, build_services, prepare
from hilum.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("HILUM_TEST_PG", "postgresql://root@127.0.0.1:5432/postgres")
BACKENDS = os.environ.get("HILUM_TEST_BACKENDS", "sqlite,postgresql").split(",")

os.environ.setdefault("TCP_NODELAY", "1")


def _port_band() -> range:
    """Ports this test process hands out: below the kernel's ephemeral range (so no
    outgoing connection can take one between free_port() and the server's bind), and a
    band of its own per pytest-xdist worker (so parallel workers never pick the same)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) + 1 if worker.startswith("gw") and worker[2:].isdigit() else 0
    start = 20000 + (index % 4) * 3000
    return range(start, start + 3000)


_BAND = _port_band()
_next_port = itertools.count(random.randrange(len(_BAND)))


def free_port() -> int:
    """A port nothing listens on, not handed out again soon by this process."""
    for _ in range(len(_BAND)):
        port = _BAND[next(_next_port) % len(_BAND)]
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in this test process's band")


@contextmanager
def backend_url(backend: str) -> Iterator[str]:
    """An index URL: "" (SQLite inside data_dir) or a fresh PostgreSQL database, dropped after."""
    if backend == "sqlite":
        yield ""
        return
    import psycopg

    name = f"hilum_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    with backend_url(request.param) as url:
        yield url


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return load_settings(
        None,
        data_dir=tmp_path / "data",
        database_url=database_url,
        # The archive's tests talk to it from DCMTK tools with many AE titles: admit
        # unknown AEs (the default refuses them; tests/test_dimse_permissions.py).
        dicom={"ae_title": "HILUM", "port": free_port(), "host": "127.0.0.1", "workers": 2,
               "accept_unknown_aes": True},
        http={"port": free_port()},
        # The archive's tests run without logging in (tests/test_auth.py turns it on).
        auth={"enabled": False},
    )


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    prepare(settings)
    svc = build_services(settings)
    try:
        yield svc
    finally:
        svc.close()


@dataclass
class RunningServer:
    settings: Settings
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def port(self) -> int:
        return self.settings.dicom.port

    @property
    def ae_title(self) -> str:
        return self.settings.dicom.ae_title

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    def hilum(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a `hilum` CLI command against this server's data dir / database."""
        return run_hilum(self.settings, *args, check=check)


def hilum_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    # Tests of the archive talk to it without logging in; the security tests turn
    # authentication back on (env={"HILUM_AUTH__ENABLED": "true"}).
    env.setdefault("HILUM_AUTH__ENABLED", "false")
    # One HTTP process per test server: starting servers is most of the suite's time.
    env.setdefault("HILUM_HTTP__WORKERS", "1")
    # Admit the test tools' many AE titles (the default refuses unknown AEs).
    env.setdefault("HILUM_DICOM__ACCEPT_UNKNOWN_AES", "true")
    if settings.database_url:
        env["HILUM_DATABASE_URL"] = settings.database_url
    return env


def run_hilum(settings: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "hilum.cli", *args, "--data-dir", str(settings.data_dir)]
    result = subprocess.run(
        command, capture_output=True, text=True, env=hilum_env(settings), timeout=300
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed:\n{result.stdout}\n{result.stderr}")
    return result


def start_server(
    settings: Settings, tmp_path: Path, *extra: str, env: dict[str, str] | None = None
) -> RunningServer:
    """Start `hilum serve`; ``env`` adds environment (e.g. HILUM_DICOM__DUPLICATE_POLICY)."""
    log = tmp_path / f"server-{settings.dicom.port}.log"
    handle = log.open("wb")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "hilum.cli", "serve",
            "--data-dir", str(settings.data_dir),
            "--ae-title", settings.dicom.ae_title,
            "--dicom-port", str(settings.dicom.port),
            "--http-port", str(settings.http.port),
            "--host", "127.0.0.1",
            "--workers", str(settings.dicom.workers),
            *extra,
        ],
        stdout=handle,
        stderr=subprocess.STDOUT,
        env={**hilum_env(settings), **(env or {})},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early:\n{log.read_text()}")
        if b"Hilum: DICOM" in log.read_bytes():
            return RunningServer(settings, process, log)
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"server did not start:\n{log.read_text()}")


def stop_server(server: RunningServer) -> None:
    """Stop `hilum serve` and make sure none of its worker processes outlives it (a
    straggler would keep the ports, and a restart on them would fail)."""
    import psutil

    try:
        children = psutil.Process(server.process.pid).children(recursive=True)
    except psutil.Error:
        children = []
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(children, timeout=15)


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[RunningServer]:
    """A real `hilum serve` process (2 receiving processes) on free ports."""
    running = start_server(settings, tmp_path)
    try:
        yield running
    finally:
        stop_server(running)


def require_tool(name: str) -> str:
    # System tools only: a venv may hold pynetdicom's own storescu/findscu apps.
    path = shutil.which(name, path="/usr/local/bin:/usr/bin:/bin")
    if path is None:
        pytest.fail(f"{name} is not installed (scripts/test.sh installs DCMTK / dicom3tools)")
    return path

# The web application's browser fixtures (browser, context, shots) for tests/test_webapp*.py.
pytest_plugins = ["webapp_util"]
