"""Many tiny one-instance studies for the QIDO-RS benchmark (bench/dicomweb.py).

Each study has one series with one 8x8 16-bit instance (explicit VR little
endian Part 10, ~2 KB). Patients, names, dates, accession numbers come from
``gen_ct._study_meta`` (4 studies per patient, ~1000 distinct names, dates over
ten years); the modality is drawn per study from a weighted list, with the SOP
class that goes with it, so ModalitiesInStudy queries have realistic selectivity.

Deterministic for a given (count, seed); a set directory holds a
``manifest.json`` (written last) so callers can reuse a cached set::

    python bench/gen_many.py /tmp/hilum-bench-cache/many-10000-s1 --count 10000
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
from pydicom.uid import UID

import gen_ct

# (modality, SOP class UID, weight)
MODALITIES: tuple[tuple[str, str, int], ...] = (
    ("CT", "1.2.840.10008.5.1.4.1.1.2", 30),  # CT Image Storage
    ("MR", "1.2.840.10008.5.1.4.1.1.4", 20),  # MR Image Storage
    ("CR", "1.2.840.10008.5.1.4.1.1.1", 15),  # Computed Radiography
    ("DX", "1.2.840.10008.5.1.4.1.1.1.1", 10),  # Digital X-Ray (presentation)
    ("US", "1.2.840.10008.5.1.4.1.1.6.1", 10),  # Ultrasound
    ("MG", "1.2.840.10008.5.1.4.1.1.1.2", 5),  # Digital Mammography (presentation)
    ("PT", "1.2.840.10008.5.1.4.1.1.128", 5),  # PET
    ("NM", "1.2.840.10008.5.1.4.1.1.20", 5),  # Nuclear Medicine
)
_WEIGHTS = [w for _, _, w in MODALITIES]


def study_meta(index: int, seed: int = 1) -> dict[str, str]:
    """Header values of study ``index`` (also used to build queries)."""
    key = f"many-{seed}-{index}"
    rnd = random.Random(key)
    meta = gen_ct._study_meta(rnd, key, patient=index // 4)
    modality, sop_class, _ = rnd.choices(MODALITIES, weights=_WEIGHTS)[0]
    meta |= {"modality": modality, "sop_class": sop_class, "sop_uid": gen_ct._uid(key, "sop")}
    return meta


def generate(out: Path, count: int = 10_000, seed: int = 1) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    pixels = (np.arange(64, dtype=np.int16).reshape(8, 8) * 16).tobytes()
    files: list[str] = []
    nbytes = 0
    for i in range(count):
        meta = study_meta(i, seed)
        ds = gen_ct._base_dataset(meta, 8, 8)
        ds.Modality = meta["modality"]
        ds.SOPClassUID = UID(meta["sop_class"])
        ds.SeriesDescription = f"{meta['modality']} SERIES"
        ds.file_meta = gen_ct._file_meta(ds.SOPClassUID, UID(meta["sop_uid"]))
        ds.SOPInstanceUID = meta["sop_uid"]
        ds.SeriesNumber = 1
        ds.InstanceNumber = 1
        ds.ImagePositionPatient = [0, 0, 0]
        ds.PixelSpacing = [40.0, 40.0]
        ds.PixelData = pixels
        rel = f"{i // 1000:03d}/{i:06d}.dcm"
        (out / rel).parent.mkdir(exist_ok=True)
        nbytes += gen_ct._write(ds, out / rel)
        files.append(rel)
    return gen_ct._finish(out, "many", files, nbytes, {"studies": count, "seed": seed})


def load_or_generate(out: Path, count: int, seed: int = 1) -> dict:
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        return json.loads(manifest_path.read_text())
    return generate(out, count, seed)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="output directory")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    t0 = time.perf_counter()
    m = generate(args.out, args.count, args.seed)
    took = time.perf_counter() - t0
    print(f"{len(m['files'])} files, {m['bytes'] / 1e6:.1f} MB in {took:.1f}s -> {args.out}")


if __name__ == "__main__":
    main()
