"""Engine creation and schema migration for the index (SQLite or PostgreSQL)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, inspect

LOG = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str, *, pool_size: int = 8) -> Engine:
    """Create an engine; SQLite gets WAL, full fsync, foreign keys and a busy timeout."""
    kwargs: dict[str, Any] = {"future": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 60}
        # The pysqlite driver's own transaction handling is turned off
        # so that BEGIN IMMEDIATE can be issued for writes (see writer.py).
        kwargs["pool_size"] = pool_size
        kwargs["max_overflow"] = 16
    else:
        kwargs["pool_size"] = pool_size
        kwargs["max_overflow"] = 8
        kwargs["pool_pre_ping"] = True
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself (below) instead of pysqlite.
        dbapi_connection.isolation_level = None
        # SQLite's upper() folds ASCII only; person names are matched on upper().
        dbapi_connection.create_function("upper", 1, _upper, deterministic=True)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed transaction survives power loss (PS: ingest acks
        # only after commit, so this is what makes an ack durable).
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # C-FIND wild card matching is case-sensitive except for PN (PS3.4 C.2.2.2.4),
        # as LIKE is on PostgreSQL; PN is matched on upper-cased key columns.
        cursor.execute("PRAGMA case_sensitive_like=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA cache_size=-65536")
        cursor.execute("PRAGMA temp_store=MEMORY")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.info.get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that reads and then writes: BEGIN IMMEDIATE on SQLite.

    A deferred SQLite transaction that has read cannot take the write lock once another
    connection has written meanwhile ("database is locked" at once, without waiting for
    the busy timeout); an immediate one takes the lock first, waiting its turn. A
    transaction whose first statement writes needs none of this (``engine.begin()``).
    """
    with engine.connect() as conn:
        conn.info["sqlite_begin"] = "IMMEDIATE"
        try:
            with conn.begin():
                yield conn
        finally:
            conn.info.pop("sqlite_begin", None)


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent)."""
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "heads")  # every branch (parallel work may add one)
    LOG.debug("index schema at head: %s", inspect(engine).get_table_names())
