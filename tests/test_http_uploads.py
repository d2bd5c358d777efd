"""Slow, abandoned and unrenderable: HTTP requests that used to hold resources or answer 500.

One real `hilum serve` (SQLite) with a short body timeout and a small per-client upload
cap; raw sockets play the clients that declare a body and never send it.

* a stalled upload is closed with 408 within ``http.body_timeout`` and its staging
  file is removed; one address cannot hold more than ``http.max_uploads_per_client``
  uploads at once (429 with Retry-After), another address still can;
* a client that disconnects mid-body is one log line, no traceback, and a folded
  minor-failure audit record, not a serious failure per connection;
* a chunked JSON body over ``http.max_request_bytes`` is 413, not 400;
* rendering an instance without usable Pixel Data is a 406 problem, not a 500.
"""

from __future__ import annotations

import copy
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydicom import dcmwrite
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import generate_uid

from conftest import RunningServer, free_port, start_server, stop_server
from dimse_util import snapshot, wait_for
from factory import StudySpec, make_study
from hilum.audit import codes
from hilum.config import load_settings
from hilum.index.database import make_engine
from webdata import CtSpec, sr_document

BODY_TIMEOUT = 1.5
PER_CLIENT = 3
STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=B'
PART_HEAD = b"--B\r\nContent-Type: application/dicom\r\n\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("uploads")
    settings = load_settings(
        None, data_dir=tmp / "data", auth={"enabled": False},
        dicom={"ae_title": "HILUM", "port": free_port(), "host": "127.0.0.1", "workers": 1},
        http={"port": free_port()},
    )
    running = start_server(settings, tmp, env={
        "HILUM_HTTP__BODY_TIMEOUT": str(BODY_TIMEOUT),
        "HILUM_HTTP__MAX_UPLOADS_PER_CLIENT": str(PER_CLIENT),
        "HILUM_AUDIT__AGGREGATE_SECONDS": "0.5",
    })
    try:
        yield running
    finally:
        stop_server(running)
    assert "Traceback" not in running.log.read_text(), running.log.read_text()[-4000:]


def _base(server: RunningServer) -> str:
    return f"http://127.0.0.1:{server.settings.http.port}"


def _upload(server: RunningServer, sent: bytes, declared: int = 10 * 1024 * 1024,
            source: str = "127.0.0.1") -> socket.socket:
    """A STOW-RS request that declares ``declared`` body bytes and sends only ``sent``."""
    sock = socket.create_connection(("127.0.0.1", server.settings.http.port), timeout=30,
                                    source_address=(source, 0))
    head = (f"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {STOW_TYPE}\r\n"
            f"Content-Length: {declared}\r\n\r\n").encode()
    sock.sendall(head + sent)
    return sock


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    with sock:
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def _staging(server: RunningServer) -> frozenset[str]:
    return snapshot(server.settings).staging


def _part10(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _stow(server: RunningServer, datasets: list[Dataset]) -> httpx.Response:
    body = b"".join(PART_HEAD + _part10(ds) + b"\r\n" for ds in datasets) + b"--B--\r\n"
    return httpx.post(f"{_base(server)}/dicomweb/studies", content=body,
                      headers={"Content-Type": STOW_TYPE}, timeout=60)


def test_stalled_upload_is_closed_and_its_staging_file_removed(server: RunningServer) -> None:
    started = time.monotonic()
    part = _upload(server, PART_HEAD + b"\0" * 4096)  # a staging file is open for this part
    silent = _upload(server, b"")  # headers only: the body never starts
    wait_for(lambda: len(_staging(server)) == 1, 10, "the first upload's staging file")
    answers = [_answer(part), _answer(silent)]
    elapsed = time.monotonic() - started
    for answer in answers:
        assert _status(answer) == 408, answer[:300]
        assert b"application/problem+json" in answer and b"http.body_timeout" in answer, answer[:500]
    assert BODY_TIMEOUT <= elapsed < BODY_TIMEOUT + 5, elapsed
    wait_for(lambda: not _staging(server), 10, "the staging file to be removed")
    assert _stow(server, make_study(StudySpec(patient_id="AFTER-STALL", slices=1))).status_code == 200


def test_one_address_holds_at_most_its_share_of_uploads(server: RunningServer) -> None:
    stalled = [_upload(server, PART_HEAD + b"\0" * 1024) for _ in range(PER_CLIENT)]
    wait_for(lambda: len(_staging(server)) == PER_CLIENT, 10, "the stalled uploads' staging files")
    refused = _upload(server, b"")
    answer = _answer(refused)  # answered at once, not after the body timeout
    assert _status(answer) == 429, answer[:300]
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"retry-after: " in head.lower() and b"application/problem+json" in head, head
    assert b"http.max_uploads_per_client" in body, body
    # another client address is not held back by this one's uploads
    other = _upload(server, b"", source="127.0.0.2")
    assert _status(_answer(other)) == 408
    for sock in stalled:
        assert _status(_answer(sock)) == 408
    wait_for(lambda: not _staging(server), 10, "the stalled uploads' staging files to be removed")
    # the slots are free again
    assert _stow(server, make_study(StudySpec(patient_id="AFTER-CAP", slices=1))).status_code == 200


def test_parallel_uploads_never_pass_the_cap(server: RunningServer) -> None:
    """Twice the cap at once from one address: exactly the cap get through to their body."""
    statuses: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        status = _status(_answer(_upload(server, PART_HEAD + b"\0" * 512)))
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=one) for _ in range(2 * PER_CLIENT)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(statuses) == [408] * PER_CLIENT + [429] * PER_CLIENT, statuses
    wait_for(lambda: not _staging(server), 10, "staging files to be removed")


