"""The study/series/patient counters kept incrementally equal a full recount."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from factory import StudySpec, write_study
from hilum.app import Services
from hilum.config import DuplicatePolicy
from hilum.index.models import patients_t, series_t, studies_t
from hilum.index.writer import recount

pytestmark = pytest.mark.postgres  # SQL matters here: both back-ends


def _counters(services: Services) -> dict[str, list[tuple[object, ...]]]:
    with services.engine.connect() as conn:
        return {
            "series": [tuple(r) for r in conn.execute(
                select(series_t.c.id, series_t.c.num_instances).order_by(series_t.c.id))],
            "studies": [tuple(r) for r in conn.execute(
                select(studies_t.c.id, studies_t.c.num_series, studies_t.c.num_instances,
                       studies_t.c.size_bytes, studies_t.c.modalities_in_study,
                       studies_t.c.sop_classes_in_study).order_by(studies_t.c.id))],
            "patients": [tuple(r) for r in conn.execute(
                select(patients_t.c.id, patients_t.c.num_studies, patients_t.c.num_series,
                       patients_t.c.num_instances).order_by(patients_t.c.id))],
        }


def test_incremental_counters_match_a_full_recount(services: Services, tmp_path: Path) -> None:
    files: list[Path] = []
    files += write_study(StudySpec(patient_id="P1", series=3, slices=4, size=16), tmp_path / "a")
    files += write_study(StudySpec(patient_id="P1", series=1, slices=5, size=16), tmp_path / "b")
    files += write_study(
        StudySpec(patient_id="P2", modality="MR", series=2, slices=3, size=16), tmp_path / "c"
    )
    # Several threads, so the writer commits multi-instance batches.
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda p: services.ingest.ingest_file(p, source="t"), files))
    assert all(r.ok for r in results)

    # A replacement (different content, same SOP Instance UID) takes the recount path.
    ds = dcmread(files[0])
    ds.SeriesDescription = "changed"
    ds.save_as(tmp_path / "changed.dcm", enforce_file_format=True)
    services.ingest.ingest_staged(
        services.ingest.stage_copy(tmp_path / "changed.dcm"), source="t",
        policy=DuplicatePolicy.REPLACE,
    )

    incremental = _counters(services)
    with services.engine.begin() as conn:
        study_pks = set(conn.execute(select(studies_t.c.id)).scalars())
        recount(conn, studies=study_pks)
    assert _counters(services) == incremental
    studies = {row[0]: row for row in incremental["studies"]}
    assert sorted((r[1], r[2], r[4]) for r in studies.values()) == [
        (1, 5, "CT"), (2, 6, "MR"), (3, 12, "CT"),
    ]
    assert sorted(r[1:] for r in incremental["patients"]) == [(1, 2, 6), (2, 4, 17)]
