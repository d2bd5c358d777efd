"""Submitting jobs: check the request against the index and the known remote AEs."""

from __future__ import annotations

from sqlalchemy import select

from hilum.app import Services
from hilum.config import validate_ae_title
from hilum.domain.errors import HilumError, NotFound
from hilum.index.models import series_t, studies_t
from hilum.index.search import missing_studies
from hilum.jobs.repository import JobRecord, JobStore
from hilum.jobs.settings import JobSettings


class InvalidJob(HilumError):
    """A job request that cannot be run as asked (HTTP 400)."""


def submit_job(
    services: Services,
    store: JobStore,
    config: JobSettings,
    *,
    kind: str,
    study_instance_uids: list[str],
    series_instance_uid: str | None = None,
    destination: str | None = None,
    source: str | None = None,
    max_attempts: int | None = None,
    retry_delay: float | None = None,
    requested_by: str = "",
) -> JobRecord:
    """Queue a job. ``store``: Hilum sends the stored studies to the remote AE named
    ``destination``. ``move``: the remote AE named ``source`` is asked to C-MOVE the
    studies to the AE title ``destination`` (default: Hilum's own)."""
    uids = list(dict.fromkeys(uid.strip() for uid in study_instance_uids if uid.strip()))
    if not uids:
        raise InvalidJob("no study_instance_uid given")
    if series_instance_uid and len(uids) != 1:
        raise InvalidJob("series_instance_uid can only be given with exactly one study")
    if kind == "store":
        if source:
            raise InvalidJob("'source' is for move jobs; a store job sends Hilum's own instances")
        if not destination:
            raise InvalidJob("a store job needs a destination (a remote AE name)")
        services.nodes.get(destination)
        _check_stored(services, uids, series_instance_uid)
    elif kind == "move":
        if not source:
            raise InvalidJob("a move job needs a source (the remote AE name to move from)")
        services.nodes.get(source)
        try:
            destination = validate_ae_title(destination or services.settings.dicom.ae_title)
        except ValueError as exc:
            raise InvalidJob(f"destination: {exc}") from None
    else:
        raise InvalidJob(f"unknown job kind {kind!r} (store or move)")
    return store.create(
        kind=kind,
        source=source,
        destination=destination,
        params={"study_instance_uids": uids, "series_instance_uid": series_instance_uid or None,
                "requested_by": requested_by},
        max_attempts=max_attempts or config.max_attempts,
        retry_delay=config.retry_delay if retry_delay is None else retry_delay,
    )


def _check_stored(services: Services, uids: list[str], series_instance_uid: str | None) -> None:
    with services.engine.connect() as conn:
        missing = missing_studies(conn, uids)
        if missing:
            raise NotFound(f"study {missing[0]} is not stored in Hilum")
        if series_instance_uid:
            found = conn.execute(
                select(series_t.c.id)
                .join(studies_t, series_t.c.study_pk == studies_t.c.id)
                .where(
                    series_t.c.series_instance_uid == series_instance_uid,
                    studies_t.c.study_instance_uid == uids[0],
                )
            ).first()
            if found is None:
                raise NotFound(f"series {series_instance_uid} of study {uids[0]} is not stored in Hilum")