def _serious_failures(server: RunningServer) -> list[dict[str, Any]]:
    from hilum.audit import store

    engine = make_engine(server.settings.index_url, pool_size=1)
    try:
        records = store.search(engine, store.AuditFilter(outcome=codes.SERIOUS_FAILURE), limit=1000)
        return records
    finally:
        engine.dispose()


def _abandoned_records(server: RunningServer) -> list[dict[str, Any]]:
    from hilum.audit import store

    engine = make_engine(server.settings.index_url, pool_size=1)
    try:
        records = store.search(engine, store.AuditFilter(outcome=codes.MINOR_FAILURE), limit=1000)
    finally:
        engine.dispose()
    return [r for r in records if "client disconnected" in r["xml"]]


def test_disconnect_mid_body_is_one_log_line_and_no_serious_audit_event(server: RunningServer) -> None:
    lines_before = server.log.read_text().splitlines()
    uploads = [_upload(server, PART_HEAD + b"\0" * 2048) for _ in range(PER_CLIENT)]
    wait_for(lambda: len(_staging(server)) == PER_CLIENT, 10, "the uploads' staging files")
    for sock in uploads:
        sock.close()  # gone mid-body
    wait_for(lambda: not _staging(server), 10, "the abandoned uploads' staging files to be removed")
    new = wait_for(lambda: [line for line in server.log.read_text().splitlines()[len(lines_before):]
                            if "client disconnected" in line], 10, "the log lines")
    new = server.log.read_text().splitlines()[len(lines_before):]
    disconnects = [line for line in new if "client disconnected" in line]
    assert len(disconnects) == PER_CLIENT, new
    assert all("/dicomweb/studies" in line and "127.0.0.1" in line for line in disconnects), disconnects
    assert not any("Traceback" in line or "Exception in ASGI" in line for line in new), new
    folded = wait_for(lambda: _abandoned_records(server), 20, "the folded audit record")
    assert len(folded) == 1 and f"{PER_CLIENT} in all" in folded[0]["xml"], folded
    assert not _serious_failures(server)


def test_chunked_json_body_over_the_limit_is_413(server: RunningServer) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        yield b'{"kind": "send", "destination": "'
        for _ in range(48):
            yield b"a" * 65536
        yield b'"}'

    reply = httpx.post(f"{_base(server)}/api/v1/jobs", content=chunks(), timeout=30,
                       headers={"Content-Type": "application/json"})
    assert reply.status_code == 413, (reply.status_code, reply.text[:300])
    assert reply.headers["content-type"].startswith("application/problem+json")
    assert "http.max_request_bytes" in reply.json()["detail"]


# -- rendering instances without usable Pixel Data ---------------------------------------------
def _no_pixels() -> list[Dataset]:
    (image,) = make_study(StudySpec(patient_id="NO-PIXELS", slices=1, size=16))
    missing = copy.deepcopy(image)
    del missing.PixelData
    truncated = copy.deepcopy(image)
    truncated.PixelData = image.PixelData[:100]  # Rows x Columns say 512 bytes
    for ds in (missing, truncated):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    report = sr_document(CtSpec(patient_id="NO-PIXELS"))
    return [missing, truncated, report]


def test_rendering_without_usable_pixel_data_is_a_406_problem(server: RunningServer) -> None:
    datasets = _no_pixels()
    stored = _stow(server, datasets)  # accepted (202: the report's patient attributes differ)
    assert stored.status_code in (200, 202) and "00081198" not in stored.json(), stored.text[:800]
    assert len(stored.json()["00081199"]["Value"]) == len(datasets)
    base = _base(server)
    for ds in datasets:
        path = (f"{base}/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                f"/instances/{ds.SOPInstanceUID}")
        ids = {"requestType": "WADO", "studyUID": ds.StudyInstanceUID, "seriesUID": ds.SeriesInstanceUID,
               "objectUID": ds.SOPInstanceUID}
        for reply in (
            httpx.get(f"{path}/rendered", headers={"Accept": "image/jpeg"}),
            httpx.get(f"{path}/frames/1/rendered", headers={"Accept": "image/png"}),
            httpx.get(f"{path}/thumbnail"),
            httpx.get(f"{base}/dicomweb/wado", params={**ids, "contentType": "image/jpeg"}),
        ):
            assert reply.status_code == 406, (str(reply.url), reply.status_code, reply.text)
            assert reply.headers["content-type"].startswith("application/problem+json"), reply.text[:200]
            assert reply.json()["detail"], reply.text
        # WADO-URI with DICOM as the second choice falls back to it
        either = httpx.get(f"{base}/dicomweb/wado",
                           params={**ids, "contentType": "image/jpeg,application/dicom"})
        assert either.status_code == 200 and either.headers["content-type"] == "application/dicom"
