"""Outcomes of the one write path, mapped once to DIMSE and HTTP.

Every source of instances (C-STORE, STOW-RS, import, forwarding) gets the
same :class:`IngestStatus`; protocol adapters only translate it.
"""

from __future__ import annotations

import errno
from enum import Enum


class IngestStatus(Enum):
    # value: (DIMSE status (PS3.4 B.2.3 / PS3.7 C), HTTP status, short reason)
    STORED = (0x0000, 200, "stored")
    ALREADY_STORED = (0x0000, 200, "already stored")
    REPLACED = (0x0000, 200, "replaced")
    DUPLICATE_REJECTED = (0xA900, 409, "a different instance with this SOP Instance UID is stored")
    STUDY_MISMATCH = (0xA900, 409, "instance belongs to another study than the request names")
    MISSING_ATTRIBUTE = (0xA900, 400, "data set does not match SOP class")
    NOT_DICOM = (0xC000, 400, "cannot understand")
    CANNOT_UNDERSTAND = (0xC000, 400, "cannot understand")
    SOP_CLASS_NOT_SUPPORTED = (0x0122, 415, "SOP class not supported")
    OUT_OF_RESOURCES = (0xA700, 507, "out of resources")
    PROCESSING_FAILURE = (0x0110, 500, "processing failure")

    @property
    def dimse_status(self) -> int:
        return self.value[0]

    @property
    def http_status(self) -> int:
        return self.value[1]

    @property
    def reason(self) -> str:
        return self.value[2]

    @property
    def ok(self) -> bool:
        return self.dimse_status in (0x0000, 0xB000)


class HilumError(Exception):
    """Base class of Hilum's own errors."""


class IngestFailure(HilumError):
    """An instance was refused; nothing was written."""

    def __init__(self, status: IngestStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        # Known when the data set could be parsed (STOW-RS names them in FailedSOPSequence).
        self.sop_class_uid = ""
        self.sop_instance_uid = ""

    def __str__(self) -> str:
        return f"{self.status.reason}: {self.message}"


class NotFound(HilumError):
    pass


class InvalidQuery(HilumError):
    """A query identifier / parameter that cannot be matched as asked."""


_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# SQLite result codes: SQLITE_FULL "database or disk is full", and SQLITE_IOERR_SHMSIZE, the
# WAL index (-shm file) could not be enlarged, which SQLite documents as usually a full disk
_SQLITE_FULL = frozenset({13, 4874})
_PG_DISK_FULL = "53100"  # PostgreSQL SQLSTATE disk_full


def out_of_space(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) is the disk or quota being full: the archive is
    out of resources (DIMSE 0xA700, HTTP 507), not broken, and the sender may retry later."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
            return True
        if getattr(exc, "sqlite_errorcode", None) in _SQLITE_FULL or "database or disk is full" in str(exc):
            return True
        if getattr(exc, "sqlstate", None) == _PG_DISK_FULL:
            return True
        exc = getattr(exc, "orig", None) or exc.__cause__ or exc.__context__
    return False
