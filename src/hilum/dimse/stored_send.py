"""Sending stored files that have no local path (encrypted at rest) as their bytes.

pynetdicom sends a C-STORE data set unchanged only from a *file path*
(``STORE_SEND_CHUNKED_DATASET``): ``split_dataset(path)`` reads the File Meta,
then the message encoder reads the data set from ``open(path, "rb")`` in
PDV-sized pieces. For an object that exists only through the storage area,
:func:`sendable` hands out a *virtual* path (under ``/dev/null/``, so it can
never name a real file) that the ``open`` of those two pynetdicom modules
resolves to the storage area's reader. The bytes stay the stored ones and no
decrypted copy is written anywhere.

Objects up to ``VERIFIED_MAX`` are decrypted and authenticated completely before
the first byte goes out, so a damaged file fails its sub-operation cleanly.
Larger ones are streamed; one that fails mid-way aborts the association (the
peer never gets a complete, wrong object), see :func:`abort_broken_send`.
"""

from __future__ import annotations

import builtins
import io
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from hilum.storage.base import Source, StoredFile

LOG = logging.getLogger(__name__)
VIRTUAL_ROOT = "/dev/null/hilum-stored"
VERIFIED_MAX = 32 << 20

class _Virtual:
    """What a virtual path stands for; opened lazily, so that a bad file fails its own send."""

    def __init__(self, source: StoredFile) -> None:
        self.source = source
        self.size: int | None = None

    def open(self) -> BinaryIO:
        handle = self.source.open()
        try:
            self.size = handle.seek(0, io.SEEK_END)
            handle.seek(0)
            if self.size > VERIFIED_MAX:
                return handle
            # Every segment authenticated before pynetdicom sees a byte.
            data = handle.read()
        except BaseException:
            handle.close()
            raise
        handle.close()
        return io.BytesIO(data)


_virtual: dict[str, _Virtual] = {}
_lock = threading.Lock()
_installed = False


def _open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
    if isinstance(file, (str, os.PathLike)):
        virtual = _virtual.get(os.fspath(file))
        if virtual is not None:
            if mode != "rb":
                raise OSError(f"stored object {file} can only be read")
            return virtual.open()
    return builtins.open(file, mode, *args, **kwargs)


def install() -> None:
    """Idempotent: route the ``open`` of pynetdicom's file-sending code through :func:`_open`."""
    global _installed
    if _installed:
        return
    import pynetdicom.dimse_messages
    import pynetdicom.dsutils

    pynetdicom.dimse_messages.open = _open  # type: ignore[attr-defined]
    pynetdicom.dsutils.open = _open  # type: ignore[attr-defined]
    _installed = True


@contextmanager
def sendable(source: Source) -> Iterator[Path]:
    """A path pynetdicom's ``send_c_store`` (and :func:`open_sendable`) can send from."""
    if isinstance(source, Path):
        yield source
        return
    install()
    path = f"{VIRTUAL_ROOT}/{uuid.uuid4().hex}/{source.name}"
    with _lock:
        _virtual[path] = _Virtual(source)
    try:
        yield Path(path)
    finally:
        with _lock:
            _virtual.pop(path, None)


def open_sendable(path: Path) -> BinaryIO:
    """Open a real or virtual (:func:`sendable`) path for reading."""
    virtual = _virtual.get(str(path))
    return virtual.source.open() if virtual is not None else path.open("rb")


def sendable_size(path: Path) -> int:
    virtual = _virtual.get(str(path))
    if virtual is None:
        return path.stat().st_size
    if virtual.size is None:
        with virtual.source.open() as handle:
            virtual.size = handle.seek(0, io.SEEK_END)
    return virtual.size


def abort_broken_send(assoc: Any) -> None:
    """After reading a stored file failed inside ``send_c_store``: if the message had
    started (pynetdicom pauses its reactor around the send), abort the association."""
    checkpoint = getattr(assoc, "_reactor_checkpoint", None)
    if checkpoint is None or checkpoint.is_set():
        return  # failed before the message started: the association is intact
    checkpoint.set()
    LOG.error("aborting the association: a stored file failed its integrity check mid-send")
    try:
        assoc.abort()
    except Exception:  # already gone
        LOG.debug("abort failed", exc_info=True)
