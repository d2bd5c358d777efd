"""A full disk: C-STORE answers 0xA700 Out of Resources, STOW-RS 507 with Retry-After.

The data directory of a real `hilum serve` is a small tmpfs (a real ENOSPC, no mock),
filled up to a few MB by a file the test writes. Instances bigger than what is left
are refused with the statuses that tell the sender to retry later, nothing of them
stays behind (no staging file, no stored file, no index row), and once the filler is
removed the very same instances are accepted.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmwrite
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import generate_uid

from conftest import RunningServer, free_port, start_server, stop_server
from dimse_util import dcmtk, instance_row, scp_args, snapshot
from factory import StudySpec, ct_slice, make_study
from hilum.app import build_services, prepare
from hilum.config import load_settings
from hilum.dimse.fastpath import SPILL_BYTES
from hilum.domain.errors import IngestFailure, IngestStatus

TMPFS_MB = 48
LEFT_FREE = 3 * 1024 * 1024  # what the filler leaves: less than any instance sent below
STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=B'


@pytest.fixture(scope="module")
def full_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    root = tmp_path_factory.mktemp("diskfull")
    mount = root / "mnt"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(mount)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the disk-full test (needs root): {mounted.stderr}")
    server = None
    try:
        settings = load_settings(
            None, data_dir=mount / "data", auth={"enabled": False},
            dicom={"ae_title": "HILUM", "port": free_port(), "host": "127.0.0.1", "workers": 1,
                   "accept_unknown_aes": True},
            http={"port": free_port()},
        )
        server = start_server(settings, root)
        yield server, mount
    finally:
        if server is not None:
            stop_server(server)
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(mount: Path, left: int = LEFT_FREE) -> Path:
    """Leave ``left`` bytes free on the tmpfs (a real file: the kernel answers ENOSPC)."""
    filler = mount / "filler"
    stat = os.statvfs(mount)
    with filler.open("ab") as out:
        out.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - left))
    return filler


def _instance(pixels: int, patient: str) -> Dataset:
    """A CT slice with about ``pixels`` bytes of Pixel Data."""
    size = int((pixels // 2) ** 0.5)
    return ct_slice(StudySpec(patient_id=patient, size=size), generate_uid(), 1, 0)


def _part10(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _stow(server: RunningServer, ds: Dataset) -> httpx.Response:
    body = b"--B\r\nContent-Type: application/dicom\r\n\r\n" + _part10(ds) + b"\r\n--B--\r\n"
    return httpx.post(f"http://127.0.0.1:{server.settings.http.port}/dicomweb/studies", content=body,
                      headers={"Content-Type": STOW_TYPE}, timeout=120)


def _storescu(server: RunningServer, path: Path) -> Any:
    return dcmtk("storescu", "-v", "-aet", "FULLDISK", *scp_args(server), str(path))


def test_full_disk_refuses_with_retry_statuses_and_recovers(
    full_disk: tuple[RunningServer, Path], tmp_path: Path
) -> None:
    server, mount = full_disk
    small = _instance(6 * 1024 * 1024, "FULL-SMALL")  # received in memory, then staged
    large = _instance(SPILL_BYTES + 4 * 1024 * 1024, "FULL-SPILL")  # fast path spills it while receiving
    web = _instance(6 * 1024 * 1024, "FULL-STOW")
    files = {}
    for name, ds in (("small", small), ("large", large)):
        files[name] = tmp_path / f"{name}.dcm"
        files[name].write_bytes(_part10(ds))
    before = snapshot(server.settings)
    filler = _fill(mount)
    try:
        for name in ("small", "large"):
            out = _storescu(server, files[name])
            text = out.stdout + out.stderr
            # DCMTK's name for status A7xx; the association is released, not aborted
            assert "Received Store Response (Refused: OutOfResources)" in text, (name, text[-2000:])
            assert "Abort" not in text, (name, text[-2000:])
        reply = _stow(server, web)
        assert reply.status_code == 507, (reply.status_code, reply.text[:500])
        assert reply.headers["content-type"].startswith("application/problem+json")
        assert int(reply.headers["retry-after"]) > 0
        problem = reply.json()
        assert problem["status"] == 507 and "space" in problem["detail"], problem
        # nothing of the refused instances is left: no staging file, no stored file, no row
        during = snapshot(server.settings)
        assert during.rows == before.rows and during.files == before.files, (during, before)
        assert not during.staging, during.staging
        for ds in (small, large, web):
            assert instance_row(server.settings, ds.SOPInstanceUID) is None
    finally:
        filler.unlink()
    # space freed: the very same instances are accepted
    for name in ("small", "large"):
        out = _storescu(server, files[name])
        assert out.returncode == 0 and "OutOfResources" not in out.stdout + out.stderr, out.stderr[-2000:]
    reply = _stow(server, web)
    assert reply.status_code == 200, reply.text[:500]
    for ds in (small, large, web):
        assert instance_row(server.settings, ds.SOPInstanceUID) is not None, ds.PatientID
    assert not snapshot(server.settings).staging
    log = server.log.read_text()
    assert "Traceback" not in log, log[-4000:]



def test_a_full_index_database_refuses_with_out_of_resources(full_disk: tuple[RunningServer, Path]) -> None:
    """The instance's file fits but the index database cannot grow: 0xA700 / 507 (out of
    resources), not a processing failure; the committed file is removed again."""
    _, mount = full_disk
    settings = load_settings(None, data_dir=mount / "in-process", auth={"enabled": False})
    prepare(settings)
    services = build_services(settings)
    services.writer.start()
    try:
        (ds,) = make_study(StudySpec(patient_id="FULL-INDEX", slices=1))
        staged = services.ingest.stage_bytes(_part10(ds))  # written while there is space
        filler = _fill(mount, left=0)
        try:
            with pytest.raises(IngestFailure) as refused:
                services.ingest.ingest_staged(staged, source="test")
            assert refused.value.status is IngestStatus.OUT_OF_RESOURCES, refused.value
            assert "index" in refused.value.message, refused.value.message  # the writer's refusal
        finally:
            filler.unlink()
        assert not staged.exists()
        left = snapshot(settings)
        assert not left.files and not left.staging and left.rows["instances"] == 0, left
        again = services.ingest.ingest_staged(services.ingest.stage_bytes(_part10(ds)), source="test")
        assert again.sop_instance_uid == ds.SOPInstanceUID
    finally:
        services.close()
