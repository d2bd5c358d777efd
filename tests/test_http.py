"""The HTTP server started by `hilum serve`: health and statistics."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from conftest import RunningServer, require_tool
from factory import StudySpec, write_study


def test_health_and_statistics_over_http(server: RunningServer, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{server.settings.http.port}"
    health = httpx.get(f"{base}/api/v1/health", timeout=10)
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["dicom"]["ae_title"] == server.ae_title

    files = write_study(StudySpec(slices=3), tmp_path / "in")
    subprocess.run(
        [require_tool("storescu"), "-aec", server.ae_title, "127.0.0.1", str(server.port),
         *map(str, files)],
        check=True,
    )
    stats = httpx.get(f"{base}/api/v1/statistics", timeout=10).json()
    assert (stats["patients"], stats["studies"], stats["series"], stats["instances"]) == (1, 1, 1, 3)
    assert stats["bytes"] > sum(f.stat().st_size for f in files) * 0.9
    assert stats["modalities"] == [
        {"modality": "CT", "studies": 1, "instances": 3, "bytes": stats["bytes"]}
    ]
    assert httpx.get(f"{base}/api/v1/openapi.json", timeout=10).status_code == 200
    assert httpx.get(f"{base}/api/v1/nothing-here", timeout=10).status_code == 404
