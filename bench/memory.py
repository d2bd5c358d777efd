"""Peak memory of Hilum's processes for one very large instance, over DIMSE and HTTP.

Generates a multi-frame instance of --gb gigabytes (written in chunks), sends it
with DCMTK storescu (C-STORE), fetches it back with getscu (C-GET), retrieves the
study with WADO-RS and as a zip download, then stores a second such instance with
STOW-RS (streamed from disk). After each step it prints the peak resident memory
(VmHWM) of the busiest worker process (one DICOM and one HTTP worker run).

    .venv/bin/python bench/memory.py --gb 1.25
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[1]
HILUM = REPO / ".venv" / "bin" / "hilum"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_big(path: Path, gigabytes: float) -> int:
    rows = cols = 512
    frame = (np.arange(rows * cols, dtype=np.uint16) % 4096).tobytes()
    frames = max(1, int(gigabytes * 1e9 // len(frame)))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word SC
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "BIG1", "BIG^FILE", "OT"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    dcmwrite(path, ds, enforce_file_format=True)
    length = frames * len(frame)
    with path.open("ab") as out:
        out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length))
        for _ in range(frames):
            out.write(frame)
    return path.stat().st_size


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def workers_peak(server_pid: int) -> str:
    children = subprocess.run(["pgrep", "-P", str(server_pid), "-f", "multiprocessing.spawn"],
                              capture_output=True, text=True).stdout.split()
    peaks = [peak_rss_mib(int(pid)) for pid in children]
    return f"peak RSS {max(peaks):.0f} MiB (busiest worker; main {peak_rss_mib(server_pid):.0f} MiB)"


def multipart_from(path: Path, boundary: str):  # type: ignore[no-untyped-def]
    yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()


def timed_download(url: str, accept: str) -> tuple[int, float]:
    started = time.monotonic()
    received = 0
    with httpx.stream("GET", url, headers={"Accept": accept}, timeout=600) as reply:
        reply.raise_for_status()
        for chunk in reply.iter_bytes(1 << 20):
            received += len(chunk)
    return received, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gb", type=float, default=1.25)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hilum-mem-"))
    env = dict(os.environ, TCP_NODELAY="1", HILUM_HTTP__WORKERS="1", HILUM_AUTH__ENABLED="false")
    port, http_port = free_port(), free_port()
    server = None
    try:
        big = work / "big.dcm"
        size = write_big(big, args.gb)
        print(f"instance: {size / 1e9:.2f} GB")
        log = (work / "server.log").open("wb")
        server = subprocess.Popen(
            [str(HILUM), "serve", "--data-dir", str(work / "data"), "--dicom-port", str(port),
             "--http-port", str(http_port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while b"Hilum: DICOM" not in (work / "server.log").read_bytes():
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("server did not start")
            time.sleep(0.2)
        print(f"at rest: {workers_peak(server.pid)}")
        started = time.monotonic()
        subprocess.run(["storescu", "-aec", "HILUM", "127.0.0.1", str(port), str(big)],
                       check=True, env=env)
        print(f"C-STORE (storescu) {size / 1e6 / (time.monotonic() - started):.0f} MB/s, "
              f"{workers_peak(server.pid)}")
        study = sqlite3.connect(work / "data" / "index.sqlite").execute(
            "select study_instance_uid from studies").fetchone()[0]
        out = work / "get"
        out.mkdir()
        started = time.monotonic()
        subprocess.run(["getscu", "-S", "-aec", "HILUM", "-od", str(out), "-k",
                        "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                        "127.0.0.1", str(port)], check=True, env=env, capture_output=True)
        received = sum(p.stat().st_size for p in out.iterdir())
        print(f"C-GET (getscu) {received / 1e6 / (time.monotonic() - started):.0f} MB/s, "
              f"{workers_peak(server.pid)}")
        base = f"http://127.0.0.1:{http_port}"
        as_stored = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        received, elapsed = timed_download(f"{base}/dicomweb/studies/{study}", as_stored)
        print(f"WADO-RS study {received / 1e6 / elapsed:.0f} MB/s, {workers_peak(server.pid)}")
        received, elapsed = timed_download(f"{base}/api/v1/studies/{study}/archive", "application/zip")
        print(f"zip download {received / 1e6 / elapsed:.0f} MB/s, {workers_peak(server.pid)}")
        second = work / "second.dcm"
        write_big(second, args.gb)
        started = time.monotonic()
        reply = httpx.post(
            f"{base}/dicomweb/studies", content=multipart_from(second, "BIGB"), timeout=900,
            headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=BIGB'},
        )
        reply.raise_for_status()
        print(f"STOW-RS {size / 1e6 / (time.monotonic() - started):.0f} MB/s, {workers_peak(server.pid)}")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
