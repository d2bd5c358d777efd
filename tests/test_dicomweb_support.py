"""Helpers shared by the DICOMweb test modules (no tests here).

Each test_dicomweb_* module runs one real `hilum serve` per index backend
(a module-scoped fixture built with :func:`running_server`), stores its data
once, and talks to it with dicomweb-client (the real client) or httpx where
the client cannot express a request.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread, dcmwrite
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from conftest import backend_url, free_port, start_server, stop_server
from hilum.config import load_settings

PROBLEM = "application/problem+json"
DICOM_JSON = "application/dicom+json"


@contextmanager
def running_server(
    backend: str, factory: pytest.TempPathFactory, env: dict[str, str] | None = None
) -> Iterator[Any]:
    """A `hilum serve` on free ports with its own data dir and (PostgreSQL) database.

    ``env`` values may name the HTTP port as ``{http_port}``.
    """
    tmp = factory.mktemp(f"dicomweb-{backend}")
    http_port = free_port()
    with backend_url(backend) as url:
        settings = load_settings(
            None,
            data_dir=tmp / "data",
            database_url=url,
            dicom={"ae_title": "HILUM", "port": free_port(), "host": "127.0.0.1", "workers": 1},
            http={"port": http_port},
        )
        extra = {k: v.format(http_port=http_port) for k, v in (env or {}).items()}
        server = start_server(settings, tmp, env=extra)
        try:
            yield server
        finally:
            stop_server(server)


def base_url(server: Any) -> str:
    return f"http://127.0.0.1:{server.settings.http.port}/dicomweb"


class Recorder:
    """The last HTTP response dicomweb-client received (its API hides status codes)."""

    def __init__(self) -> None:
        self.last: requests.Response | None = None

    def hook(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.last = response

    @property
    def status(self) -> int:
        assert self.last is not None
        return self.last.status_code


def make_client(server: Any, chunk_size: int = 10**7) -> tuple[DICOMwebClient, Recorder]:
    session = requests.Session()
    recorder = Recorder()
    session.hooks["response"].append(recorder.hook)
    return DICOMwebClient(base_url(server), session=session, chunk_size=chunk_size), recorder


def local(url: str, server: Any) -> str:
    """dicomweb-client sends ``Host`` without the port: put the server's port back into a URL."""
    return url.replace("http://127.0.0.1/", f"http://127.0.0.1:{server.settings.http.port}/", 1)


def sample(name: str) -> Dataset:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} is missing"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(path)


def sample_bytes(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None
    return Path(path).read_bytes()


def renamed(ds: Dataset, study_uid: str | None = None) -> Dataset:
    """A copy with new SOP/series (and study) instance UIDs; pixel data untouched."""
    out = copy.deepcopy(ds)
    out.SOPInstanceUID = generate_uid()
    out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    out.SeriesInstanceUID = generate_uid()
    out.StudyInstanceUID = study_uid or generate_uid()
    return out


def encode(ds: Dataset) -> bytes:
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def multipart(parts: list[tuple[str, bytes]], boundary: str = "b0undary", close: bool = True) -> bytes:
    out = b""
    for content_type, data in parts:
        out += f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n"
    if close:
        out += f"--{boundary}--\r\n".encode()
    return out


STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=b0undary'


def parse_multipart(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/related response: (headers, body)."""
    media, _, rest = response.headers["content-type"].partition(";")
    assert media.strip() == "multipart/related", response.headers["content-type"]
    params = dict(p.strip().split("=", 1) for p in rest.split(";") if "=" in p)
    boundary = params["boundary"].strip('"').encode()
    body = response.content
    parts = []
    chunks = body.split(b"--" + boundary)
    assert chunks[-1].strip() == b"--", "no closing delimiter"
    for chunk in chunks[1:-1]:
        assert chunk.startswith(b"\r\n") and chunk.endswith(b"\r\n")
        head, _, data = chunk[2:-2].partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, data))
    return parts


def problem(response: httpx.Response | requests.Response, status: int) -> str:
    """Assert an RFC 9457 problem answer with ``status``; return its detail."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith(PROBLEM), response.headers["content-type"]
    body = json.loads(response.content)
    assert body["status"] == status
    assert isinstance(body["detail"], str) and body["detail"].strip()
    return str(body["detail"])


def stored_files(server: Any) -> set[Path]:
    root = server.data_dir / "storage"
    return {p for p in root.rglob("*.dcm") if ".staging" not in p.parts}


def staging_files(server: Any) -> list[Path]:
    return list((server.data_dir / "storage" / ".staging").iterdir())


def psnr(original: np.ndarray, decoded: np.ndarray, peak: float) -> float:
    error = np.mean((original.astype(np.float64) - decoded.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(peak**2 / error))


def values(item: dict[str, Any], tag: str) -> list[Any]:
    """The Value list of one attribute of a DICOM JSON object ([] when empty or absent)."""
    return list(item.get(tag, {}).get("Value", []))
