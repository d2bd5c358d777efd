"""Wiring: build_services(settings) -> Services. No module-level globals."""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from hilum.audit.service import AuditService
from hilum.config import RemoteAE, Settings
from hilum.domain.errors import HilumError
from hilum.domain.events import EventBus
from hilum.index.database import make_engine, upgrade
from hilum.index.nodes import RemoteNodes
from hilum.index.writer import IndexWriter
from hilum.ingest.service import IngestService
from hilum.storage.base import StorageArea
from hilum.storage.factory import open_storage

LOG = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    engine: Engine
    storage: StorageArea
    events: EventBus
    writer: IndexWriter
    ingest: IngestService
    nodes: RemoteNodes
    audit: AuditService

    def close(self) -> None:
        self.writer.stop()
        self.audit.close()  # after the writer: the last stored instances get their records
        self.engine.dispose()


class DataDirLock:
    """Only one `hilum serve` may own a data directory (it sweeps staging at start)."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = data_dir / "hilum.lock"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise HilumError(
                f"another 'hilum serve' is already using {data_dir.resolve()}"
            ) from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def prepare(settings: Settings, *, recover: bool = False) -> None:
    """One-time start-up work: directories and schema; with ``recover`` (only
    `hilum serve`, holding the DataDirLock), remove interrupted transfers."""
    create_private(settings)
    # Unusable encryption settings (no key, wrong key) stop here, before anything runs.
    storage = open_storage(settings, startup=True)
    if recover:
        removed = storage.recover()
        if removed:
            LOG.warning("removed %d interrupted transfer(s) from staging", removed)
    engine = make_engine(settings.index_url, pool_size=2)
    try:
        upgrade(engine)
        nodes = RemoteNodes(engine)
        for node in settings.remote_aes:
            nodes.upsert(node, from_config=True)
        if recover:  # `hilum serve` starting: Application Start now, Application Stop at exit
            record_application_activity(settings, engine, started=True)
            atexit.register(_application_stopped, settings)
    finally:
        engine.dispose()


def _sqlite_index(settings: Settings) -> Path | None:
    return None if settings.database_url else settings.data_dir / "index.sqlite"


def create_private(settings: Settings) -> None:
    """The data directory (0700) and the SQLite index (0600; SQLite gives its -wal and
    -shm files the index's mode), whatever the umask; 0750 / 0640 with
    ``data_dir_group_access``. Existing ones keep their modes (see check_private)."""
    group = settings.data_dir_group_access
    settings.data_dir.mkdir(mode=0o750 if group else 0o700, parents=True, exist_ok=True)
    index = _sqlite_index(settings)
    if index is not None:
        try:
            os.close(os.open(index, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640 if group else 0o600))
        except FileExistsError:
            pass


def check_private(settings: Settings) -> None:
    """Warn (one line each) when the data directory or the SQLite index is open to more
    users than the settings allow: it holds patient data and password hashes."""
    group = settings.data_dir_group_access
    allowed = 0o750 if group else 0o700
    for what, path in (("data directory", settings.data_dir), ("index", _sqlite_index(settings))):
        if path is None:
            continue
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:
            continue
        if mode & ~allowed & 0o077:
            who = "other users" if mode & 0o007 else "the group"
            fix = allowed if path.is_dir() else allowed & 0o666
            LOG.warning(
                "%s %s is mode %04o: %s can read or change patient data (chmod %o it%s)",
                what, path.resolve(), mode, who, fix,
                "" if group else ", or set data_dir_group_access for a group",
            )


def record_application_activity(settings: Settings, engine: Engine, *, started: bool) -> None:
    """Write an Application Start / Stop audit record (PS3.15 A.5.3.1) at once."""
    audit = AuditService(settings, engine)
    audit.application_activity(started=started)
    audit.close()


def _application_stopped(settings: Settings) -> None:
    engine = make_engine(settings.index_url, pool_size=1)
    try:
        record_application_activity(settings, engine, started=False)
    except Exception:
        LOG.exception("cannot record the Application Stop audit message")
    finally:
        engine.dispose()


def build_services(settings: Settings) -> Services:
    """Build everything a process needs. Call :func:`prepare` once before."""
    engine = make_engine(settings.index_url)
    storage = open_storage(settings)
    events = EventBus()
    writer = IndexWriter(engine, storage)
    ingest = IngestService(
        engine=engine,
        storage=storage,
        writer=writer,
        events=events,
        duplicate_policy=settings.dicom.duplicate_policy,
    )
    return Services(
        settings=settings,
        engine=engine,
        storage=storage,
        events=events,
        writer=writer,
        ingest=ingest,
        nodes=RemoteNodes(engine),
        audit=AuditService(settings, engine, events),
    )


__all__ = ["RemoteAE", "Services", "build_services", "check_private", "create_private", "prepare"]
