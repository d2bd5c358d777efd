"""Adjustments to pynetdicom's networking, measured in bench/ (see bench/RESULTS.md).

* TCP_NODELAY on every DICOM socket, accepted and requested. Without it a
  small DIMSE message (a C-FIND request, a C-STORE response) waits for the
  peer's delayed ACK: ~40 ms per round trip on Linux.
"""

from __future__ import annotations

import functools
import socket
from typing import Any

from pynetdicom.transport import AssociationSocket

_applied = False


def set_nodelay(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # not a TCP socket (tests may use socketpairs)
        pass


def apply_pynetdicom_tuning() -> None:
    """Idempotent; safe to call from every process that talks DICOM."""
    global _applied
    if _applied:
        return
    _applied = True
    original = AssociationSocket._create_socket

    @functools.wraps(original)
    def _create_socket(self: AssociationSocket, *args: Any, **kwargs: Any) -> socket.socket:
        sock = original(self, *args, **kwargs)
        set_nodelay(sock)
        return sock

    AssociationSocket._create_socket = _create_socket  # type: ignore[method-assign]
