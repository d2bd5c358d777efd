"""Crash consistency: SIGKILL mid-transfer, restart, and the archive is still whole.

The guarantees (see hilum.ingest.service): success is acknowledged only once
file and index row are durable; a crash leaves no index row without its file
and no half-written file under a key, only leftovers in staging, which are
removed at start-up. A refused instance leaves nothing behind.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psutil
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from sqlalchemy import func, select

from conftest import RunningServer, free_port, start_server, stop_server
from factory import StudySpec, write_study
from hilum.app import Services
from hilum.config import Settings
from hilum.domain.errors import IngestFailure, IngestStatus
from hilum.index import writer as writer_module
from hilum.index.database import make_engine
from hilum.index.models import Change, Instance, Patient, Series, Study
from hilum.ingest.service import content_sha256
from hilum.storage.filesystem import FilesystemStorage

SLICES = 100
SENDERS = 2
DICOM_WORKERS = 2  # the senders' associations land in different receiving processes


def kill_server_tree(server: RunningServer) -> int:
    """SIGKILL `hilum serve` and every process it spawned (receiving workers, tracker)."""
    parent = psutil.Process(server.process.pid)
    children = parent.children(recursive=True)
    parent.kill()  # first, so the supervisor cannot restart a worker
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    server.process.wait(timeout=30)
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, alive
    return len(children)


def send(
    port: int, ae_title: str, files: list[Path], acked: list[str], done: list[int],
    timeout: float = 30,
) -> None:
    """C-STORE ``files``; record the SOP Instance UIDs whose success status arrived."""
    ae = AE(ae_title="CRASHSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    # pynetdicom may notice a dead peer only when the DIMSE timeout expires.
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    if not assoc.is_established:
        return
    try:
        for path in files:
            try:
                status = assoc.send_c_store(path)
            except Exception:  # the peer died under us
                return
            if status and status.get("Status") == 0x0000:
                acked.append(path.stem)  # write_study names files by SOP Instance UID
            if not assoc.is_established:
                return
        done.append(1)
    finally:
        if assoc.is_established:
            assoc.release()


def check_index_against_storage(settings: Settings) -> set[str]:
    """Every instance row has its file, with the recorded size and SHA-256."""
    storage = FilesystemStorage(settings.storage_dir)
    engine = make_engine(settings.index_url, pool_size=1)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(
                    Instance.sop_instance_uid, Instance.storage_key, Instance.size_bytes,
                    Instance.sha256,
                )
            ).all()
            per_series = conn.execute(select(Series.num_instances)).scalars().all()
    finally:
        engine.dispose()
    for uid, key, size, sha256 in rows:
        assert storage.exists(key), f"{uid}: no file for key {key}"
        data = b"".join(storage.open_range(key, 0, size + 1))
        assert len(data) == size, f"{uid}: size {len(data)} != {size}"
        assert content_sha256(data) == sha256, f"{uid}: content differs"
    assert sum(per_series) == len(rows)  # the aggregates were committed with the rows
    return {uid for uid, *_ in rows}


@pytest.mark.postgres  # what the database committed before the kill: both back-ends
def test_sigkill_mid_transfer_then_restart(settings: Settings, tmp_path: Path) -> None:
    files = write_study(StudySpec(patient_id="CRASH", slices=SLICES, size=256), tmp_path / "in")
    server = start_server(settings, tmp_path)
    acked: list[str] = []
    done: list[int] = []
    threads = [
        threading.Thread(
            target=send,
            args=(server.port, server.ae_title, files[i::SENDERS], acked, done, 5),
            daemon=True,
        )
        for i in range(SENDERS)
    ]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while len(acked) < 12 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(acked) >= 12, "the transfer did not get going"
        killed = kill_server_tree(server)
    except BaseException:
        stop_server(server)
        raise
    assert killed >= SENDERS  # the receiving workers died too
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()
    acknowledged = set(acked)
    assert len(acknowledged) < SLICES and not done, "the kill came after the transfer ended"

    # Restart on the same data dir and index (fresh ports).
    restarted = settings.model_copy(
        update={
            "dicom": settings.dicom.model_copy(update={"port": free_port()}),
            "http": settings.http.model_copy(update={"port": free_port()}),
        }
    )
    server = start_server(restarted, tmp_path)
    try:
        staging = restarted.storage_dir / ".staging"
        assert list(staging.iterdir()) == [], "start-up left interrupted transfers in staging"
        stored = check_index_against_storage(restarted)
        missing = acknowledged - stored
        assert not missing, f"{len(missing)} acknowledged instance(s) lost: {sorted(missing)[:3]}"

        # The restarted archive takes the whole series; what was stored is not duplicated.
        acked_again: list[str] = []
        send(server.port, server.ae_title, files, acked_again, [])
        assert len(acked_again) == SLICES
        assert check_index_against_storage(restarted) == {p.stem for p in files}
    finally:
        stop_server(server)


# -- unit level: a failing index write leaves nothing behind ----------------------------
def counts(services: Services) -> dict[str, int]:
    with services.engine.connect() as conn:
        return {
            model.__tablename__: conn.execute(select(func.count()).select_from(model)).scalar_one()
            for model in (Patient, Study, Series, Instance, Change)
        }


def assert_nothing_left(services: Services) -> None:
    assert list(services.storage.keys()) == []
    assert list(services.storage.staging_dir().iterdir()) == []
    assert set(counts(services).values()) == {0}


def _boom(*_args: object, **_kwargs: object) -> None:
    raise RuntimeError("simulated index failure")


@pytest.mark.parametrize("where", ["transaction", "inside-transaction"])
@pytest.mark.postgres  # a failed transaction rolls back: both back-ends
def test_failed_index_write_leaves_no_file_and_no_rows(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    files = write_study(StudySpec(slices=2, size=16), tmp_path / "in")
    if where == "transaction":
        monkeypatch.setattr(services.writer, "_transaction", _boom)
    else:
        # Fails after the rows were inserted, before commit: they must be rolled back.
        monkeypatch.setattr(writer_module.Aggregates, "apply", _boom)
    for path in files:
        with pytest.raises(IngestFailure) as info:
            services.ingest.ingest_file(path, source="test")
        assert info.value.status is IngestStatus.PROCESSING_FAILURE
        assert "simulated index failure" in info.value.message
    assert_nothing_left(services)
    assert all(p.exists() for p in files)  # the sources are untouched

    # Once the index works again, the same files go in.
    monkeypatch.undo()
    for path in files:
        assert services.ingest.ingest_file(path, source="test").ok
    assert counts(services)["instances"] == len(files)
    assert len(list(services.storage.keys())) == len(files)


def test_failed_storage_sync_leaves_no_file_and_no_rows(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (path,) = write_study(StudySpec(slices=1, size=16), tmp_path / "in")

    def no_sync(_receipts: object) -> None:
        raise OSError(5, "simulated I/O error")

    monkeypatch.setattr(services.storage, "sync", no_sync)
    with pytest.raises(IngestFailure) as info:
        services.ingest.ingest_file(path, source="test")
    assert info.value.status is IngestStatus.OUT_OF_RESOURCES
    assert_nothing_left(services)


def test_refused_instance_leaves_nothing(services: Services, tmp_path: Path) -> None:
    (path,) = write_study(StudySpec(slices=1, size=16), tmp_path / "in")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(IngestFailure) as info:
        services.ingest.ingest_file(truncated, source="test")
    assert info.value.status is IngestStatus.NOT_DICOM
    assert_nothing_left(services)
    assert os.path.getsize(truncated) > 0
