"""Health and statistics, for monitoring."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import func, select

from hilum import __version__
from hilum.index.models import instances_t, patients_t, series_t, studies_t
from hilum.web.deps import ServicesDep

router = APIRouter()


@router.get("/health")
def health(services: ServicesDep) -> dict[str, Any]:
    """Liveness and readiness: the index answers a query."""
    with services.engine.connect() as conn:
        conn.execute(select(1)).scalar()
    settings = services.settings
    return {
        "status": "ok",
        "version": __version__,
        "dicom": {"ae_title": settings.dicom.ae_title, "port": settings.dicom.port},
    }


@router.get("/statistics")
def statistics(services: ServicesDep) -> dict[str, Any]:
    """Counts and stored bytes, in total and per modality."""
    with services.engine.connect() as conn:
        totals = conn.execute(
            select(func.count(instances_t.c.id), func.coalesce(func.sum(instances_t.c.size_bytes), 0))
        ).one()
        per_modality = conn.execute(
            select(
                series_t.c.modality,
                func.count(func.distinct(series_t.c.study_pk)),
                func.count(instances_t.c.id),
                func.coalesce(func.sum(instances_t.c.size_bytes), 0),
            )
            .select_from(series_t.join(instances_t, instances_t.c.series_pk == series_t.c.id))
            .group_by(series_t.c.modality)
            .order_by(series_t.c.modality)
        ).all()
        return {
            "patients": conn.execute(select(func.count(patients_t.c.id))).scalar_one(),
            "studies": conn.execute(select(func.count(studies_t.c.id))).scalar_one(),
            "series": conn.execute(select(func.count(series_t.c.id))).scalar_one(),
            "instances": totals[0],
            "bytes": int(totals[1]),
            "modalities": [
                {"modality": m or "", "studies": s, "instances": n, "bytes": int(b)}
                for m, s, n, b in per_modality
            ],
        }
