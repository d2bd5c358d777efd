"""Filesystem storage area: files under one root, written atomically and durably.

Layout: ``<root>/<key>``; staging under ``<root>/.staging``. A commit is a
``rename`` from staging (same filesystem, atomic). :meth:`sync` then makes a
whole batch durable — file contents and the new directory entries — before
the index commits it:

* ``sync_mode = "syncfs"`` (default on Linux): one ``syncfs(2)`` per batch.
  It writes back every dirty page and the journal of this filesystem with a
  single cache flush, however many files the batch holds.
* ``sync_mode = "fsync"``: ``fsync`` each file, then each directory once.

A crash leaves at most files in ``.staging`` (removed by :meth:`recover` at
start-up) or committed files that no index row references yet; never an index
row without its file, because the index commits only after :meth:`sync`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from hilum.storage.base import (
    CommitReceipt,
    ObjectNotFound,
    StorageError,
    StorageKeyError,
    StoredObject,
    read_range,
)
from hilum.storage.crypto import MAGIC as ENCRYPTED_MAGIC

_STAGING = ".staging"


def _no_key(key: str) -> StorageKeyError:
    return StorageKeyError(
        f"stored file {key} is encrypted at rest, and no master key is configured "
        "(storage.encryption.key_file or key_env)"
    )


def _load_syncfs() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        return None
    syncfs.argtypes = [ctypes.c_int]
    syncfs.restype = ctypes.c_int
    return syncfs


_SYNCFS = _load_syncfs()


class FilesystemStorage:
    def __init__(self, root: Path, *, sync_mode: str = "syncfs") -> None:
        self.root = root.resolve()
        self._staging = self.root / _STAGING
        self._staging.mkdir(parents=True, exist_ok=True)
        if sync_mode not in ("syncfs", "fsync"):
            raise ValueError(f"unknown sync_mode {sync_mode!r}")
        self.sync_mode = sync_mode if _SYNCFS is not None else "fsync"

    # -- writing -----------------------------------------------------------
    def staging_dir(self) -> Path:
        return self._staging

    def _path(self, key: str) -> Path:
        if not key or key.startswith(("/", ".")) or ".." in key.split("/") or "\\" in key:
            raise StorageError(f"invalid storage key {key!r}")
        return self.root / key

    def commit(self, staged: Path, key: str) -> CommitReceipt:
        target = self._path(key)
        pending = [str(target.parent)]
        parent = target.parent
        if not parent.is_dir():
            # New directories must themselves be made durable in their parents.
            missing = []
            while not parent.exists():
                missing.append(parent)
                parent = parent.parent
            target.parent.mkdir(parents=True, exist_ok=True)
            pending.extend(str(p.parent) for p in missing)
        os.replace(staged, target)
        return CommitReceipt(key=key, pending=tuple(pending))

    def sync(self, receipts: Iterable[CommitReceipt]) -> None:
        receipts = list(receipts)
        if not receipts:
            return
        if self.sync_mode == "syncfs":
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                if _SYNCFS(fd) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"syncfs failed: {os.strerror(err)}")
            finally:
                os.close(fd)
            return
        for receipt in receipts:
            fd = os.open(self._path(receipt.key), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        directories = {d for r in receipts for d in r.pending}
        # Deepest first so a new directory is durable before its parent entry.
        for directory in sorted(directories, key=len, reverse=True):
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # -- reading -----------------------------------------------------------
    def open(self, key: str) -> BinaryIO:
        try:
            handle = self._path(key).open("rb")
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        # peek fills the buffer the first read uses anyway: no extra system call.
        if handle.peek(len(ENCRYPTED_MAGIC))[: len(ENCRYPTED_MAGIC)] == ENCRYPTED_MAGIC:
            handle.close()
            raise _no_key(key)
        return handle

    def open_range(self, key: str, start: int, length: int) -> Iterator[bytes]:
        with self.open(key) as handle:
            yield from read_range(handle, start, length)

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        try:
            with path.open("rb") as handle:
                encrypted = handle.read(len(ENCRYPTED_MAGIC)) == ENCRYPTED_MAGIC
        except FileNotFoundError:
            return path  # the caller reports it missing
        # An encrypted file has no usable local path: readers go through open(), which
        # refuses it loudly instead of handing out ciphertext as DICOM.
        return None if encrypted else path

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def stat(self, key: str) -> StoredObject:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        return StoredObject(key=key, size=st.st_size, mtime=st.st_mtime)

    def keys(self) -> Iterator[str]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            if dirpath == str(self.root):
                dirnames[:] = [d for d in dirnames if d != _STAGING]
                # Keys never start with "." (see _path): dot files here are the area's own.
                filenames = [f for f in filenames if not f.startswith(".")]
            rel = os.path.relpath(dirpath, self.root)
            for name in filenames:
                yield name if rel == "." else f"{rel}/{name}"

    def recover(self, older_than: float | None = None) -> int:
        removed = 0
        cutoff = None if older_than is None else time.time() - older_than
        for entry in self._staging.iterdir():
            try:
                if not entry.is_file() or (cutoff is not None and entry.stat().st_mtime > cutoff):
                    continue
            except FileNotFoundError:
                continue
            entry.unlink(missing_ok=True)
            removed += 1
        return removed
