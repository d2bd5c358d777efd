"""The Alembic migrations produce exactly the schema the models declare."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from hilum.app import prepare
from hilum.config import Settings
from hilum.index.database import make_engine, upgrade
from hilum.index.models import Base


def test_migrated_schema_matches_the_models(settings: Settings) -> None:
    prepare(settings)
    engine = make_engine(settings.index_url, pool_size=1)
    try:
        upgrade(engine)  # idempotent: a second run changes nothing
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    finally:
        engine.dispose()
