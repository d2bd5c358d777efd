"""Cost of encryption at rest, measured on the storage area itself (one core, warm page cache).

    .venv/bin/python bench/encryption.py [--dir /path/on/the/archive/disk]

Compares a plain FilesystemStorage with an EncryptedStorage on the same disk:
commit (encrypt + rename), reading whole files, reading one frame at random
offsets of a large multi-frame file, opening a file (header + key unwrap), and
re-wrapping (rotation). Results are quoted in docs/security.md.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hilum.storage.crypto import KeyRing, generate_key
from hilum.storage.encrypted import EncryptedStorage
from hilum.storage.filesystem import FilesystemStorage
from hilum.storage.rekey import rotate

MB = 1e6


def _timed(fn: Callable[[], object], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def _commit_all(storage: FilesystemStorage | EncryptedStorage, blobs: list[bytes], prefix: str) -> None:
    receipts = []
    for n, blob in enumerate(blobs):
        staged = storage.staging_dir() / f"b{n}.part"
        staged.write_bytes(blob)
        receipts.append(storage.commit(staged, f"{prefix}/{n:05d}.dcm"))


def _read_all(storage: FilesystemStorage | EncryptedStorage, prefix: str, count: int) -> None:
    for n in range(count):
        with storage.open(f"{prefix}/{n:05d}.dcm") as handle:
            while handle.read(1 << 20):
                pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(dir=args.dir))
    key = generate_key()
    plain = FilesystemStorage(root / "plain")
    sealed = EncryptedStorage(FilesystemStorage(root / "sealed"), KeyRing(key))

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead, segment = AESGCM(AESGCM.generate_key(bit_length=256)), os.urandom(64 * 1024)
    sealed_segment = aead.encrypt(bytes(12), segment, b"h" * 64)
    def seal() -> None:
        for _ in range(4000):
            aead.encrypt(bytes(12), segment, b"h" * 64)

    def unseal() -> None:
        for _ in range(4000):
            aead.decrypt(bytes(12), sealed_segment, b"h" * 64)

    t_enc, t_dec = _timed(seal), _timed(unseal)
    print(f"AES-256-GCM, 64 KiB segments, one core: encrypt {4000 * 65536 / t_enc / MB:.0f} MB/s, "
          f"decrypt {4000 * 65536 / t_dec / MB:.0f} MB/s")
    print(f"{'':34} {'plain':>12} {'encrypted':>12}")
    # Many CT-sized files (512 KiB), then one large multi-frame file.
    for label, count, size in (("512 KiB files x 400", 400, 512 * 1024), ("200 MB file x 1", 1, 200_000_000)):
        blobs = [random.randbytes(size) for _ in range(count)]
        total = count * size
        runs: dict[int, int] = {}

        def commit(
            storage: FilesystemStorage | EncryptedStorage, tag: str,
            runs: dict[int, int] = runs, blobs: list[bytes] = blobs,
        ) -> Callable[[], None]:
            def run() -> None:
                runs[id(storage)] = runs.get(id(storage), 0) + 1
                _commit_all(storage, blobs, f"{tag}{runs[id(storage)]}")
            return run

        t_plain = _timed(commit(plain, "c"), 2)
        t_sealed = _timed(commit(sealed, "c"), 2)
        print(f"commit {label:27} {total / t_plain / MB:9.0f} MB/s {total / t_sealed / MB:9.0f} MB/s")
        t_plain = _timed(lambda runs=runs, count=count: _read_all(plain, f"c{runs[id(plain)]}", count))
        t_sealed = _timed(lambda runs=runs, count=count: _read_all(sealed, f"c{runs[id(sealed)]}", count))
        print(f"read   {label:27} {total / t_plain / MB:9.0f} MB/s {total / t_sealed / MB:9.0f} MB/s")

    # One 512 KiB frame at a random offset of the 200 MB file (WADO-RS /frames/n).
    frame = 512 * 1024
    rng = random.Random(1)
    offsets = [rng.randrange(0, 200_000_000 - frame) for _ in range(300)]

    def frames(storage: FilesystemStorage | EncryptedStorage) -> float:
        times = []
        for offset in offsets:
            started = time.perf_counter()
            with storage.open(f"c{runs[id(storage)]}/00000.dcm") as handle:
                handle.seek(offset)
                handle.read(frame)
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    label = "one 512 KiB frame of 200 MB (median)"
    print(f"{label:34} {frames(plain) * 1e3:9.2f} ms {frames(sealed) * 1e3:9.2f} ms")

    def opens(storage: FilesystemStorage | EncryptedStorage) -> float:
        started = time.perf_counter()
        for n in range(400):
            storage.open(f"o/{n:05d}.dcm").close()
        return (time.perf_counter() - started) / 400

    _commit_all(plain, [b"x" * 1000] * 400, "o")
    _commit_all(sealed, [b"x" * 1000] * 400, "o")
    print(f"{'open (header + key unwrap)':34} {opens(plain) * 1e6:9.1f} us {opens(sealed) * 1e6:9.1f} us")

    # Rotation: 64 bytes written per file, twice, + two syncs per batch.
    many = EncryptedStorage(FilesystemStorage(root / "many"), KeyRing(key))
    _commit_all(many, [os.urandom(2000)] * 5000, "r")
    many.sync([])
    new = generate_key()
    started = time.perf_counter()
    report = rotate(many, KeyRing(key), new)
    elapsed = time.perf_counter() - started
    print(f"rotate: {report.rotated} files in {elapsed:.2f} s = {report.rotated / elapsed:.0f} files/s "
          "(independent of file size)")


if __name__ == "__main__":
    main()
