"""What the WADO-RS / WADO-URI routes share: locating stored instances and files."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from sqlalchemy import Connection

from hilum.app import Services
from hilum.domain.attributes import Level
from hilum.domain.errors import NotFound
from hilum.domain.query import Constraint, MatchKind, Query
from hilum.index.search import StoredInstance, matching_instances
from hilum.storage.base import Source, readable
from hilum.web.deps import checked_uid
from hilum.web.problems import Problem

CHUNK = 1 << 20


def _uid(keyword: str, value: str) -> Constraint:
    return Constraint(keyword, "UI", MatchKind.SINGLE, (checked_uid(value, keyword),))


def stored_instances(
    conn: Connection, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> list[StoredInstance]:
    """The instances under a study/series/instance path; NotFound when there are none."""
    constraints = [_uid("StudyInstanceUID", study_uid)]
    level = Level.STUDY
    if series_uid is not None:
        constraints.append(_uid("SeriesInstanceUID", series_uid))
        level = Level.SERIES
    if sop_uid is not None:
        constraints.append(_uid("SOPInstanceUID", sop_uid))
        level = Level.IMAGE
    found = matching_instances(conn, Query(level=level, constraints=constraints))
    if not found:
        what = {Level.STUDY: "study", Level.SERIES: "series", Level.IMAGE: "instance"}[level]
        raise NotFound(f"no such {what}: {sop_uid or series_uid or study_uid}")
    return found


def one_instance(services: Services, study_uid: str, series_uid: str, sop_uid: str) -> StoredInstance:
    with services.engine.connect() as conn:
        return stored_instances(conn, study_uid, series_uid, sop_uid)[0]


def local_file(services: Services, instance: StoredInstance) -> Source:
    """The stored file: a local path, or (encrypted at rest) read through the storage area."""
    path = readable(services.storage, instance.storage_key)
    if not path.exists():
        raise Problem(500, f"the stored file of instance {instance.sop_instance_uid} is missing")
    return path


def file_chunks(services: Services, instance: StoredInstance) -> Iterator[bytes]:
    # Opened now, not at the first iteration: a missing file, a wrong key or a damaged
    # header is a 500 problem before any header is sent, not a cut-off 200.
    handle = services.storage.open(instance.storage_key)
    return _chunks(handle)


def _chunks(handle: BinaryIO) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(CHUNK):
            yield chunk
