"""Fuzzing ingest: malformed DICOM never crashes Hilum and never leaves a partial write.

Hypothesis mutates valid Part 10 files of several kinds (explicit and implicit VR,
big endian, deflated, encapsulated JPEG 2000 and RLE, an RT plan with sequences)
by flipping, inserting, deleting and duplicating bytes, truncating, and writing
absurd element lengths, mostly in the header where the parser works. Each result
goes through the real ingest path:

* in process (``IngestService.ingest_staged``, the path C-STORE, STOW-RS and
  import share): the outcome is either a stored instance or an ``IngestFailure``
  with a DICOM status, never another exception; and after every example the
  archive is consistent: no staging leftovers, every index row has its file with
  the recorded size and SHA-256, every file has its row, and every stored
  instance's DICOM JSON decodes;
* over STOW-RS against a running server: every answer is a PS3.18 status (200,
  202, 400, 409, 415), never a 5xx, and the server stays up and consistent.

The examples are derandomized so CI is repeatable; HILUM_FUZZ_EXAMPLES=5000 runs
a longer campaign locally, HILUM_FUZZ_RANDOM=1 new examples each run.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmwrite
from pydicom.data import get_testdata_file
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_file_meta_info
from sqlalchemy import select

from conftest import start_server, stop_server
from dimse_util import chunked_send, scu_ae
from factory import StudySpec, make_study
from hilum.app import Services
from hilum.config import Settings
from hilum.dicom.jsonmodel import unpack
from hilum.domain.errors import IngestFailure
from hilum.index.models import instances_t
from hilum.ingest.service import content_sha256, data_set_offset

EXAMPLES = int(os.environ.get("HILUM_FUZZ_EXAMPLES", "250"))
DERANDOMIZE = not os.environ.get("HILUM_FUZZ_RANDOM")  # repeatable in CI; random for campaigns
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian


def _ct_bytes() -> bytes:
    [ds] = make_study(StudySpec(slices=1, size=16))
    buffer = DicomBytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _seeds() -> list[bytes]:
    seeds = [_ct_bytes()]
    for name in ("MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm", "MR_small_bigendian.dcm",
                 "image_dfl.dcm", "MR_small_RLE.dcm", "MR_small_implicit.dcm"):
        path = get_testdata_file(name)
        if path is not None:
            data = Path(path).read_bytes()
            seeds.append(data[:200_000])  # keep examples small: truncation is a case anyway
    return seeds


SEEDS = _seeds()


def _header_end(data: bytes) -> int:
    found = data.find(PIXEL_DATA_TAG, 132)
    return len(data) if found < 0 else min(found + 12, len(data))


@st.composite
def malformed(draw: st.DrawFn, keep_meta: bool = False) -> bytes:
    """A seed file with 1-4 mutations, mostly where the header is parsed.

    ``keep_meta``: leave the preamble and file meta alone (C-STORE: the sender reads
    them to choose the presentation context; only the data set goes on the wire)."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    start = data_set_offset(bytes(data[:144])) if keep_meta else 0
    for _ in range(draw(st.integers(1, 4))):
        if len(data) <= start + 1:
            break
        header = _header_end(bytes(data))
        in_header = draw(st.integers(0, 9)) < 8
        pos = draw(st.integers(start, max(header, start + 1) - 1 if in_header else len(data) - 1))
        pos = min(pos, len(data) - 1)
        kind = draw(st.sampled_from(
            ["flip", "truncate", "insert", "delete", "length", "duplicate", "zero-vr"]
        ))
        if kind == "flip":
            data[pos] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif kind == "length":  # an element length field with an absurd value
            value = draw(st.sampled_from([0xFFFFFFFF, 0xFFFFFFFE, 0x7FFFFFFF, 0x10000000, 0, 1, 3]))
            width = draw(st.sampled_from([2, 4]))
            data[pos : pos + width] = value.to_bytes(4, "little")[:width]
        elif kind == "duplicate":
            length = draw(st.integers(1, 256))
            data[pos:pos] = data[max(pos - length, 0) : pos]
        else:  # a VR replaced by something that is not one
            data[pos : pos + 2] = draw(st.sampled_from([b"\x00\x00", b"ZZ", b"UN", b"SQ", b"OB"]))
    return bytes(data)


def _check_consistent(services: Services) -> None:
    root = services.settings.storage_dir
    staging = list((root / ".staging").iterdir())
    assert not staging, f"leftovers in staging: {staging}"
    with services.engine.connect() as conn:
        rows = conn.execute(select(
            instances_t.c.storage_key, instances_t.c.size_bytes, instances_t.c.sha256,
            instances_t.c.dicom_json,
        )).all()
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert files == {row.storage_key for row in rows}, "files and index rows differ"
    for row in rows:
        content = (root / row.storage_key).read_bytes()
        assert len(content) == row.size_bytes
        assert content_sha256(content) == row.sha256  # the data set's hash (Part 10 header excluded)
        if row.dicom_json is not None:
            json.loads(unpack(row.dicom_json))


