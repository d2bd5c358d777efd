"""The storage area: opaque keys -> bytes. It never knows about patients.

Writers first *stage* a complete file (a local temporary file that is not
visible under any key), then :meth:`StorageArea.commit` makes it durable and
visible under its key in one atomic step. Readers open by key, optionally a
byte range. Backends: :mod:`hilum.storage.filesystem` (default).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, Protocol


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    size: int
    mtime: float


@dataclass(frozen=True, slots=True)
class CommitReceipt:
    """What :meth:`StorageArea.commit` leaves to be made durable by :meth:`StorageArea.sync`."""

    key: str
    pending: tuple[str, ...] = ()  # backend-specific (e.g. directories to fsync)


def read_range(handle: BinaryIO, start: int, length: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    """``length`` bytes of ``handle`` from ``start``, in chunks (fewer if the object is shorter)."""
    handle.seek(start)
    remaining = length
    while remaining > 0:
        data = handle.read(min(chunk, remaining))
        if not data:
            break
        remaining -= len(data)
        yield data


class StorageError(Exception):
    pass


class ObjectNotFound(StorageError):
    pass


class StorageIntegrityError(StorageError):
    """A stored object failed its integrity check (encrypted at rest: altered, damaged or
    truncated data, or a wrong key). Never answered with the bytes: a DIMSE failure
    status, an HTTP 500 problem, an aborted transfer."""


class StorageKeyError(StorageIntegrityError):
    """A stored object is encrypted under a master key this process was not given."""


class StorageArea(Protocol):
    """Create, read, read a range, remove, by opaque key (cf. Orthanc's IStorageArea)."""

    def staging_dir(self) -> Path:
        """A local directory for staged files; committing from it is a cheap rename."""
        ...

    def commit(self, staged: Path, key: str) -> CommitReceipt:
        """Make the staged file visible under ``key`` (atomically; consumes it).

        Call :meth:`sync` with the receipts before indexing or acknowledging:
        only then are the content and the new name durable.
        """
        ...

    def sync(self, receipts: Iterable[CommitReceipt]) -> None:
        """Make the commits durable; one call for a whole batch (group commit)."""
        ...

    def open(self, key: str) -> BinaryIO: ...

    def open_range(self, key: str, start: int, length: int) -> Iterator[bytes]: ...

    def local_path(self, key: str) -> Path | None:
        """A path to read the object directly, if the backend is local."""
        ...

    def delete(self, key: str) -> None: ...

    def exists(self, key: str) -> bool: ...

    def stat(self, key: str) -> StoredObject: ...

    def keys(self) -> Iterator[str]: ...

    def recover(self, older_than: float | None = None) -> int:
        """Remove leftovers of interrupted writes; return how many were removed.

        ``older_than`` (seconds): only leftovers untouched for that long, so it is
        safe while transfers are running (used periodically by `hilum serve`).
        """
        ...




class StoredFile:
    """A stored object read through its storage area, for backends that give no local
    path (encrypted at rest, object storage). Has the reading methods of a ``Path`` that
    the DICOM readers use (``open("rb")``, ``read_bytes``, ``exists``)."""

    __slots__ = ("key", "storage")

    def __init__(self, storage: StorageArea, key: str) -> None:
        self.storage = storage
        self.key = key

    def open(self, mode: Literal["rb"] = "rb") -> BinaryIO:
        return self.storage.open(self.key)

    def read_bytes(self) -> bytes:
        with self.open() as handle:
            return handle.read()

    def exists(self) -> bool:
        return self.storage.exists(self.key)

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    def __repr__(self) -> str:
        return f"StoredFile({self.key!r})"


# What the DICOM readers take: a local file, or a stored object read through its area.
Source = Path | StoredFile


def readable(storage: StorageArea, key: str) -> Source:
    """The stored object as a local path if the area has one, else read through the area."""
    path = storage.local_path(key)
    return path if path is not None else StoredFile(storage, key)
