"""Deterministic synthetic CT data for the Hilum/Orthanc benchmark.

Two kinds of sets are produced, both explicit VR little endian Part 10 files:

* ``ct``: N studies x M axial slices of 512x512 signed 16-bit CT (~513 KB
  per file) showing a 3-D ellipsoid phantom with Gaussian noise.
* ``small``: many one-instance studies with tiny (16x16) pixel data, spread
  over patients, names and dates so that study-level C-FIND queries return
  realistic result sets.

Every set directory gets a ``manifest.json`` (written last), which lets
callers reuse a cached set.  Usage::

    python bench/gen_ct.py OUT_DIR --studies 4 --slices 250
    python bench/gen_ct.py OUT_DIR --small 10000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

ROWS = COLS = 512
INTERCEPT = -1024
PADDING = -2000  # stored value outside the reconstruction circle (GE style)
_FAMILY = """SMITH JOHNSON WILLIAMS BROWN JONES GARCIA MILLER DAVIS MARTINEZ LOPEZ WILSON
    ANDERSON THOMAS TAYLOR MOORE JACKSON MARTIN LEE THOMPSON WHITE HARRIS CLARK LEWIS ROBINSON
    WALKER YOUNG ALLEN KING WRIGHT SCOTT MUELLER SCHMIDT SCHNEIDER FISCHER WEBER DUBOIS MOREAU
    ROSSI BIANCHI NOVAK"""
_GIVEN = """JAMES MARY ROBERT PATRICIA JOHN JENNIFER MICHAEL LINDA DAVID ELIZABETH WILLIAM
    BARBARA RICHARD SUSAN JOSEPH JESSICA THOMAS SARAH CHARLES KAREN ANNA PETER LAURA PAUL EMMA"""
FAMILY, GIVEN = _FAMILY.split(), _GIVEN.split()
DESCRIPTIONS = (
    "CT CHEST W/O CONTRAST",
    "CT ABDOMEN PELVIS W CONTRAST",
    "CT HEAD W/O CONTRAST",
    "CT THORAX LOW DOSE",
    "CTA PULMONARY",
)
# Ellipsoids in normalised [-1, 1] coordinates: cx, cy, cz, a, b, c, HU offset.
PHANTOM = (
    (0.0, 0.0, 0.0, 0.80, 0.62, 1.30, 1040.0),  # body (air -> soft tissue)
    (-0.33, -0.05, 0.1, 0.22, 0.38, 0.90, -840.0),  # right lung
    (0.33, -0.05, 0.1, 0.22, 0.38, 0.90, -840.0),  # left lung
    (0.0, 0.42, 0.0, 0.10, 0.08, 1.50, 700.0),  # vertebra
    (0.05, -0.25, -0.2, 0.14, 0.12, 0.35, 30.0),  # heart
    (0.0, -0.38, 0.0, 0.05, 0.04, 1.50, 900.0),  # sternum
    (0.35, 0.25, -0.6, 0.20, 0.15, 0.40, 25.0),  # liver dome
    (-0.05, 0.05, 0.0, 0.03, 0.03, 1.40, 160.0),  # aorta (contrast)
)


def _uid(*parts: object) -> UID:
    """Deterministic, unique UID derived from ``parts``."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _file_meta(sop_class: UID, sop_instance: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "HILUM_BENCH"
    return meta


