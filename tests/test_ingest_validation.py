"""Ingest refuses what it cannot keep consistent, and never runs away on hostile input.

* Deflated Explicit VR Little Endian (PS3.5 A.5): a deflate stream followed by
  its padding byte, inflating to more than 1 MiB, used to hang the receiver
  forever (100 % CPU, no answer). Inflating is now bounded in size and time.
* A data set without SOP Instance UID or SOP Class UID is refused (0xA900),
  whatever the file meta (written from the C-STORE request) says; a data set
  whose UIDs differ from the C-STORE request's is refused too.

Over C-STORE (pynetdicom, data sets sent from their files byte for byte) and
STOW-RS, against one `hilum serve` (SQLite) for the module.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from conftest import RunningServer, free_port, start_server, stop_server
from dimse_util import chunked_send, dataset_bytes, instance_row, scu_ae, snapshot, stored_path
from factory import StudySpec, ct_slice
from hilum.config import load_settings
from hilum.dicom import parsing
from hilum.dicom.parsing import parse_instance, read_header
from hilum.domain.errors import IngestFailure, IngestStatus


# -- building files ----------------------------------------------------------------------------
def _encode(ds: Dataset) -> bytes:
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    return out.getvalue()


def _part10(meta_uids: tuple[str, str], transfer_syntax: str, data_set: bytes) -> bytes:
    meta = Dataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = meta_uids
    meta.TransferSyntaxUID = transfer_syntax
    out = BytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta)  # type: ignore[arg-type]
    return out.getvalue() + data_set


def deflated_instance() -> tuple[Dataset, bytes]:
    """A CT image as Deflated Explicit VR LE: its data set exactly 2 MiB (Data Set Trailing
    Padding fills it up), its deflate stream of odd length followed by the padding byte
    PS3.5 A.5 asks for. (The receiver hung when the last inflate call filled its 1 MiB,
    the stream read in one chunk.)"""
    ds = ct_slice(StudySpec(patient_id="PAT-DEFLATE", size=1024), generate_uid(), 1, 0)
    ds.Rows = 1000
    ds.PixelData = np.repeat(np.arange(1000, dtype=np.int16), 1024).tobytes()  # a gradient
    for pad in range(64):
        ds.ImageComments = "xx" * pad
        if "DataSetTrailingPadding" in ds:
            del ds.DataSetTrailingPadding
        ds.DataSetTrailingPadding = bytes((2 << 20) - len(_encode(ds)) - 12)
        encoded = _encode(ds)
        assert len(encoded) == 2 << 20
        compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        stream = compressor.compress(encoded) + compressor.flush()
        if len(stream) % 2:
            break
    assert len(stream) % 2, "no odd-length deflate stream"
    uids = (str(ds.SOPClassUID), str(ds.SOPInstanceUID))
    return ds, _part10(uids, DeflatedExplicitVRLittleEndian, stream + b"\0")


def _read_within(path: Path, seconds: float = 60) -> Dataset:
    """read_header(path) in a thread: fails (instead of hanging the test) if it runs away."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["header"] = read_header(path)
        except BaseException as exc:  # handed to the test
            result["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"read_header did not return within {seconds} s"
    if "error" in result:
        raise result["error"]
    header: Dataset = result["header"]
    return header


# -- deflated data sets: unit ------------------------------------------------------------------
def test_padded_deflate_stream_over_1_mib_is_read(tmp_path: Path) -> None:
    # The red-team reproduction: 2 MiB of zeros, raw deflate, one padding byte.
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = compressor.compress(bytes(2 << 20)) + compressor.flush() + b"\0"
    path = tmp_path / "zeros.dcm"
    path.write_bytes(_part10((CTImageStorage, generate_uid()), DeflatedExplicitVRLittleEndian, zeros))
    _read_within(path)

    ds, data = deflated_instance()
    path = tmp_path / "ct.dcm"
    path.write_bytes(data)
    header = _read_within(path)
    parsed = parse_instance(header)
    assert parsed.sop_instance_uid == ds.SOPInstanceUID
    assert parsed.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    # deferred values are read from the inflated data set
    assert header.PixelData == ds.PixelData


def test_deflate_bomb_and_runaway_parse_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, data = deflated_instance()
    path = tmp_path / "ct.dcm"
    path.write_bytes(data)
    # inflating stops at the limit for the compressed size
    monkeypatch.setattr(parsing, "MIN_INFLATED_LIMIT", 1 << 20)
    monkeypatch.setattr(parsing, "MAX_INFLATE_RATIO", 1)
    with pytest.raises(IngestFailure) as refused:
        _read_within(path)
    assert refused.value.status is IngestStatus.NOT_DICOM
    assert "inflates to more than" in refused.value.message
    monkeypatch.undo()
    # parsing the inflated header is bounded in time
    monkeypatch.setattr(parsing, "PARSE_SECONDS", -1.0)
    with pytest.raises(IngestFailure) as refused:
        _read_within(path)
    assert "not parsed within" in refused.value.message
    monkeypatch.undo()
    # a cut stream is still refused
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(IngestFailure) as refused:
        _read_within(path)
    assert "truncated" in refused.value.message


def test_data_set_without_sop_uids_is_refused(tmp_path: Path) -> None:
    ds = ct_slice(StudySpec(), generate_uid(), 1, 0)
    uids = (str(ds.SOPClassUID), str(ds.SOPInstanceUID))
    for keyword in ("SOPInstanceUID", "SOPClassUID"):
        copy = ct_slice(StudySpec(), generate_uid(), 1, 0)
        delattr(copy, keyword)
        path = tmp_path / f"no-{keyword}.dcm"
        path.write_bytes(_part10(uids, ExplicitVRLittleEndian, _encode(copy)))  # the meta has both
        with pytest.raises(IngestFailure) as refused:
            parse_instance(read_header(path))
        assert refused.value.status.dimse_status == 0xA900, keyword
        assert keyword in refused.value.message


# -- end to end: C-STORE and STOW-RS -----------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("ingest-validation")
    settings = load_settings(
        None, data_dir=tmp / "data",
        dicom={"ae_title": "HILUM", "port": free_port(), "host": "127.0.0.1", "workers": 1},
        http={"port": free_port()},
    )
    running = start_server(settings, tmp)
    try:
        yield running
    finally:
        stop_server(running)
    assert "Traceback" not in running.log.read_text(), running.log.read_text()


def _c_store(server: RunningServer, path: Path, sop_class: str, syntax: str) -> Dataset:
    ae = scu_ae()
    ae.add_requested_context(sop_class, [syntax])
    with chunked_send():  # the file's data set as it is, request UIDs from its file meta
        assoc = ae.associate("127.0.0.1", server.port, ae_title=server.ae_title)
        assert assoc.is_established
        try:
            status: Dataset = assoc.send_c_store(path)
        finally:
            assoc.release()
    assert "Status" in status, "no C-STORE response"
    return status


def test_deflated_instance_over_c_store_and_stow(server: RunningServer, tmp_path: Path) -> None:
    ds, data = deflated_instance()
    path = tmp_path / "ct.dcm"
    path.write_bytes(data)
    status = _c_store(server, path, CTImageStorage, DeflatedExplicitVRLittleEndian)
    assert status.Status == 0x0000, status
    assert dataset_bytes(stored_path(server.settings, ds.SOPInstanceUID)) == dataset_bytes(path)
    assert instance_row(server.settings, ds.SOPInstanceUID).transfer_syntax_uid == (
        DeflatedExplicitVRLittleEndian
    )
    # STOW-RS: the same kind of file as one part
    other, data = deflated_instance()
    body = (b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n--b0undary--\r\n")
    response = httpx.post(
        f"http://127.0.0.1:{server.settings.http.port}/dicomweb/studies", content=body, timeout=120,
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b0undary'},
    )
    assert response.status_code == 200, response.text
    sent = tmp_path / "stow.dcm"
    sent.write_bytes(data)
    assert dataset_bytes(stored_path(server.settings, other.SOPInstanceUID)) == dataset_bytes(sent)


def test_c_store_refuses_data_sets_that_do_not_match(server: RunningServer, tmp_path: Path) -> None:
    before = snapshot(server.settings)
    cases: list[tuple[str, tuple[str, str], Dataset, int]] = []
    for keyword in ("SOPInstanceUID", "SOPClassUID"):
        ds = ct_slice(StudySpec(patient_id="PAT-REFUSED"), generate_uid(), 1, 0)
        uids = (str(ds.SOPClassUID), str(ds.SOPInstanceUID))
        delattr(ds, keyword)
        cases.append((f"no {keyword}", uids, ds, 0xA900))
    ds = ct_slice(StudySpec(patient_id="PAT-REFUSED"), generate_uid(), 1, 0)
    cases.append(("another SOP Instance UID", (CTImageStorage, generate_uid()), ds, 0xC000))
    ds = ct_slice(StudySpec(patient_id="PAT-REFUSED"), generate_uid(), 1, 0)
    cases.append(("another SOP Class UID", (MRImageStorage, str(ds.SOPInstanceUID)), ds, 0xA900))
    for what, uids, ds, expected in cases:
        path = tmp_path / f"{what}.dcm"
        path.write_bytes(_part10(uids, ExplicitVRLittleEndian, _encode(ds)))
        status = _c_store(server, path, uids[0], ExplicitVRLittleEndian)
        assert status.Status == expected, (what, status)
        for uid in {uids[1], str(ds.get("SOPInstanceUID", ""))} - {""}:
            assert instance_row(server.settings, uid) is None, what
    assert snapshot(server.settings) == before  # no file, no row, nothing left in staging


def test_stow_refuses_data_set_without_sop_instance_uid(server: RunningServer) -> None:
    before = snapshot(server.settings)
    ds = ct_slice(StudySpec(patient_id="PAT-REFUSED"), generate_uid(), 1, 0)
    uids = (str(ds.SOPClassUID), str(ds.SOPInstanceUID))
    del ds.SOPInstanceUID
    data = _part10(uids, ExplicitVRLittleEndian, _encode(ds))
    body = (b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n--b0undary--\r\n")
    response = httpx.post(
        f"http://127.0.0.1:{server.settings.http.port}/dicomweb/studies", content=body, timeout=60,
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b0undary'},
    )
    assert response.status_code == 409, response.text
    [failed] = response.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xA900]
    assert "SOPInstanceUID" in failed["00204000"]["Value"][0]
    assert snapshot(server.settings) == before


def test_deflate_bomb_over_c_store_gets_a_failure_status(server: RunningServer, tmp_path: Path) -> None:
    """300 MiB of zeros in ~300 KB: refused at the inflate limit, the association answered."""
    before = snapshot(server.settings)
    compressor = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    zero = bytes(1 << 20)
    stream = b"".join(compressor.compress(zero) for _ in range(300)) + compressor.flush()
    assert parsing.inflated_limit(len(stream)) < 300 << 20
    path = tmp_path / "bomb.dcm"
    path.write_bytes(_part10((CTImageStorage, generate_uid()), DeflatedExplicitVRLittleEndian, stream))
    status = _c_store(server, path, CTImageStorage, DeflatedExplicitVRLittleEndian)
    assert status.Status == 0xC000, status
    assert "inflates to more than" in status.ErrorComment
    assert snapshot(server.settings) == before
