"""Operations over a whole encrypted storage area: status, key rotation, encrypting old files.

Rotation re-wraps each file's data key under the new master key in the
header's free key slot and never touches the segments (no pixel data is read
or rewritten: 64 bytes written per file, twice). Per batch of files:

1. write the new wrap into the slot not holding the working old wrap, and
   read it back;
2. make the batch durable (one ``syncfs``, or ``fsync`` per file);
3. clear the old slot(s).

A crash at any point leaves every file with at least one intact slot under a
key the operator still holds (the old one until step 2, the new one after);
running the rotation again resumes it, since each file says which master key
wrapped it. Nothing needs an atomic multi-byte write: a torn write damages
only the slot being written, and the other slot is untouched.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap

from hilum.storage.base import CommitReceipt, StorageIntegrityError
from hilum.storage.crypto import (
    EMPTY_SLOT,
    HEADER_SIZE,
    SLOT_OFFSETS,
    Header,
    KeyRing,
    MasterKey,
    is_encrypted,
    open_encrypted,
    parse_header,
    unwrap,
    verify,
    wrap,
)
from hilum.storage.encrypted import EncryptedStorage

Progress = Callable[[str], None]


def _chunks(items: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _read_header(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, HEADER_SIZE, 0)
    finally:
        os.close(fd)


# -- status ---------------------------------------------------------------------------
@dataclass
class AreaStatus:
    files: int = 0
    plaintext: int = 0
    by_key: Counter[str] = field(default_factory=Counter)  # "id" or "id+id" (mid-rotation)
    damaged: list[str] = field(default_factory=list)  # key: reason
    verified: int = 0

    @property
    def encrypted(self) -> int:
        return sum(self.by_key.values())


def area_status(storage: EncryptedStorage, *, verify_all: bool = False,
                progress: Progress | None = None) -> AreaStatus:
    """Count files per wrapping master key; with ``verify_all`` decrypt and authenticate each."""
    status = AreaStatus()
    for key in storage.keys():  # noqa: SIM118 (a StorageArea, not a dict)
        path = storage.inner._path(key)
        try:
            head = _read_header(path)
        except FileNotFoundError:
            continue
        status.files += 1
        if not is_encrypted(head):
            status.plaintext += 1
            continue
        try:
            header = parse_header(head, f"stored file {key}")
        except StorageIntegrityError as exc:
            status.damaged.append(str(exc))
            continue
        status.by_key["+".join(header.key_ids()) or "(no key)"] += 1
        if verify_all:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                with open_encrypted(fd, storage.keyring, key) as reader:
                    verify(reader)
                status.verified += 1
            except FileNotFoundError:
                continue
            except StorageIntegrityError as exc:
                status.damaged.append(str(exc))
        if progress and status.files % 10000 == 0:
            progress(f"{status.files} files looked at")
    return status


# -- rotation -------------------------------------------------------------------------
@dataclass
class RotationReport:
    rotated: int = 0
    already: int = 0
    plaintext: int = 0
    gone: int = 0
    failed: list[str] = field(default_factory=list)
    from_keys: Counter[str] = field(default_factory=Counter)


def _slot_opens(header: Header, index: int, key: MasterKey, name: str) -> bool:
    slot = header.slots[index]
    if slot.key_id != key.key_id:
        return False
    try:
        aes_key_unwrap(key.kek(header, name), slot.wrapped)
    except InvalidUnwrap:
        return False
    return True


def _target_slot(header: Header, target: MasterKey, name: str) -> int | None:
    for index in range(len(header.slots)):
        if _slot_opens(header, index, target, name):
            return index
    return None


def _pwrite_slot(fd: int, index: int, data: bytes) -> None:
    written = os.pwrite(fd, data, SLOT_OFFSETS[index])
    if written != len(data):
        raise OSError(f"short write of a key slot ({written} of {len(data)} bytes)")


def _add_wrap(path: Path, keyring: KeyRing, target: MasterKey, name: str) -> tuple[str, str]:
    """Step 1 for one file: ("rotated"|"already"|"plaintext", the old key id)."""
    what = f"stored file {name}"
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        head = os.pread(fd, HEADER_SIZE, 0)
        if not is_encrypted(head):
            return "plaintext", ""
        header = parse_header(head, what)
        if _target_slot(header, target, name) is not None:
            others = [s for s in header.slots if not s.empty and s.key_id != target.key_id]
            return ("rotated" if others else "already"), ""
        dek, opened_by, used = unwrap(header, keyring, name)
        free = 1 - used
        _pwrite_slot(fd, free, wrap(header, target, dek, name).encode())
        check = parse_header(os.pread(fd, HEADER_SIZE, 0), what)
        if not _slot_opens(check, free, target, name):
            raise StorageIntegrityError(f"{what}: the new key slot did not read back intact")
        return "rotated", opened_by.hex_id
    finally:
        os.close(fd)


def _clear_old(path: Path, target: MasterKey, name: str) -> None:
    """Step 3 for one file: empty every slot but the (durable) one under ``target``."""
    what = f"stored file {name}"
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        header = parse_header(os.pread(fd, HEADER_SIZE, 0), what)
        keep = _target_slot(header, target, name)
        if keep is None:  # never clear the only way into the file
            raise StorageIntegrityError(f"{what}: no intact key slot under the new master key")
        for index, slot in enumerate(header.slots):
            if index != keep and slot != EMPTY_SLOT:
                _pwrite_slot(fd, index, EMPTY_SLOT.encode())
    finally:
        os.close(fd)


def rotate(storage: EncryptedStorage, keyring: KeyRing, target: MasterKey, *, batch: int = 512,
           progress: Progress | None = None, stop_after: int | None = None) -> RotationReport:
    """Re-wrap every encrypted file's data key under ``target``; ``keyring`` opens the old ones.

    ``stop_after`` (tests): return after that many files have had step 1, leaving the
    batch in the state a crash between steps 1 and 2 would.
    """
    keyring = keyring.with_keys(target)
    report = RotationReport()
    started = time.monotonic()
    touched_total = 0
    for keys in _chunks(storage.keys(), batch):
        touched: list[tuple[str, Path]] = []
        for key in keys:
            path = storage.inner._path(key)
            try:
                outcome, old = _add_wrap(path, keyring, target, key)
            except FileNotFoundError:
                report.gone += 1
                continue
            except (StorageIntegrityError, OSError) as exc:
                report.failed.append(f"{key}: {exc}")
                continue
            if outcome == "plaintext":
                report.plaintext += 1
            elif outcome == "already":
                report.already += 1
            else:
                touched.append((key, path))
                if old:
                    report.from_keys[old] += 1
                touched_total += 1
                if stop_after is not None and touched_total >= stop_after:
                    return report
        if not touched:
            continue
        # Step 2: the new wraps are durable before any old one goes.
        storage.inner.sync(CommitReceipt(key=key) for key, _ in touched)
        for key, path in touched:
            try:
                _clear_old(path, target, key)
                report.rotated += 1
            except FileNotFoundError:
                report.gone += 1
            except (StorageIntegrityError, OSError) as exc:
                report.failed.append(f"{key}: {exc}")
        storage.inner.sync(CommitReceipt(key=key) for key, _ in touched)
        if progress:
            progress(f"{report.rotated} files re-wrapped ({time.monotonic() - started:.0f} s)")
    return report


# -- encrypting files stored in plaintext -------------------------------------------------
@dataclass
class EncryptReport:
    encrypted: int = 0
    already: int = 0
    gone: int = 0
    bytes: int = 0
    failed: list[str] = field(default_factory=list)


def encrypt_existing(storage: EncryptedStorage, *, batch: int = 256,
                     progress: Progress | None = None) -> EncryptReport:
    """Replace each plaintext file by its encrypted form (atomic rename; durable per batch)."""
    report = EncryptReport()
    for keys in _chunks(storage.keys(), batch):
        receipts = []
        for key in keys:
            path = storage.inner._path(key)
            try:
                if is_encrypted(_read_header(path)):
                    report.already += 1
                    continue
                sealed = storage.encrypt_staged(path, key)
                try:
                    if not path.exists():  # deleted meanwhile: do not bring it back
                        report.gone += 1
                        continue
                    size = path.stat().st_size
                    os.replace(sealed, path)
                finally:
                    sealed.unlink(missing_ok=True)
            except FileNotFoundError:
                report.gone += 1
                continue
            except OSError as exc:
                report.failed.append(f"{key}: {exc}")
                continue
            report.encrypted += 1
            report.bytes += size
            receipts.append(CommitReceipt(key=key, pending=(str(path.parent),)))
        storage.inner.sync(receipts)
        if progress and receipts:
            progress(f"{report.encrypted} files encrypted ({report.bytes / 1e9:.2f} GB)")
    return report
