"""Adjustments to pynetdicom's networking, measured in bench/ (see bench/RESULTS.md).

* TCP_NODELAY on every DICOM socket, accepted and requested. Without it a
  small DIMSE message (a C-FIND request, a C-STORE response) waits for the
  peer's delayed ACK: ~40 ms per round trip on Linux.
* A cheap copy of the acceptor's presentation contexts for each association:
  pynetdicom deep-copies them (170 storage SOP classes x 45 transfer syntaxes,
  ~80 ms of CPU per association; modalities often open one per image). UIDs
  are immutable, so copying each context and its syntax list is enough.
* pydicom's validation of values read from received data sets is off on the
  receive path: data sets are stored as received whatever their quirks, and
  the regex checks cost CPU per element.
* Private and unknown storage SOP classes are accepted (vendors send them; a PACS
  must keep them): pynetdicom's unrestricted storage mode, but with Hilum's
  own transfer syntax preference kept for the standard SOP classes.
* A response is never lost to the association's reactor thread. pynetdicom's
  send_*() methods pause the reactor before sending a request and then wait for
  the response on the DIMSE queue, but the pause check has a window: the reactor
  sets ``_is_paused`` just before waiting on a checkpoint that is still open, so
  the sender can see "paused" while the reactor goes on to take the next message,
  the response, and drop it as an "unexpected C-STORE service message"; the sender
  then waits the whole DIMSE timeout (seen in store jobs and C-MOVE sub-operations
  on a loaded machine). A response the reactor takes while a sender is waiting is
  put back at the head of the queue for that sender.
* A rejected association is reported as rejected. When requesting one,
  pynetdicom's ACSE thread checks that the socket is connected only after the
  network thread has connected and sent the request; a peer that rejects at once
  and closes (DCMTK ``storescp --refuse``) can have its rejection read and the
  socket closed by then, so the ACSE saw "not connected" and aborted: the caller
  was told "aborted" with the rejection left unread in the queue. The rejection
  is taken from the queue in that case.
* Back-pressure on outgoing P-DATA: pynetdicom queues every PDU of a message
  for the network thread without limit, so sending a 1 GB instance (C-GET,
  C-MOVE, SCU store) could buffer most of it in memory. At most
  MAX_QUEUED_PDUS wait in the queue; the sender waits for the network.
"""

from __future__ import annotations

import copy
import functools
import queue
import socket
import time
from typing import Any

import pydicom.config
from pydicom.uid import UID
from pynetdicom import _config, acse, sop_class, transport
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import A_ASSOCIATE, P_DATA
from pynetdicom.presentation import (
    PresentationContext,
    negotiate_as_acceptor,
    negotiate_unrestricted,
)
from pynetdicom.transport import AssociationSocket

_applied = False
MAX_QUEUED_PDUS = 16


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

    send_pdu = DULServiceProvider.send_pdu

    @functools.wraps(send_pdu)
    def _send_pdu_bounded(self: DULServiceProvider, primitive: Any) -> None:
        if isinstance(primitive, P_DATA):
            pending = self.to_provider_queue
            while pending.qsize() >= MAX_QUEUED_PDUS and self.is_alive() and not self._kill_thread:
                time.sleep(0.0005)
        send_pdu(self, primitive)

    DULServiceProvider.send_pdu = _send_pdu_bounded  # type: ignore[method-assign]

    _config.UNRESTRICTED_STORAGE_SERVICE = True
    acse.negotiate_unrestricted = _negotiate_standard_and_private

    transport.deepcopy = _copy_contexts  # type: ignore[assignment]

    serve_request = Association._serve_request

    @functools.wraps(serve_request)
    def _serve_request(self: Association, msg: Any, context_id: int) -> None:
        if not msg.is_valid_request and not self._reactor_checkpoint.is_set():
            # A send_*() has paused (or is pausing) the reactor and waits for this.
            requeue_first(self.dimse.msg_queue, (context_id, msg))
            return
        serve_request(self, msg, context_id)

    Association._serve_request = _serve_request  # type: ignore[method-assign]

    negotiate_as_requestor = acse.ACSE._negotiate_as_requestor

    @functools.wraps(negotiate_as_requestor)
    def _negotiate_as_requestor(self: acse.ACSE) -> None:
        negotiate_as_requestor(self)
        if self.assoc.is_aborted and not self.assoc.is_established:
            rejection = queued_rejection(self.dul.to_user_queue)
            if rejection is not None:
                self.acceptor.primitive = rejection
                self.assoc.is_aborted = False
                self.assoc.is_rejected = True

    acse.ACSE._negotiate_as_requestor = _negotiate_as_requestor  # type: ignore[method-assign]
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    # pynetdicom formats every C-FIND/MOVE/GET identifier for its INFO log,
    # whether or not anything logs at INFO.
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False


def queued_rejection(q: queue.Queue[Any]) -> A_ASSOCIATE | None:
    """The A-ASSOCIATE reject confirmation waiting unread in ``q``, if there is one."""
    with q.mutex:
        for item in q.queue:
            if isinstance(item, A_ASSOCIATE) and item.result in (0x01, 0x02):
                return item
    return None


def requeue_first(q: queue.Queue[Any], item: Any) -> None:
    """Put ``item`` back at the head of ``q`` and wake a waiting ``get()``."""
    with q.not_empty:
        q.queue.appendleft(item)
        q.unfinished_tasks += 1
        q.not_empty.notify()


def _copy_contexts(value: Any, memo: Any = None) -> Any:
    """copy.deepcopy, with a fast path for a list of PresentationContext objects."""
    if isinstance(value, list) and all(type(cx) is PresentationContext for cx in value):
        copies = []
        for cx in value:
            clone = copy.copy(cx)
            clone._transfer_syntax = list(cx._transfer_syntax)
            copies.append(clone)
        return copies
    return copy.deepcopy(value, memo)


def _negotiate_standard_and_private(
    rq_contexts: list[PresentationContext],
    ac_contexts: list[PresentationContext],
    roles: Any = None,
) -> tuple[list[PresentationContext], list[Any]]:
    """Standard SOP classes as configured; private/unknown ones as storage, as proposed."""
    known: list[PresentationContext] = []
    unknown: list[PresentationContext] = []
    for cx in rq_contexts:
        uid = UID(str(cx.abstract_syntax))
        is_known = not uid.is_private and hasattr(sop_class, uid.keyword or "-")
        (known if is_known else unknown).append(cx)
    accepted, reply_roles = negotiate_as_acceptor(known, ac_contexts, roles)
    if unknown:
        more, more_roles = negotiate_unrestricted(unknown, [], roles)
        accepted += more
        reply_roles += more_roles
    return (
        sorted(accepted, key=lambda cx: cx.context_id or 0),
        sorted(reply_roles, key=lambda r: str(r.sop_class_uid)),
    )
