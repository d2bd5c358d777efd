"""`hilum keys generate|status|rotate|encrypt-existing`: master keys of encryption at rest."""

from __future__ import annotations

import argparse
import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hilum.domain.errors import HilumError
from hilum.storage.crypto import KeyFileError, KeyRing, MasterKey, generate_key, read_key_file, write_key_file


def add_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    keys = sub.add_parser("keys", help="master keys of storage encryption at rest")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    gen = keys_sub.add_parser("generate", help="write a new master key file (mode 0600; never overwrites)")
    gen.add_argument("path", type=Path)
    status = keys_sub.add_parser("status", help="stored files per master key, and plaintext ones")
    common(status)
    status.add_argument("--verify", action="store_true",
                        help="also decrypt and authenticate every file (reads the whole area)")
    rotate = keys_sub.add_parser(
        "rotate", help="re-wrap every file's data key under a new master key (pixel data untouched)"
    )
    common(rotate)
    rotate.add_argument("--new-key-file", type=Path,
                        help="the new master key (default: the configured current key)")
    rotate.add_argument("--old-key-file", type=Path, action="append", default=[],
                        help="a master key files may still be under (repeatable; the configured "
                        "keys are always tried)")
    rotate.add_argument("--batch", type=int, default=512, help=argparse.SUPPRESS)
    enc = keys_sub.add_parser("encrypt-existing",
                              help="encrypt files stored before encryption was enabled")
    common(enc)


@contextmanager
def _server_lock(data_dir: Path) -> Iterator[bool]:
    """Hold the data directory's `hilum serve` lock if free; yields whether it was."""
    path = data_dir / "hilum.lock"
    if not path.exists():
        yield True
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read(path: Path) -> MasterKey:
    try:
        return read_key_file(path)
    except KeyFileError as exc:
        raise HilumError(str(exc)) from None


def run(args: argparse.Namespace, settings_factory: Callable[[], Any], out: Any) -> int:
    command = args.keys_command
    if command == "generate":
        return _generate(args.path, out)
    settings = settings_factory()
    from hilum.storage.encrypted import EncryptedStorage
    from hilum.storage.factory import (
        check_keys_against_marker,
        load_keyring,
        read_marker,
        record_key_ids,
    )
    from hilum.storage.filesystem import FilesystemStorage

    config = settings.storage.encryption
    keyring = load_keyring(config, required=False)
    inner = FilesystemStorage(settings.storage_dir)
    if command == "status":
        storage = EncryptedStorage(inner, keyring, encrypt=False)
        return _status(storage, keyring, read_marker(inner.root), args.verify, out)
    if command == "encrypt-existing":
        if not config.enabled or keyring.current is None:
            raise HilumError("encrypt-existing needs storage.encryption.enabled = true and its master key")
        check_keys_against_marker(keyring, read_marker(inner.root), inner.root)
        record_key_ids(inner.root, [keyring.current.hex_id])
        return _encrypt_existing(EncryptedStorage(inner, keyring), settings, out)
    # rotate
    target = _read(args.new_key_file) if args.new_key_file else keyring.current
    if target is None:
        raise HilumError("no new master key: give --new-key-file or configure storage.encryption.key_file")
    olds = [_read(p) for p in args.old_key_file]
    ring = keyring.with_keys(*olds, target)
    check_keys_against_marker(ring, read_marker(inner.root), inner.root)
    configured = keyring.get(target.key_id) is not None
    with _server_lock(settings.data_dir) as free:
        if not configured and not free:
            raise HilumError(
                f"`hilum serve` is running on {settings.data_dir} and the new key {target.hex_id} is not "
                "in its configuration: it could not read the files re-wrapped under it. Configure the new "
                "key as storage.encryption.key_file (the old one in previous_key_files), restart, then "
                "rotate; or stop the server first."
            )
        record_key_ids(inner.root, [target.hex_id])
        return _rotate(EncryptedStorage(inner, ring, encrypt=False), ring, target, configured,
                       settings, args.batch, out)


def _generate(path: Path, out: Any) -> int:
    key = generate_key()
    try:
        write_key_file(path, key)
    except FileExistsError:
        raise HilumError(f"{path} exists; a key file is never overwritten") from None
    except OSError as exc:
        raise HilumError(f"cannot write {path}: {exc.strerror or exc}") from None
    out.print(f"new master key {key.hex_id} written to {path} (mode 0600)", markup=False, highlight=False)
    out.print("Keep a copy apart from the data and its backups: without it the files it encrypts "
              "cannot be read.", markup=False, highlight=False)
    return 0


