"""CORS: a viewer on another origin (e.g. OHIF) may call DICOMweb only when configured."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from conftest import start_server, stop_server
from hilum.config import Settings

VIEWER = "http://viewer.example.org:3000"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_cors_allows_only_configured_origins(settings: Settings, tmp_path: Path) -> None:
    server = start_server(settings, tmp_path, env={"HILUM_HTTP__CORS_ORIGINS": json.dumps([VIEWER])})
    try:
        base = f"http://127.0.0.1:{settings.http.port}/dicomweb"
        preflight = httpx.options(
            f"{base}/studies",
            headers={
                "Origin": VIEWER,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "accept,authorization",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == VIEWER
        assert "GET" in preflight.headers["access-control-allow-methods"]
        search = httpx.get(f"{base}/studies", headers={"Origin": VIEWER, "Accept": "application/dicom+json"})
        assert search.status_code == 200
        assert search.headers["access-control-allow-origin"] == VIEWER
        assert "Content-Type" in search.headers["access-control-expose-headers"]

        other = httpx.get(f"{base}/studies", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        refused = httpx.options(
            f"{base}/studies",
            headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"},
        )
        assert refused.status_code == 400
    finally:
        stop_server(server)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_no_cors_headers_by_default(settings: Settings, tmp_path: Path) -> None:
    server = start_server(settings, tmp_path)
    try:
        reply = httpx.get(
            f"http://127.0.0.1:{settings.http.port}/dicomweb/studies", headers={"Origin": VIEWER}
        )
        assert reply.status_code == 200
        assert "access-control-allow-origin" not in reply.headers
    finally:
        stop_server(server)
