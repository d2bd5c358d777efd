"""Instances' DICOM JSON models from the index (WADO-RS metadata, QIDO-RS extra attributes).

Models are prepared at ingest; rows stored before that (dicom_json NULL) are
backfilled from their file the first time they are asked for, so an upgrade
needs no reindex outage.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from hilum.dicom.jsonmodel import instance_json, pack, unpack
from hilum.dicom.parsing import read_header
from hilum.domain.errors import IngestFailure, NotFound
from hilum.index.models import instances_t, series_t, studies_t
from hilum.storage.base import StorageArea, StorageError, readable

LOG = logging.getLogger(__name__)
I, SE, S = instances_t, series_t, studies_t  # noqa: E741


@dataclass(frozen=True, slots=True)
class StoredModel:
    pk: int
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    storage_key: str
    packed: bytes | None


def _select() -> Any:
    return select(
        I.c.id,
        S.c.study_instance_uid,
        SE.c.series_instance_uid,
        I.c.sop_instance_uid,
        I.c.storage_key,
        I.c.dicom_json,
    ).select_from(I.join(SE, I.c.series_pk == SE.c.id).join(S, SE.c.study_pk == S.c.id))


def models_of(
    conn: Connection, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> list[StoredModel]:
    """The stored models under a study / series / instance, in series and instance order."""
    stmt = _select().where(S.c.study_instance_uid == study_uid)
    if series_uid is not None:
        stmt = stmt.where(SE.c.series_instance_uid == series_uid)
    if sop_uid is not None:
        stmt = stmt.where(I.c.sop_instance_uid == sop_uid)
    stmt = stmt.order_by(SE.c.series_number, SE.c.id, I.c.instance_number, I.c.id)
    rows = [StoredModel(*row) for row in conn.execute(stmt)]
    if not rows:
        what = "instance" if sop_uid else "series" if series_uid else "study"
        raise NotFound(f"no such {what}: {sop_uid or series_uid or study_uid}")
    return rows


def models_by_pk(conn: Connection, pks: Iterable[int]) -> dict[int, StoredModel]:
    wanted = list(pks)
    if not wanted:
        return {}
    return {row[0]: StoredModel(*row) for row in conn.execute(_select().where(I.c.id.in_(wanted)))}


def json_text(engine: Engine, storage: StorageArea, model: StoredModel) -> bytes:
    """The model's JSON text (bulk data URIs still relative), backfilling it if missing."""
    if model.packed is not None:
        return unpack(model.packed)
    packed = _backfill(engine, storage, model)
    return unpack(packed) if packed is not None else b"{}"


def json_texts(engine: Engine, storage: StorageArea, models: Iterable[StoredModel]) -> Iterator[bytes]:
    for model in models:
        yield json_text(engine, storage, model)


def as_dict(engine: Engine, storage: StorageArea, model: StoredModel) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(json_text(engine, storage, model))
    return result


def _backfill(engine: Engine, storage: StorageArea, model: StoredModel) -> bytes | None:
    try:
        header = read_header(readable(storage, model.storage_key))
        packed = pack(
            instance_json(header, model.study_instance_uid, model.series_instance_uid, model.sop_instance_uid)
        )
    except (IngestFailure, OSError, StorageError) as exc:
        LOG.error("cannot build the DICOM JSON of instance %s: %s", model.sop_instance_uid, exc)
        return None
    with engine.begin() as conn:
        conn.execute(update(I).where(I.c.id == model.pk).values(dicom_json=packed))
    return packed
