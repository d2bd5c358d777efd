"""The Alembic migrations produce exactly the schema the models declare."""

from __future__ import annotations

from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from hilum.app import prepare
from hilum.config import Settings
from hilum.index.database import make_engine, upgrade
from hilum.index.models import Base

pytestmark = [pytest.mark.postgres, pytest.mark.unmigrated]  # from an empty index, on both back-ends


def _for_this_database(dialect: str) -> Any:
    """Alembic's include_object: leave out what the models create on another database only
    (``Index(...).ddl_if(dialect=...)``)."""

    def include(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        only = getattr(obj, "_ddl_if", None)
        return only is None or only.dialect is None or only.dialect == dialect

    return include


def test_migrated_schema_matches_the_models(settings: Settings) -> None:
    prepare(settings)
    engine = make_engine(settings.index_url, pool_size=1)
    try:
        upgrade(engine)  # idempotent: a second run changes nothing
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"include_object": _for_this_database(conn.dialect.name)}
            )
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()
