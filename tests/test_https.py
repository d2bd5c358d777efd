"""HTTPS: `hilum serve` with http.tls_certificate / http.tls_private_key.

httpx verifies the server against the test CA (tls_util.py); plain HTTP, an
untrusted CA and TLS older than 1.2 are refused.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import RunningServer, hilum_env, start_server, stop_server
from hilum.config import Settings
from tls_util import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def https_env(pki: Pki) -> dict[str, str]:
    return {
        "HILUM_HTTP__TLS_CERTIFICATE": str(pki.server_cert),
        "HILUM_HTTP__TLS_PRIVATE_KEY": str(pki.server_key),
    }


@pytest.fixture
def https_server(settings: Settings, tmp_path: Path, pki: Pki) -> Iterator[RunningServer]:
    running = start_server(settings, tmp_path, env=https_env(pki))
    try:
        yield running
    finally:
        stop_server(running)


def test_https_with_the_test_ca(https_server: RunningServer, pki: Pki) -> None:
    port = https_server.settings.http.port
    assert f"HTTP on https://127.0.0.1:{port}" in https_server.log.read_text()
    trusted = ssl.create_default_context(cafile=str(pki.ca))
    for host in ("127.0.0.1", "localhost"):  # the certificate names both
        with httpx.Client(verify=trusted, timeout=10) as client:
            response = client.get(f"https://{host}:{port}/api/v1/studies")
        # 401 once HTTP authentication is on: the point here is the TLS connection
        assert response.status_code in (200, 401), response.text
        assert response.url.scheme == "https"

    # the server's certificate is not trusted without the test CA
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://127.0.0.1:{port}/api/v1/studies", timeout=10)
    # plain HTTP to the HTTPS port gets no HTTP answer
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/api/v1/studies", timeout=10)

    # TLS 1.2 works (AEAD suite); TLS 1.1 and older are refused by the server
    tls12 = ssl.create_default_context(cafile=str(pki.ca))
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with httpx.Client(verify=tls12, timeout=10) as client:
        assert client.get(f"https://127.0.0.1:{port}/api/v1/studies").status_code in (200, 401)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(cafile=str(pki.ca))
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("ALL:@SECLEVEL=0")
    # (asyncio's TLS closes the connection without an alert: EOF on the client side)
    refused = r"PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL|UNEXPECTED_EOF|HANDSHAKE_FAILURE"
    with pytest.raises(httpx.ConnectError, match=refused):
        httpx.get(f"https://127.0.0.1:{port}/api/v1/studies", verify=old, timeout=10)
    # a TLS 1.2 client offering only CBC suites finds no common cipher
    cbc = ssl.create_default_context(cafile=str(pki.ca))
    cbc.maximum_version = ssl.TLSVersion.TLSv1_2
    cbc.set_ciphers("ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA384")
    with pytest.raises(httpx.ConnectError, match=refused):
        httpx.get(f"https://127.0.0.1:{port}/api/v1/studies", verify=cbc, timeout=10)


def _serve(settings: Settings, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hilum.cli", "serve", "--data-dir", str(settings.data_dir),
         "--dicom-port", str(settings.dicom.port), "--http-port", str(settings.http.port),
         "--host", "127.0.0.1"],
        capture_output=True, text=True, timeout=60, env={**hilum_env(settings), **env},
    )


def test_https_configuration_errors_stop_serve(settings: Settings, pki: Pki) -> None:
    only_certificate = _serve(settings, {"HILUM_HTTP__TLS_CERTIFICATE": str(pki.server_cert)})
    assert only_certificate.returncode == 2, only_certificate.stderr
    assert "tls_certificate and tls_private_key must be set together" in only_certificate.stderr

    missing = _serve(settings, {**https_env(pki), "HILUM_HTTP__TLS_CERTIFICATE": "/nonexistent.pem"})
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert "http.tls_certificate" in missing.stderr and "/nonexistent.pem" in missing.stderr
