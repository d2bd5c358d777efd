"""A filesystem storage area whose files are encrypted at rest (format: :mod:`hilum.storage.crypto`).

Writing: the staged plaintext (received, parsed and hashed by ingest) is
encrypted into a second staging file at :meth:`EncryptedStorage.commit`, which
is then renamed under its key like any commit; the plaintext staging file is
removed. :meth:`sync` is the filesystem's, so ingest's durability guarantee
(files durable before the index row) is unchanged.

Reading: :meth:`open` gives a seekable file object that decrypts the segments
it is asked for; :meth:`local_path` is ``None`` (the bytes on disk are not the
object's), so every reader goes through :meth:`open`. Files without the
encrypted magic (stored before encryption was enabled) are read as they are,
unless ``allow_plaintext`` is off. :meth:`stat` reports the plaintext size,
the size the index records.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, cast

from hilum.storage.base import (
    CommitReceipt,
    ObjectNotFound,
    StorageIntegrityError,
    StoredObject,
    read_range,
)
from hilum.storage.crypto import (
    HEADER_SIZE,
    KeyRing,
    encrypt_file,
    is_encrypted,
    open_encrypted,
    parse_header,
)
from hilum.storage.filesystem import FilesystemStorage


class EncryptedStorage:
    def __init__(
        self,
        inner: FilesystemStorage,
        keyring: KeyRing,
        *,
        encrypt: bool = True,
        allow_plaintext: bool = True,
    ) -> None:
        if encrypt and keyring.current is None:
            raise ValueError("encrypting new files needs a current master key")
        self.inner = inner
        self.keyring = keyring
        self.encrypt = encrypt
        self.allow_plaintext = allow_plaintext

    @property
    def root(self) -> Path:
        return self.inner.root

    # -- writing ---------------------------------------------------------------
    def staging_dir(self) -> Path:
        return self.inner.staging_dir()

    def commit(self, staged: Path, key: str) -> CommitReceipt:
        if not self.encrypt:
            return self.inner.commit(staged, key)
        sealed = self.encrypt_staged(staged, key)
        try:
            receipt = self.inner.commit(sealed, key)
        except BaseException:
            sealed.unlink(missing_ok=True)
            raise
        staged.unlink(missing_ok=True)
        return receipt

    def encrypt_staged(self, plain: Path, key: str) -> Path:
        """A new staging file holding ``plain`` encrypted under the current master key, to be
        stored as ``key`` (the encryption binds the file to its key)."""
        current = self.keyring.current
        if current is None:
            raise ValueError("no current master key")
        fd, name = tempfile.mkstemp(suffix=".enc", dir=self.inner.staging_dir())
        sealed = Path(name)
        try:
            with plain.open("rb") as source:
                encrypt_file(source, fd, os.fstat(source.fileno()).st_size, current, key)
        except BaseException:
            os.close(fd)
            sealed.unlink(missing_ok=True)
            raise
        os.close(fd)
        return sealed

    def sync(self, receipts: Iterable[CommitReceipt]) -> None:
        self.inner.sync(receipts)

    # -- reading ---------------------------------------------------------------
    def open(self, key: str) -> BinaryIO:
        path = self.inner._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        try:
            head = os.pread(fd, HEADER_SIZE, 0)
        except BaseException:
            os.close(fd)
            raise
        if is_encrypted(head):
            return cast(BinaryIO, open_encrypted(fd, self.keyring, key, head=head))
        if not self.allow_plaintext:
            os.close(fd)
            raise StorageIntegrityError(
                f"stored file {key} is not encrypted, and storage.encryption.allow_plaintext is false"
            )
        raw = io.FileIO(fd, "rb")
        raw.name = str(path)  # like open(path): pydicom's deferred reads reopen by name
        return io.BufferedReader(raw)

    def open_range(self, key: str, start: int, length: int) -> Iterator[bytes]:
        with self.open(key) as handle:
            yield from read_range(handle, start, length)

    def local_path(self, key: str) -> Path | None:
        # The bytes on disk are not the object's (and a plaintext file may be replaced
        # by its encrypted form at any time by `hilum keys encrypt-existing`).
        return None

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def stat(self, key: str) -> StoredObject:
        path = self.inner._path(key)
        try:
            with path.open("rb") as handle:
                head = handle.read(HEADER_SIZE)
                st = os.fstat(handle.fileno())
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        size = st.st_size
        if is_encrypted(head):
            size = parse_header(head, f"stored file {key}").plaintext_length
        return StoredObject(key=key, size=size, mtime=st.st_mtime)

    def keys(self) -> Iterator[str]:
        return self.inner.keys()

    def recover(self, older_than: float | None = None) -> int:
        return self.inner.recover(older_than)
