"""`hilum serve`'s processes: none outlives it, whenever it is stopped or killed; a worker
whose index writer stops is replaced; what it writes is private.

Every server here is SQLite-only with two receiving processes and one HTTP process.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from conftest import REPO, free_port, hilum_env
from dimse_util import scu_ae, wait_for
from factory import StudySpec, make_study, write_study
from hilum.app import build_services, check_private, prepare
from hilum.config import Settings, load_settings
from hilum.domain.errors import IngestFailure

TAG = "HILUM_TEST_SERVER_TAG"


def _settings(tmp_path: Path, workers: int = 2) -> Settings:
    return load_settings(
        None, data_dir=tmp_path / "data",
        dicom={"ae_title": "HILUM", "port": free_port(), "host": "127.0.0.1", "workers": workers,
               "accept_unknown_aes": True},
        http={"port": free_port(), "workers": 1}, auth={"enabled": False},
    )


class Serve:
    """`hilum serve` as a subprocess under umask 022, every process of it tagged in its
    environment so that none escapes the count, even one whose parent is gone."""

    def __init__(self, settings: Settings, tmp_path: Path, env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.tag = uuid.uuid4().hex
        self.log = tmp_path / f"serve-{self.tag[:8]}.log"
        with self.log.open("wb") as handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hilum.cli", "serve", "--data-dir", str(settings.data_dir),
                 "--dicom-port", str(settings.dicom.port), "--http-port", str(settings.http.port),
                 "--host", "127.0.0.1", "--workers", str(settings.dicom.workers)],
                stdout=handle, stderr=subprocess.STDOUT, umask=0o022,
                env={**hilum_env(settings), TAG: self.tag, **(env or {})},
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def processes(self) -> list[psutil.Process]:
        """Every live process of this server (the parent, its workers, the resource tracker)."""
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get(TAG) == self.tag and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def workers(self) -> list[psutil.Process]:
        return [p for p in self.processes() if p.pid != self.process.pid]

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                raise AssertionError(f"server exited before {what}:\n{self.text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} in {timeout} s:\n{self.text()}")
            time.sleep(0.05)

    def ready(self) -> bool:
        return "Hilum: DICOM" in self.text()

    def kill_all(self) -> None:
        for proc in self.processes():
            try:
                proc.kill()
            except psutil.Error:
                pass


def _spawned(serve: Serve, count: int) -> Callable[[], bool]:
    return lambda: sum("spawn_main" in " ".join(p.cmdline()) for p in serve.workers()) >= count


def _after(seconds: float) -> Callable[[Serve], None]:
    def wait(serve: Serve) -> None:
        time.sleep(seconds)
    return wait


def _first_worker(serve: Serve) -> None:
    serve.wait_until(_spawned(serve, 1), "first worker")


def _all_workers_then(seconds: float) -> Callable[[Serve], None]:
    def wait(serve: Serve) -> None:
        serve.wait_until(_spawned(serve, 3), "three workers")
        time.sleep(seconds)
    return wait


def _ready(serve: Serve) -> None:
    serve.wait_until(serve.ready, "ready line")


MOMENTS = {
    "SIGTERM-at-0.3s": (signal.SIGTERM, _after(0.3)),
    "SIGTERM-first-worker-spawned": (signal.SIGTERM, _first_worker),
    "SIGTERM-workers-starting": (signal.SIGTERM, _all_workers_then(1.0)),
    "SIGTERM-after-ready": (signal.SIGTERM, _ready),
    "SIGKILL-workers-spawned": (signal.SIGKILL, _all_workers_then(0.0)),
    "SIGKILL-after-ready": (signal.SIGKILL, _ready),
}


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_no_process_outlives_a_stopped_or_killed_server(moment: str, tmp_path: Path) -> None:
    signum, wait = MOMENTS[moment]
    settings = _settings(tmp_path)
    if moment == "SIGTERM-after-ready":  # also: a data directory open to everyone is reported
        settings.data_dir.mkdir(mode=0o755)
        os.chmod(settings.data_dir, 0o755)
    serve = Serve(settings, tmp_path)
    try:
        wait(serve)
        before = serve.workers()
        serve.process.send_signal(signum)
        serve.process.wait(timeout=60)
        deadline = time.monotonic() + 60  # workers die at once; the wait is for a loaded machine
        while (left := serve.processes()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert left == [], f"{moment}: still running {[p.cmdline() for p in left]}\n{serve.text()}"
        if signum == signal.SIGTERM:
            # 0: it stopped itself; -SIGTERM: the signal came before `hilum serve` had set up
            # anything (the interpreter was still starting)
            assert serve.process.returncode in (0, -signal.SIGTERM), serve.text()
            if moment == "SIGTERM-after-ready":
                assert serve.process.returncode == 0 and len(before) >= 3, serve.text()
                data_dir = settings.data_dir.resolve()
                warning = [line for line in serve.text().splitlines() if "is mode 0755" in line]
                assert len(warning) == 1 and f"data directory {data_dir} is mode 0755" in warning[0]
        assert _bindable(settings.dicom.port) and _bindable(settings.http.port)
    finally:
        serve.kill_all()


def _store(settings: Settings, datasets: list, timeout: float = 30) -> list[int]:
    """C-STORE ``datasets`` on one association: their statuses (-1: no answer)."""
    ae = scu_ae()
    ae.dimse_timeout = timeout
    ae.add_requested_context(datasets[0].SOPClassUID, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", settings.dicom.port, ae_title="HILUM")
    if not assoc.is_established:
        return [-1] * len(datasets)
    statuses = []
    for ds in datasets:
        status = assoc.send_c_store(ds) if assoc.is_established else None
        statuses.append(int(status.Status) if status is not None and "Status" in status else -1)
    if assoc.is_established:
        assoc.release()
    return statuses


def test_worker_whose_index_writer_stops_is_replaced(tmp_path: Path) -> None:
    """The writer thread of the only receiving process stops (tests/process_hooks): the
    C-STORE that was waiting fails at once, the process exits and a new one receives."""
    settings = _settings(tmp_path, workers=1)
    hooks = str(REPO / "tests" / "process_hooks")
    env = {"HILUM_TEST_STOP_WRITER_FOR": "STOP-WRITER",
           "PYTHONPATH": os.pathsep.join([hooks, os.environ.get("PYTHONPATH", "")])}
    serve = Serve(settings, tmp_path, env)
    try:
        serve.wait_until(serve.ready, "ready line")
        poisoned = make_study(StudySpec(patient_id="STOP-WRITER", slices=1))
        started = time.monotonic()
        (status,) = _store(settings, poisoned, timeout=20)
        assert status != 0x0000 and time.monotonic() - started < 15, (hex(status), serve.text())
        wait_for(lambda: "exited (70); restarting" in serve.text(), 30, "the worker's exit")
        healthy = make_study(StudySpec(patient_id="FINE", slices=3))

        def stored() -> bool:
            return _store(settings, healthy) == [0, 0, 0]

        wait_for(stored, 90, "C-STOREs succeeding on the new worker")
        assert "the index writer stopped" in serve.text()
    finally:
        serve.process.terminate()
        try:
            serve.process.wait(timeout=30)
        finally:
            serve.kill_all()


def test_stopped_or_failed_index_writer_fails_writes_clearly(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    prepare(settings)
    services = build_services(settings)
    files = write_study(StudySpec(slices=3), tmp_path / "in")
    try:
        services.ingest.ingest_file(files[0], source="test")
        services.writer.stop()
        # submitting after stop() used to restart the Thread object: "threads can only be
        # started once", on every request
        with pytest.raises(IngestFailure, match="index writer has stopped"):
            services.ingest.ingest_file(files[1], source="test")
        services.writer.start()  # a clean restart: a new thread
        assert services.ingest.ingest_file(files[1], source="test").ok

        failures: list[str] = []
        services.writer.on_failure = failures.append

        def broken(batch: list) -> None:
            raise RuntimeError("disk on fire")

        services.writer._process = broken  # type: ignore[method-assign]
        outcome: list[BaseException | object] = []

        def ingest() -> None:
            try:
                outcome.append(services.ingest.ingest_file(files[2], source="test"))
            except BaseException as exc:
                outcome.append(exc)

        caller = threading.Thread(target=ingest, daemon=True)
        caller.start()
        caller.join(timeout=20)
        assert outcome, "the write waited forever on a writer thread that had stopped"
        assert isinstance(outcome[0], IngestFailure) and "disk on fire" in str(outcome[0])
        assert failures == ["the index writer stopped: RuntimeError: disk on fire"]
        assert services.writer.failure == failures[0]
        with pytest.raises(IngestFailure, match="disk on fire"):
            services.ingest.ingest_file(files[2], source="test")
    finally:
        services.close()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_data_directory_and_files_are_private_under_umask_022(tmp_path: Path) -> None:
    settings = _settings(tmp_path, workers=1)
    serve = Serve(settings, tmp_path)
    try:
        serve.wait_until(serve.ready, "ready line")
        assert _store(settings, make_study(StudySpec(slices=1))) == [0]
    finally:
        serve.process.terminate()
        serve.process.wait(timeout=60)
        serve.kill_all()
    data = settings.data_dir
    assert _mode(data) == 0o700
    files = [p for p in data.rglob("*") if p.is_file()]
    assert {"index.sqlite", "hilum.lock"} <= {p.name for p in files}
    stored = [p for p in (data / "storage").rglob("*") if p.is_file() and "staging" not in str(p)]
    assert stored, "the C-STORE left no file in storage"
    wide = {str(p.relative_to(data)): oct(_mode(p)) for p in files if _mode(p) & 0o077}
    assert wide == {}, wide
    wide_dirs = {str(p.relative_to(data)): oct(_mode(p)) for p in data.rglob("*")
                 if p.is_dir() and _mode(p) & 0o077}
    assert wide_dirs == {}, wide_dirs
    assert "is mode" not in serve.text()


def test_wide_data_directory_and_index_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = _settings(tmp_path)
    settings.data_dir.mkdir()
    (settings.data_dir / "index.sqlite").touch()
    os.chmod(settings.data_dir, 0o755)
    os.chmod(settings.data_dir / "index.sqlite", 0o640)
    check_private(settings)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert f"data directory {settings.data_dir.resolve()} is mode 0755: other users" in lines[0]
    assert f"index {settings.data_dir.resolve() / 'index.sqlite'} is mode 0640: the group" in lines[1]
    caplog.clear()
    check_private(settings.model_copy(update={"data_dir_group_access": True}))
    assert [r.getMessage() for r in caplog.records] == [lines[0].replace(
        "(chmod 700 it, or set data_dir_group_access for a group)", "(chmod 750 it)")]