def _ingest(services: Services, data: bytes) -> str:
    staged = services.ingest.stage_bytes(data)
    try:
        result = services.ingest.ingest_staged(staged, source="fuzz")
    except IngestFailure as failure:
        assert failure.status.dimse_status not in (0x0000,), failure
        return f"refused {failure.status.name}"
    assert result.ok
    return f"stored {result.status.name}"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_malformed_files_are_stored_or_refused_never_half_written(services: Services) -> None:
    outcomes: dict[str, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=DERANDOMIZE, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=malformed())
    def run(data: bytes) -> None:
        outcome = _ingest(services, data)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        _check_consistent(services)

    run()
    # The campaign exercised both sides: many files refused, some still stored.
    refused = sum(n for k, n in outcomes.items() if k.startswith("refused"))
    stored = sum(n for k, n in outcomes.items() if k.startswith("stored"))
    assert refused >= EXAMPLES // 10 and stored >= 1, outcomes


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_untouched_seeds_are_stored(services: Services) -> None:
    """The seeds themselves are valid: the fuzzer starts from files Hilum accepts."""
    for data in SEEDS:
        truncated = _header_end(data) < len(data) and len(data) == 200_000
        outcome = _ingest(services, data)
        assert outcome.startswith("stored") or truncated, outcome
    _check_consistent(services)


def _stow(base: str, data: bytes) -> httpx.Response:
    body = b"--B\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n--B--\r\n"
    return httpx.post(f"{base}/dicomweb/studies", content=body, timeout=60, headers={
        "Content-Type": 'multipart/related; type="application/dicom"; boundary=B'})


# C-STORE statuses a malformed data set may get (PS3.4 B.2.3): success or warning when it
# still parses, A9xx / Cxxx when it does not; never a crash or an aborted association.
STORE_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007, 0xA900, 0xC000, 0x0122, 0x0110}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_malformed_files_over_stow_rs_and_c_store_get_a_status_never_a_server_error(
    settings: Settings, tmp_path: Path, services: Services
) -> None:
    server = start_server(settings, tmp_path)
    base = f"http://127.0.0.1:{settings.http.port}"
    statuses: dict[int, int] = {}
    try:
        @settings_for_server
        @given(data=malformed())
        def run(data: bytes) -> None:
            reply = _stow(base, data)
            statuses[reply.status_code] = statuses.get(reply.status_code, 0) + 1
            assert reply.status_code in (200, 202, 400, 409, 415), (reply.status_code, reply.text[:500])
            if reply.status_code != 200:
                # a failure is explained: FailedSOPSequence with a FailureReason, or a problem body
                assert "00081198" in reply.text or "detail" in reply.text, reply.text[:500]

        run()

        store_statuses: dict[int, int] = {}
        staged = tmp_path / "fuzz.dcm"

        @settings_for_server
        @given(data=malformed(keep_meta=True))
        def run_dimse(data: bytes) -> None:
            staged.write_bytes(data)
            meta = read_file_meta_info(staged)
            ae = scu_ae("FUZZSCU")
            ae.add_requested_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])
            assoc = ae.associate("127.0.0.1", settings.dicom.port, ae_title=settings.dicom.ae_title)
            assert assoc.is_established
            try:
                with chunked_send():
                    status = assoc.send_c_store(staged)
                assert status, "no C-STORE response (the association was aborted)"
                code = int(status.Status)
                store_statuses[code] = store_statuses.get(code, 0) + 1
                assert code in STORE_STATUSES, hex(code)
            finally:
                if assoc.is_established:
                    assoc.release()

        run_dimse()
        assert any(code >= 0xA000 for code in store_statuses), store_statuses
        assert server.process.poll() is None, "the server died"
        assert "Traceback" not in server.log.read_text(), server.log.read_text()[-3000:]
        assert httpx.get(f"{base}/api/v1/health", timeout=10).status_code == 200
    finally:
        stop_server(server)
    _wait_until_staging_empty(settings)
    _check_consistent(services)
    assert sum(n for s, n in statuses.items() if s != 200) >= 5, statuses


settings_for_server: Callable[[Any], Any] = settings(
    max_examples=max(EXAMPLES // 5, 20), deadline=None, derandomize=DERANDOMIZE, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
)


def _wait_until_staging_empty(settings: Settings) -> None:
    staging = settings.storage_dir / ".staging"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(staging.iterdir()):
        time.sleep(0.2)
