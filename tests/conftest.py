"""Shared fixtures: settings and services on SQLite (and PostgreSQL where SQL matters), a real server.

Back-ends: a test that takes ``settings``, ``services``, ``server`` or ``database_url``
runs on SQLite (``[sqlite]``); in a module or test marked ``@pytest.mark.postgres`` (SQL,
transactions or concurrency matter there: search, the writer, migrations, QIDO, reading
status, the change feed, jobs, lockouts) it runs once per back-end: ``[sqlite]`` and
``[postgresql]`` (a fresh database on the server at 127.0.0.1:5432, dropped afterwards).
Module-scoped servers choose with :data:`BACKENDS` (both) or :data:`DEFAULT_BACKENDS`.
HILUM_TEST_BACKENDS=sqlite runs only one back-end everywhere; HILUM_TEST_EVERY_BACKEND=1
runs every test on every back-end.

Migrations run once per test process into a template (a PostgreSQL template database, a
SQLite file) that each new index is copied from; tests marked ``unmigrated`` start from an
empty index.
"""

from __future__ import annotations

import atexit
import itertools
import os
import queue
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
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
DEFAULT_BACKENDS = BACKENDS if os.environ.get("HILUM_TEST_EVERY_BACKEND") else BACKENDS[:1]

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


class _Templates:
    """Migrated indexes to copy, made once per test process: a PostgreSQL template
    database and a SQLite file. Databases are dropped by a background thread (a DROP
    DATABASE waits for a checkpoint: seconds each)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pg: str | None = None
        self._sqlite: Path | None = None
        self._drops: queue.Queue[str | None] = queue.Queue()
        self._dropper: threading.Thread | None = None

    def _migrate(self, url: str, data_dir: Path) -> None:
        settings = load_settings(None, data_dir=data_dir, database_url=url, auth={"enabled": False})
        prepare(settings)

    def sqlite_index(self) -> Path:
        with self._lock:
            if self._sqlite is None:
                folder = Path(tempfile.mkdtemp(prefix="hilum-template-"))
                atexit.register(shutil.rmtree, folder, True)
                self._migrate("", folder / "data")
                self._sqlite = folder / "data" / "index.sqlite"
            return self._sqlite

    def pg_template(self) -> str:
        with self._lock:
            if self._pg is None:
                import psycopg

                name = f"hilum_test_tmpl_{uuid.uuid4().hex[:12]}"
                with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                    conn.execute(f'CREATE DATABASE "{name}"')
                folder = Path(tempfile.mkdtemp(prefix="hilum-template-"))
                try:
                    self._migrate(pg_url(name), folder / "data")
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
                self._pg = name
                atexit.register(self.drop_now, name)
            return self._pg

    def drop_later(self, name: str) -> None:
        with self._lock:
            if self._dropper is None:
                self._dropper = threading.Thread(target=self._drop_loop, name="pg-dropper", daemon=True)
                self._dropper.start()
                atexit.register(self._finish_drops)
        self._drops.put(name)

    def _drop_loop(self) -> None:
        while (name := self._drops.get()) is not None:
            try:
                self.drop_now(name)
            except Exception as exc:  # a leftover test database is not a test failure
                print(f"cannot drop test database {name}: {exc}", file=sys.stderr)

    def _finish_drops(self) -> None:
        self._drops.put(None)
        if self._dropper is not None:
            self._dropper.join(timeout=120)

    @staticmethod
    def drop_now(name: str) -> None:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


TEMPLATES = _Templates()


def pg_url(name: str) -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    return f"{base}/{name}"


@contextmanager
def backend_url(backend: str, *, migrated: bool = True) -> Iterator[str]:
    """An index URL: "" (SQLite inside data_dir) or a fresh PostgreSQL database, dropped
    after. ``migrated``: a copy of the migrated template (else an empty database)."""
    if backend == "sqlite":
        yield ""
        return
    import psycopg

    name = f"hilum_test_{uuid.uuid4().hex[:12]}"
    template = f' TEMPLATE "{TEMPLATES.pg_template()}"' if migrated else ""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{template}')
    try:
        yield pg_url(name)
    finally:
        TEMPLATES.drop_later(name)


def seed_index(settings: Settings) -> None:
    """A SQLite index not made yet starts as a copy of the migrated template."""
    if settings.database_url:
        return
    index = settings.data_dir / "index.sqlite"
    if not index.exists():
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.copyfile(TEMPLATES.sqlite_index(), index)
        index.chmod(0o600)


def _backend_params(metafunc: pytest.Metafunc) -> list[str]:
    return BACKENDS if metafunc.definition.get_closest_marker("postgres") else DEFAULT_BACKENDS


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "database_url" not in metafunc.fixturenames:
        return
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        if "database_url" in (names.split(",") if isinstance(names, str) else names):
            return
    metafunc.parametrize("database_url", _backend_params(metafunc), indirect=True)


# The longest test files (measured; docs/development.md) start first: pytest-xdist hands
# out whole files in collection order, and a long file started last keeps the other
# processes idle at the end of the run.
LONGEST_FIRST = (
    "test_jobs.py", "test_api_resources.py", "test_audit.py", "test_lockout.py", "test_reading.py",
    "test_encryption.py", "test_webapp.py", "test_api_changes.py", "test_dimse_store.py",
    "test_dimse_permissions.py", "test_process_lifecycle.py", "test_dimse_retrieve.py",
    "test_dimse_tls.py", "test_crash_consistency.py", "test_auth.py", "test_export_cli.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file kept


@pytest.fixture
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    migrated = request.node.get_closest_marker("unmigrated") is None
    with backend_url(request.param, migrated=migrated) as url:
        yield url


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path, database_url: str) -> Settings:
    """``DICOM_WORKERS`` in a test module: receiving processes of its servers (default 1)."""
    made = load_settings(
        None,
        data_dir=tmp_path / "data",
        database_url=database_url,
        # The archive's tests talk to it from DCMTK tools with many AE titles: admit
        # unknown AEs (the default refuses them; tests/test_dimse_permissions.py).
        dicom={"ae_title": "HILUM", "port": free_port(), "host": "127.0.0.1",
               "workers": getattr(request.module, "DICOM_WORKERS", 1), "accept_unknown_aes": True},
        http={"port": free_port()},
        # The archive's tests run without logging in (tests/test_auth.py turns it on).
        auth={"enabled": False},
    )
    if request.node.get_closest_marker("unmigrated") is None:
        seed_index(made)
    return made


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
    seed_index(settings)
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
    """A real `hilum serve` process on free ports (``DICOM_WORKERS`` receiving processes)."""
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
