"""The HTTP application. For now: health and statistics for monitoring.

DICOMweb and the management API attach here (see the DICOMweb issue).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from sqlalchemy import Engine, func, select

from hilum import __version__
from hilum.config import Settings
from hilum.index.models import instances_t, patients_t, series_t, studies_t


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


EngineDep = Annotated[Engine, Depends(get_engine)]


def create_app(settings: Settings, engine: Engine) -> FastAPI:
    app = FastAPI(
        title="Hilum",
        version=__version__,
        docs_url="/api/docs",
        openapi_url="/api/v1/openapi.json",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine

    @app.get("/api/v1/health", tags=["system"])
    def health(engine: EngineDep) -> dict[str, Any]:
        """Liveness and readiness: the index answers a query."""
        with engine.connect() as conn:
            conn.execute(select(1)).scalar()
        return {
            "status": "ok",
            "version": __version__,
            "dicom": {"ae_title": settings.dicom.ae_title, "port": settings.dicom.port},
        }

    @app.get("/api/v1/statistics", tags=["system"])
    def statistics(engine: EngineDep) -> dict[str, Any]:
        """Counts and stored bytes, in total and per modality."""
        with engine.connect() as conn:
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

    return app