def _base_dataset(meta: dict[str, str], rows: int, cols: int) -> Dataset:
    """Patient/study/series/equipment/image modules shared by both set kinds."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = meta["date"]
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = meta["time"]
    ds.AccessionNumber = meta["accession"]
    ds.Modality = "CT"
    ds.Manufacturer = "HILUM BENCH"
    ds.InstitutionName = "Synthetic General Hospital"
    ds.ReferringPhysicianName = meta["referring"]
    ds.StudyDescription = meta["description"]
    ds.SeriesDescription = "AXIAL 1.0 STD"
    ds.ManufacturerModelName = "Phantom-512"
    ds.PatientName = meta["name"]
    ds.PatientID = meta["patient_id"]
    ds.PatientBirthDate = meta["birth_date"]
    ds.PatientSex = meta["sex"]
    ds.BodyPartExamined = "CHEST"
    ds.KVP = "120"
    ds.StudyInstanceUID = meta["study_uid"]
    ds.SeriesInstanceUID = meta["series_uid"]
    ds.StudyID = meta["study_id"]
    ds.SeriesNumber = 2
    ds.FrameOfReferenceUID = meta["for_uid"]
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelPaddingValue = PADDING
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.RescaleIntercept = INTERCEPT
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    return ds


def _study_meta(rnd: random.Random, key: str, patient: int) -> dict[str, str]:
    """Header values of one study; ``patient`` indexes a deterministic patient."""
    prnd = random.Random(f"patient-{patient}")
    birth = dt.date(1930, 1, 1) + dt.timedelta(days=prnd.randrange(27000))
    date = dt.date(2015, 1, 1) + dt.timedelta(days=rnd.randrange(3650))
    return {
        "name": f"{FAMILY[patient % len(FAMILY)]}^{GIVEN[(patient // len(FAMILY)) % len(GIVEN)]}",
        "patient_id": f"BP{patient:07d}",
        "birth_date": birth.strftime("%Y%m%d"),
        "sex": "MF"[patient % 2],
        "date": date.strftime("%Y%m%d"),
        "time": f"{rnd.randrange(7, 19):02d}{rnd.randrange(60):02d}{rnd.randrange(60):02d}",
        "accession": f"A{rnd.randrange(10**9):09d}",
        "referring": f"{rnd.choice(FAMILY)}^{rnd.choice(GIVEN)}^^DR",
        "description": rnd.choice(DESCRIPTIONS),
        "study_id": str(rnd.randrange(1, 99999)),
        "study_uid": _uid(key, "study"),
        "series_uid": _uid(key, "series"),
        "for_uid": _uid(key, "for"),
    }


def small_study_meta(index: int, seed: int = 1) -> dict[str, str]:
    """Metadata of small study ``index`` (also used to build C-FIND queries)."""
    key = f"small-{seed}-{index}"
    return _study_meta(random.Random(key), key, patient=index // 4)


def _phantom_slice(z: float, jitter: np.ndarray, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """HU image of the phantom at normalised height ``z`` (float32)."""
    x, y = grid
    img = np.full((ROWS, COLS), -1000.0, dtype=np.float32)
    for (cx, cy, cz, a, b, c, value), (dx, dy, scale) in zip(PHANTOM, jitter, strict=True):
        t = 1.0 - ((z - cz) / c) ** 2
        if t <= 0:
            continue
        k = np.sqrt(t) * scale
        img[((x - cx - dx) / (a * k)) ** 2 + ((y - cy - dy) / (b * k)) ** 2 <= 1.0] += value
    return img


def _write(ds: Dataset, path: Path) -> int:
    ds.save_as(path, enforce_file_format=True)
    return path.stat().st_size


def _finish(out: Path, kind: str, files: list[str], nbytes: int, params: dict[str, int]) -> dict:
    manifest = {"kind": kind, **params, "files": files, "bytes": nbytes}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def generate_ct(out: Path, studies: int = 4, slices: int = 250, seed: int = 1) -> dict:
    """Write ``studies`` x ``slices`` 512x512 CT images below ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lin = np.linspace(-1.0, 1.0, COLS, dtype=np.float32)
    grid = np.meshgrid(lin, lin)
    outside = grid[0] ** 2 + grid[1] ** 2 > 1.0
    files: list[str] = []
    nbytes = 0
    for s in range(studies):
        key = f"ct-{seed}-{s}"
        meta = _study_meta(random.Random(key), key, patient=10_000_000 + seed * 1000 + s)
        jitter = rng.uniform([-0.03, -0.03, 0.9], [0.03, 0.03, 1.1], size=(len(PHANTOM), 3))
        study_dir = out / f"st{s:03d}"
        study_dir.mkdir(exist_ok=True)
        ds = _base_dataset(meta, ROWS, COLS)
        ds.PixelSpacing = [0.7, 0.7]
        ds.SliceThickness = 1.0
        ds.SpacingBetweenSlices = 1.0
        for i in range(slices):
            z = -1.0 + 2.0 * (i + 0.5) / slices
            hu = _phantom_slice(z, jitter, grid)
            hu += rng.standard_normal((ROWS, COLS), dtype=np.float32) * 12.0
            stored = np.clip(np.rint(hu) - INTERCEPT, -1024, 4095).astype(np.int16)
            stored[outside] = PADDING
            sop_uid = _uid(key, "sop", i)
            ds.file_meta = _file_meta(CTImageStorage, sop_uid)
            ds.SOPInstanceUID = sop_uid
            ds.InstanceNumber = i + 1
            ds.ImagePositionPatient = [-179.2, -179.2, round(-slices / 2 + i, 2)]
            ds.SliceLocation = round(-slices / 2 + i, 2)
            ds.PixelData = stored.tobytes()
            rel = f"st{s:03d}/im{i:04d}.dcm"
            nbytes += _write(ds, out / rel)
            files.append(rel)
    return _finish(out, "ct", files, nbytes, {"studies": studies, "slices": slices, "seed": seed})


def generate_small(out: Path, studies: int = 10_000, seed: int = 1) -> dict:
    """Write ``studies`` one-instance studies with 16x16 pixel data below ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    pixels = (np.arange(256, dtype=np.int16).reshape(16, 16) * 4).tobytes()
    files: list[str] = []
    nbytes = 0
    for i in range(studies):
        meta = small_study_meta(i, seed)
        ds = _base_dataset(meta, 16, 16)
        sop_uid = _uid(f"small-{seed}-{i}", "sop")
        ds.file_meta = _file_meta(CTImageStorage, sop_uid)
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = 1
        ds.ImagePositionPatient = [0, 0, 0]
        ds.PixelSpacing = [20.0, 20.0]
        ds.SliceThickness = 5.0
        ds.PixelData = pixels
        rel = f"{i // 1000:03d}/{i:06d}.dcm"
        (out / rel).parent.mkdir(exist_ok=True)
        nbytes += _write(ds, out / rel)
        files.append(rel)
    return _finish(out, "small", files, nbytes, {"studies": studies, "seed": seed})


def load_or_generate(out: Path, kind: str, studies: int, slices: int = 1, seed: int = 1) -> dict:
    """Return the manifest of a cached set, generating it if needed."""
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        return json.loads(manifest_path.read_text())
    if kind == "ct":
        return generate_ct(out, studies, slices, seed)
    return generate_small(out, studies, seed)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="output directory")
    parser.add_argument("--studies", type=int, default=4)
    parser.add_argument("--slices", type=int, default=250)
    parser.add_argument(
        "--small", type=int, metavar="N", help="generate N one-instance studies instead"
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    t0 = time.perf_counter()
    if args.small:
        m = generate_small(args.out, args.small, args.seed)
    else:
        m = generate_ct(args.out, args.studies, args.slices, args.seed)
    took = time.perf_counter() - t0
    print(f"{len(m['files'])} files, {m['bytes'] / 1e6:.1f} MB in {took:.1f}s -> {args.out}")


if __name__ == "__main__":
    main()
