"""Peak memory of Hilum's receiving process for one very large instance.

Generates a multi-frame instance of --gb gigabytes (written in chunks), sends it
with DCMTK storescu (C-STORE), fetches it back with getscu (C-GET), and prints
the receiving process's peak resident memory (VmHWM) after each step.

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gb", type=float, default=1.25)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hilum-mem-"))
    env = dict(os.environ, TCP_NODELAY="1")
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
        children = subprocess.run(["pgrep", "-P", str(server.pid), "-f", "multiprocessing.spawn"],
                                  capture_output=True, text=True).stdout.split()
        worker = int(children[0])
        print(f"receiving process at rest: {peak_rss_mib(worker):.0f} MiB peak")
        started = time.monotonic()
        subprocess.run(["storescu", "-aec", "HILUM", "127.0.0.1", str(port), str(big)],
                       check=True, env=env)
        print(f"C-STORE (storescu) {size / 1e6 / (time.monotonic() - started):.0f} MB/s, "
              f"peak RSS {peak_rss_mib(worker):.0f} MiB")
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
              f"peak RSS {peak_rss_mib(worker):.0f} MiB")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
