"""Wiring: build_services(settings) -> Services. No module-level globals."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import Engine

from hilum.config import RemoteAE, Settings
from hilum.domain.events import EventBus
from hilum.index.database import make_engine, upgrade
from hilum.index.nodes import RemoteNodes
from hilum.index.writer import IndexWriter
from hilum.ingest.service import IngestService
from hilum.storage.base import StorageArea
from hilum.storage.filesystem import FilesystemStorage

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
    extra: dict[str, object] = field(default_factory=dict)

    def close(self) -> None:
        self.writer.stop()
        self.engine.dispose()


def prepare(settings: Settings) -> None:
    """One-time start-up work, before any worker starts: dirs, schema, recovery."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    storage = FilesystemStorage(settings.storage_dir)
    removed = storage.recover()
    if removed:
        LOG.warning("removed %d interrupted transfer(s) from staging", removed)
    engine = make_engine(settings.index_url, pool_size=2)
    try:
        upgrade(engine)
        nodes = RemoteNodes(engine)
        for node in settings.remote_aes:
            nodes.upsert(node, from_config=True)
    finally:
        engine.dispose()


def build_services(settings: Settings) -> Services:
    """Build everything a process needs. Call :func:`prepare` once before."""
    engine = make_engine(settings.index_url)
    storage = FilesystemStorage(settings.storage_dir)
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
    )


__all__ = ["RemoteAE", "Services", "build_services", "prepare"]
