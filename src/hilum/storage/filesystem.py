"""Filesystem storage area: files under one root, written atomically and durably.

Layout: ``<root>/<key>``; staging under ``<root>/.staging``. A commit is a
``rename`` from staging (same filesystem, atomic), after the caller fsync'd
the file; the directory entries are fsync'd in :meth:`sync`, once per
directory per batch. A crash leaves at most files in ``.staging``, which
:meth:`recover` removes at start-up, never a half-written file under a key.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from hilum.storage.base import CommitReceipt, ObjectNotFound, StorageError, StoredObject

_STAGING = ".staging"
_CHUNK = 1 << 20


class FilesystemStorage:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._staging = self.root / _STAGING
        self._staging.mkdir(parents=True, exist_ok=True)

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
            return self._path(key).open("rb")
        except FileNotFoundError:
            raise ObjectNotFound(key) from None

    def open_range(self, key: str, start: int, length: int) -> Iterator[bytes]:
        with self.open(key) as handle:
            handle.seek(start)
            remaining = length
            while remaining > 0:
                chunk = handle.read(min(_CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                yield chunk

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

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
            rel = os.path.relpath(dirpath, self.root)
            for name in filenames:
                yield name if rel == "." else f"{rel}/{name}"

    def recover(self) -> int:
        removed = 0
        for entry in self._staging.iterdir():
            if entry.is_file():
                entry.unlink(missing_ok=True)
                removed += 1
        return removed
