"""Hostile HTTP input against a server with authentication on (issue 4's test list).

* Path traversal in every path parameter of every route in the OpenAPI schema
  (and in the web app's static paths and WADO-URI's query): never a file from
  outside the archive, never a server error.
* Oversized and malformed uploads and request bodies: a clear 4xx problem,
  nothing stored, no staging leftovers, and the server keeps serving.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from auth_util import base_url, start_secure_server
from auth_util import token as bearer_token
from conftest import RunningServer, hilum_env, stop_server
from dimse_util import snapshot
from factory import StudySpec, stow_study
from hilum.config import Settings, load_settings

ON = {"HILUM_HTTP__MAX_UPLOAD_BYTES": str(4 * 1024 * 1024)}
STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=B'
# What must never appear in an answer: the start of /etc/passwd, or a Python traceback.
LEAKS = re.compile(r"root:x?:0:0|Traceback \(most recent call last\)|/etc/passwd:")
TRAVERSALS = [
    "../../../../../../etc/passwd",
    "..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "..%252f..%252fetc%252fpasswd",
    "....//....//etc/passwd",
    "..\\..\\..\\windows\\win.ini",
    "%2fetc%2fpasswd",
    "1.2.3%00../../etc/passwd",
    "1.2.840.10008.1.2/../../../../etc/passwd",
]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, str, Any]]:
    server, password = start_secure_server(tmp_path_factory.mktemp("hostile"), env=ON)
    try:
        base = base_url(server)
        token = bearer_token(base, "admin", password)
        [first, *_] = stow_study(base, StudySpec(patient_id="HOSTILE", slices=2), token)
        yield server, token, first
    finally:
        stop_server(server)
    assert "Traceback" not in server.log.read_text(), server.log.read_text()[-4000:]


def _check(reply: httpx.Response, what: str) -> None:
    assert reply.status_code < 500, (what, reply.status_code, reply.text[:300])
    assert not LEAKS.search(reply.text[:100_000]), (what, reply.text[:300])


def _routes(base: str, token: str) -> list[tuple[str, str, list[str]]]:
    schema = httpx.get(f"{base}/api/v1/openapi.json", headers={"Authorization": f"Bearer {token}"}).json()
    routes = []
    for path, operations in schema["paths"].items():
        params = re.findall(r"\{([^}]+)\}", path)
        for method in operations:
            if params and method in ("get", "head", "post", "put", "delete"):
                routes.append((method.upper(), path, params))
    return routes


def test_path_traversal_in_every_path_parameter(hostile: tuple[RunningServer, str, Any]) -> None:
    server, token, first = hostile
    base = f"http://127.0.0.1:{server.settings.http.port}"
    valid = {
        "study_uid": first.StudyInstanceUID, "study_instance_uid": first.StudyInstanceUID,
        "series_uid": first.SeriesInstanceUID, "series_instance_uid": first.SeriesInstanceUID,
        "sop_uid": first.SOPInstanceUID, "sop_instance_uid": first.SOPInstanceUID,
        "frame_list": "1", "frame": "1", "tag": "7FE00010",
    }
    routes = _routes(base, token)
    assert len(routes) >= 30, routes  # the schema really lists the API
    headers = {"Authorization": f"Bearer {token}", "X-CSRF-Token": "x"}
    tried = 0
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        for method, template, params in routes:
            for hostile_param in params:
                for payload in TRAVERSALS:
                    path = template
                    for name in params:
                        value = payload if name == hostile_param else valid.get(name, "1")
                        path = path.replace("{" + name + "}", value)
                    reply = client.request(method, path, content=b"{}" if method in ("POST", "PUT") else None)
                    _check(reply, f"{method} {path}")
                    assert reply.status_code != 200 or "passwd" not in reply.text, (method, path)
                    tried += 1
    assert tried >= 300
    # the stored study is untouched
    study = httpx.get(f"{base}/dicomweb/studies/{first.StudyInstanceUID}/metadata",
                      headers={"Authorization": f"Bearer {token}"})
    assert study.status_code == 200 and len(study.json()) == 2


def test_traversal_outside_the_api(hostile: tuple[RunningServer, str, Any]) -> None:
    server, token, first = hostile
    base = f"http://127.0.0.1:{server.settings.http.port}"
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        for payload in TRAVERSALS:
            for path in (f"/{payload}", f"/assets/{payload}", f"/s/{payload}", f"/dicomweb/{payload}",
                         f"/api/{payload}", f"/api/v1/{payload}"):
                _check(client.get(path), path)
            wado = client.get("/dicomweb/wado", params={
                "requestType": "WADO", "studyUID": first.StudyInstanceUID, "seriesUID": payload,
                "objectUID": payload, "contentType": "application/dicom"})
            _check(wado, f"wado {payload}")
            assert wado.status_code in (400, 404), wado.status_code
        # raw (not normalized by the client) dot segments
        raw = httpx.Request("GET", f"{base}/assets/..%2f..%2f..%2f..%2fetc%2fpasswd", headers=headers)
        raw.url = httpx.URL(f"{base}/assets/../../../../etc/passwd".replace("/../", "/%2E%2E/"))
        _check(client.send(raw), "raw dot segments")


def _stow(base: str, token: str, body: bytes, content_type: str = STOW_TYPE) -> httpx.Response:
    return httpx.post(f"{base}/dicomweb/studies", content=body, timeout=60,
                      headers={"Content-Type": content_type, "Authorization": f"Bearer {token}"})


def test_oversized_and_malformed_uploads_store_nothing(
    hostile: tuple[RunningServer, str, Any],
) -> None:
    server, token, _ = hostile
    base = f"http://127.0.0.1:{server.settings.http.port}"
    before = snapshot(server.settings)
    part = b"--B\r\nContent-Type: application/dicom\r\n\r\n"

    def chunks(size: int) -> Iterator[bytes]:  # no Content-Length: the limit is found while reading
        yield part
        block = b"\0" * 65536
        for _ in range(size // len(block)):
            yield block
        yield b"\r\n--B--\r\n"

    cases: list[tuple[str, httpx.Response, set[int]]] = [
        ("over the limit", _stow(base, token, part + b"\0" * (5 * 1024 * 1024) + b"\r\n--B--\r\n"), {413}),
        ("over the limit, chunked", httpx.post(
            f"{base}/dicomweb/studies", content=chunks(6 * 1024 * 1024), timeout=60,
            headers={"Content-Type": STOW_TYPE, "Authorization": f"Bearer {token}"}), {413}),
        ("no boundary", _stow(base, token, b"x", 'multipart/related; type="application/dicom"'), {400, 415}),
        ("wrong type", _stow(base, token, b"{}", "application/json"), {415}),
        ("empty", _stow(base, token, b""), {400}),
        ("truncated", _stow(base, token, part + b"DICM" * 100), {400}),
        ("garbage part", _stow(base, token, part + b"not dicom at all\r\n--B--\r\n"), {409, 400}),
        ("no closing boundary", _stow(base, token, part + b"\0" * 1000 + b"\r\n--B\r\n"), {400}),
        ("binary junk", _stow(base, token, bytes(range(256)) * 64), {400}),
    ]
    for what, reply, expected in cases:
        _check(reply, what)
        assert reply.status_code in expected, (what, reply.status_code, reply.text[:300])
        if reply.status_code != 409:  # 409 is a STOW response body (FailedSOPSequence)
            assert reply.headers["content-type"].startswith("application/problem+json"), what
            assert reply.json()["detail"], what
    after = snapshot(server.settings)
    assert after.rows == before.rows and after.files == before.files
    assert not after.staging


def test_oversized_and_malformed_json_bodies(hostile: tuple[RunningServer, str, Any]) -> None:
    """JSON endpoints (even public ones such as the login) do not read unbounded bodies."""
    server, token, _ = hostile
    base = f"http://127.0.0.1:{server.settings.http.port}"
    big = b'{"username": "' + b"a" * (8 * 1024 * 1024) + b'", "password": "x"}'
    for path in ("/api/v1/auth/login", "/api/v1/auth/token", "/api/v1/shares/open"):
        reply = httpx.post(f"{base}{path}", content=big, headers={"Content-Type": "application/json"},
                           timeout=60)
        _check(reply, path)
        assert reply.status_code == 413, (path, reply.status_code, reply.text[:200])
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    for body in (b"{", b"[]", b"null", b'{"kind": 1e999}', b"\xff\xfe", b'{"a":' * 5000 + b"1" + b"}" * 5000):
        for path in ("/api/v1/jobs", "/api/v1/remote-aes", "/api/v1/users", "/api/v1/auth/token"):
            reply = httpx.post(f"{base}{path}", content=body, headers=headers, timeout=30)
            _check(reply, f"{path} {body[:20]!r}")
            assert 400 <= reply.status_code < 500, (path, body[:20], reply.status_code)
    assert httpx.get(f"{base}/api/v1/health", timeout=10).status_code == 200


def test_cli_refuses_bad_input_clearly(tmp_path: Path) -> None:
    settings: Settings = load_settings(None, data_dir=tmp_path / "data")
    for args in (["user", "add", "../../etc", "--role", "auditor", "--password-stdin"],
                 ["user", "add", "bob", "--role", "superuser", "--password-stdin"],
                 ["ae", "add", "x", "BAD AE TITLE THAT IS FAR TOO LONG", "127.0.0.1", "104"]):
        out = subprocess.run(
            [sys.executable, "-m", "hilum.cli", *args, "--data-dir", str(settings.data_dir)],
            input="a-long-enough-password-42\n", text=True, capture_output=True, env=hilum_env(settings),
        )
        assert out.returncode != 0, args
        assert "Traceback" not in out.stderr + out.stdout, out.stderr
        assert (out.stderr + out.stdout).strip(), args