def _status(storage: Any, keyring: KeyRing, marker: Any, verify_all: bool, out: Any) -> int:
    from hilum.storage.rekey import area_status

    status = area_status(storage, verify_all=verify_all)
    current = keyring.current.hex_id if keyring.current else "none"
    others = [k for k in keyring.ids() if k != current]
    out.print(f"configured master key: {current}" + (f" (also: {', '.join(others)})" if others else ""),
              markup=False, highlight=False)
    if marker is not None:
        out.print(f"keys that have encrypted files here: {', '.join(marker.key_ids)}",
                  markup=False, highlight=False)
    out.print(f"{status.files} stored files: {status.encrypted} encrypted, {status.plaintext} plaintext",
              markup=False, highlight=False)
    for ids, count in sorted(status.by_key.items()):
        known = keyring.ids()
        names = [f"{k} ({'configured' if k in known else 'NOT configured'})" for k in ids.split("+")]
        note = "  [mid-rotation: two keys]" if "+" in ids else ""
        out.print(f"  {count:>10}  under {' and '.join(names)}{note}", markup=False, highlight=False)
    if verify_all:
        out.print(f"verified (decrypted and authenticated): {status.verified}", markup=False, highlight=False)
    for problem in status.damaged[:50]:
        out.print(f"  FAILED {problem}", markup=False, highlight=False)
    if len(status.damaged) > 50:
        out.print(f"  ... and {len(status.damaged) - 50} more", markup=False, highlight=False)
    return 1 if status.damaged else 0


def _audit(settings: Any, detail: str, success: bool) -> None:
    from hilum.audit import codes
    from hilum.audit.service import AuditService, os_user
    from hilum.index.database import make_engine, upgrade

    engine = make_engine(settings.index_url, pool_size=1)
    try:
        upgrade(engine)  # like every command: the schema (and its audit table) is current
        audit = AuditService(settings, engine)
        audit.configuration_changed(
            by=f"cli:{os_user()}", ip=audit.hostname, subject="hilum:storage/encryption/master-key",
            detail=detail, kind="security-configuration",
            outcome=codes.SUCCESS if success else codes.MINOR_FAILURE,
        )
        audit.close()
    finally:
        engine.dispose()


def _rotate(storage: Any, ring: KeyRing, target: MasterKey, configured: bool, settings: Any,
            batch: int, out: Any) -> int:
    from hilum.storage.rekey import rotate

    report = rotate(storage, ring, target, batch=batch,
                    progress=lambda text: out.print(text, markup=False, highlight=False))
    olds = ", ".join(f"{k} ({n})" for k, n in sorted(report.from_keys.items())) or "none"
    out.print(
        f"re-wrapped {report.rotated} file(s) under {target.hex_id} (from: {olds}); "
        f"{report.already} already under it, {report.plaintext} plaintext, {len(report.failed)} failed",
        markup=False, highlight=False,
    )
    for problem in report.failed[:50]:
        out.print(f"  FAILED {problem}", markup=False, highlight=False)
    ok = not report.failed
    _audit(settings, f"hilum keys rotate: {report.rotated} file(s) re-wrapped under master key "
           f"{target.hex_id} (from {olds}); {len(report.failed)} failed", ok)
    if ok and not configured:
        out.print(f"Now configure {target.source or 'the new key'} as storage.encryption.key_file "
                  "before starting Hilum.", markup=False, highlight=False)
    if ok:
        out.print("Old master keys no longer open any file here (keep them for older backups).",
                  markup=False, highlight=False)
    else:
        out.print("Run the rotation again once the failures are understood: it resumes.",
                  markup=False, highlight=False)
    return 0 if ok else 1


def _encrypt_existing(storage: Any, settings: Any, out: Any) -> int:
    from hilum.storage.rekey import encrypt_existing

    report = encrypt_existing(storage, progress=lambda text: out.print(text, markup=False, highlight=False))
    out.print(
        f"encrypted {report.encrypted} file(s) ({report.bytes / 1e6:.1f} MB); {report.already} already "
        f"encrypted, {len(report.failed)} failed", markup=False, highlight=False,
    )
    for problem in report.failed[:50]:
        out.print(f"  FAILED {problem}", markup=False, highlight=False)
    _audit(settings, f"hilum keys encrypt-existing: {report.encrypted} file(s) encrypted; "
           f"{len(report.failed)} failed", not report.failed)
    if not report.failed:
        out.print("The plaintext copies are unlinked, not overwritten: see docs/security.md.",
                  markup=False, highlight=False)
    return 0 if not report.failed else 1
