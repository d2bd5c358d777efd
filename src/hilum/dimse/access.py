"""DIMSE access control: who may associate, and which services each may use.

The one place where Hilum decides this, for plain and TLS associations, with
or without the fast path (``dicom.fast_path``):

* **At association.** First the AE titles: a Called AE Title other than
  ``dicom.ae_title`` (when ``dicom.check_called_ae_title``) is rejected with
  reason 7, called-AE-title-not-recognized, and a Calling AE Title outside a
  non-empty ``dicom.allowed_calling_ae_titles`` with reason 3 (pynetdicom's
  checks, made here so they are logged and audited). Then the Calling AE
  Title and the peer's IP address identify a *known remote AE*: an entry of
  the remote AE table with that AE title whose ``host`` resolves to the peer's address (or is ``"*"``). When
  ``dicom.accept_unknown_aes`` is false, any other peer is rejected with
  A-ASSOCIATE-RJ rejected-permanent / service-user / calling-AE-title-not-
  recognized (PS3.8 9.3.4, Table 9-21: result 1, source 1, reason 3).
* **Per request.** A known remote AE may use the services its entry's
  ``permissions`` name (store, find, move, get); C-ECHO is always allowed.
  Storage Commitment (N-ACTION, PS3.4 J) counts as "store". Any other request
  is answered with status 0124H *Refused: Not Authorized* without running the
  service: nothing is stored, queried or sent, and no C-MOVE sub-association
  is opened. 0124H is a general status (PS3.7 Annex C) that PS3.7 9.1.1.1.9
  lists for C-STORE; the service-specific tables of C-FIND, C-MOVE and C-GET
  (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4) and of C-STORE (PS3.4 B.2.3) defer
  general statuses to PS3.7, and none of their own codes means "not
  authorized" (A7xx is "out of resources", A801 "move destination unknown",
  Cxxx "unable to process").
* An unknown peer admitted because ``accept_unknown_aes`` is true may use
  every service, as before permissions existed.

The remote AE table is read from the index at most every :data:`TABLE_TTL`
seconds per receiving process, so entries added or removed through the API or
``hilum ae`` apply to new associations without a restart.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pynetdicom import evt
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_FIND, C_GET, C_MOVE, C_STORE, N_ACTION

from hilum.audit import builders, codes
from hilum.config import ALL_PERMISSIONS, Permission, RemoteAE
from hilum.index.nodes import RemoteNodes

LOG = logging.getLogger(__name__)

TABLE_TTL = 5.0  # seconds a process keeps the remote AE table
NOT_AUTHORIZED = 0x0124  # PS3.7 Annex C: Refused: Not Authorized
# A-ASSOCIATE-RJ (result, source, reason): rejected-permanent, DICOM UL
# service-user, calling AE title not recognized (PS3.8 Table 9-21)
REJECT_UNKNOWN_CALLING_AE = (0x01, 0x01, 0x03)
# ... called AE title not recognized (dicom.check_called_ae_title)
REJECT_UNKNOWN_CALLED_AE = (0x01, 0x01, 0x07)

_REQUESTS: dict[type, Permission] = {
    C_STORE: "store",
    C_FIND: "find",
    C_MOVE: "move",
    C_GET: "get",
    N_ACTION: "store",  # Storage Commitment: a question about what was stored
}

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str], Iterable[str]]


@dataclass(frozen=True)
class Peer:
    """The requestor of one association, as access control sees it."""

    ae_title: str
    address: str
    node: RemoteAE | None  # the known remote AE it is, if any
    permissions: frozenset[str]

    @property
    def known(self) -> bool:
        return self.node is not None

    def may(self, permission: Permission) -> bool:
        return permission in self.permissions


def _ip(text: str) -> IpAddress | None:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack listener sees ::ffff:a.b.c.d
    return address


def _resolve(host: str) -> list[str]:
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


class _Table:
    """One snapshot of the remote AE table, with host names resolved on demand."""

    def __init__(self, nodes: list[RemoteAE], resolver: Resolver) -> None:
        self.by_title: dict[str, list[RemoteAE]] = {}
        for node in nodes:
            self.by_title.setdefault(node.ae_title, []).append(node)
        self._resolver = resolver
        self._addresses: dict[str, frozenset[IpAddress]] = {}
        self._lock = threading.Lock()

    def addresses(self, host: str) -> frozenset[IpAddress]:
        with self._lock:
            cached = self._addresses.get(host)
        if cached is not None:
            return cached
        literal = _ip(host)
        if literal is not None:
            found = frozenset({literal})
        else:
            try:
                found = frozenset(a for a in map(_ip, self._resolver(host)) if a is not None)
            except OSError as exc:
                LOG.warning("remote AE host %r does not resolve: %s", host, exc)
                found = frozenset()
        with self._lock:
            self._addresses[host] = found
        return found

    def match(self, ae_title: str, address: str) -> RemoteAE | None:
        peer_ip = _ip(address)
        for node in self.by_title.get(ae_title, ()):
            if node.host == "*" or (peer_ip is not None and peer_ip in self.addresses(node.host)):
                return node
        return None


class AccessControl:
    """Identifies association requestors and decides what they may do (one per process)."""

    def __init__(
        self,
        nodes: RemoteNodes,
        *,
        accept_unknown_aes: bool,
        audit: Any = None,
        ttl: float = TABLE_TTL,
        resolver: Resolver = _resolve,
    ) -> None:
        self.nodes = nodes
        self.accept_unknown_aes = accept_unknown_aes
        self.audit = audit  # AuditService: refused associations and requests are recorded
        self.ttl = ttl
        self._resolver = resolver
        self._table: _Table | None = None
        self._loaded_at = 0.0
        self._lock = threading.Lock()

    def _current(self) -> _Table:
        with self._lock:
            now = time.monotonic()
            if self._table is None or now - self._loaded_at >= self.ttl:
                self._table = _Table(self.nodes.all(), self._resolver)
                self._loaded_at = now
            return self._table

    def identify(self, ae_title: str, address: str) -> Peer:
        ae_title = ae_title.strip()
        node = self._current().match(ae_title, address)
        if node is not None:
            permissions = frozenset(node.permissions)
        else:  # unknown: everything if admitted at all (accept_unknown_aes)
            permissions = frozenset(ALL_PERMISSIONS)
        return Peer(ae_title, address, node, permissions)

    def admits(self, peer: Peer) -> bool:
        return peer.known or self.accept_unknown_aes

    def guard(self, assoc: Association) -> Association:
        """Make a newly accepted ``assoc`` (not yet started) enforce this access control."""
        assoc.acse.__class__ = GuardedACSE
        assoc.acse._hilum_access = self  # type: ignore[attr-defined]
        serve = assoc._serve_request

        def _serve_request(msg: Any, context_id: int) -> None:
            permission = _REQUESTS.get(type(msg))
            peer: Peer | None = getattr(assoc, "hilum_peer", None)
            if (
                permission is not None
                and peer is not None
                and not peer.may(permission)
                and msg.is_valid_request
                and context_id in assoc._accepted_cx
            ):
                _refuse(assoc, msg, context_id, peer, permission)
                return
            serve(msg, context_id)

        # The association reactors (pynetdicom's and the fast path's) call
        # self._serve_request for every request: an instance attribute wins.
        assoc._serve_request = _serve_request  # type: ignore[method-assign]
        return assoc


class GuardedACSE(ACSE):
    """pynetdicom's ACSE, identifying the requestor first and rejecting it if not admitted."""

    _hilum_access: AccessControl

    def _negotiate_as_acceptor(self) -> None:
        request = self.requestor.primitive
        calling = str(getattr(request, "calling_ae_title", "") or "").strip()
        address = str(self.assoc.requestor.address)
        access = self._hilum_access
        refusal = self._ae_title_refusal(calling, str(getattr(request, "called_ae_title", "") or ""))
        if refusal is not None:
            rsd, why = refusal
            LOG.warning("association from %s@%s rejected: %s", calling, address, why)
            self.requestor.ae_title = calling
            if access.audit is not None:
                access.audit.node_authentication_failure(
                    ae_title=calling, address=address, detail=f"association rejected: {why}"
                )
            self._reject(rsd)
            return
        try:
            peer = access.identify(calling, address)
        except Exception:  # e.g. the index is unreachable: fail closed, transiently
            LOG.exception("cannot check association from %s@%s", calling, address)
            self._reject((0x02, 0x01, 0x01))  # rejected-transient, service-user, no reason
            return
        self.assoc.hilum_peer = peer  # type: ignore[attr-defined]
        if not access.admits(peer):
            LOG.warning(
                "association from %s@%s rejected: not a known remote AE "
                "(dicom.accept_unknown_aes = false)", calling, address,
            )
            self.requestor.ae_title = calling
            if access.audit is not None:
                access.audit.node_authentication_failure(
                    ae_title=calling, address=address,
                    detail="association rejected: not a known remote AE (AE title and host)",
                )
            self._reject(REJECT_UNKNOWN_CALLING_AE)
            return
        super()._negotiate_as_acceptor()

    def _ae_title_refusal(self, calling: str, called: str) -> tuple[tuple[int, int, int], str] | None:
        """pynetdicom's own AE title checks (dicom.check_called_ae_title, allowed_calling_ae_titles),
        made here so that their rejections are logged and audited like the others."""
        ae = self.assoc.ae
        own = self.acceptor.ae_title.strip()
        if ae.require_called_aet and called.strip() != own:
            return REJECT_UNKNOWN_CALLED_AE, f"called AE title {called.strip()!r} is not {own!r}"
        allowed = [title.strip() for title in ae.require_calling_aet]
        if allowed and calling not in allowed:
            return REJECT_UNKNOWN_CALLING_AE, (
                f"calling AE title {calling!r} is not in dicom.allowed_calling_ae_titles"
            )
        return None

    def _reject(self, rsd: tuple[int, int, int]) -> None:
        # as pynetdicom's ACSE does for its own rejections
        self.send_reject(*rsd)
        evt.trigger(self.assoc, evt.EVT_REJECTED, {})
        self.assoc.kill()


def _refuse(assoc: Association, msg: Any, context_id: int, peer: Peer, permission: str) -> None:
    """Answer ``msg`` with 0124H Refused: Not Authorized instead of serving it."""
    LOG.warning(
        "%s from %s@%s refused: remote AE %r lacks the %r permission",
        msg.msg_type, peer.ae_title, peer.address,
        peer.node.name if peer.node else "", permission,
    )
    access: AccessControl | None = getattr(assoc.acse, "_hilum_access", None)
    if access is not None and access.audit is not None:
        _audit_refusal(access.audit, peer, permission, str(msg.msg_type))
    if isinstance(msg, C_STORE):
        _discard_received(msg)
    rsp = type(msg)()
    rsp.MessageIDBeingRespondedTo = msg.MessageID
    if isinstance(msg, N_ACTION):
        rsp.AffectedSOPClassUID = msg.RequestedSOPClassUID
        rsp.AffectedSOPInstanceUID = msg.RequestedSOPInstanceUID
    else:
        rsp.AffectedSOPClassUID = msg.AffectedSOPClassUID
        if isinstance(msg, C_STORE):
            rsp.AffectedSOPInstanceUID = msg.AffectedSOPInstanceUID
    rsp.Status = NOT_AUTHORIZED
    rsp.ErrorComment = f"{permission} not permitted for {peer.ae_title}"[:64]
    assoc.dimse.send_msg(rsp, context_id)


def _discard_received(msg: C_STORE) -> None:
    """Remove the staging file a refused C-STORE's data set was streamed to, if any."""
    handle = getattr(msg, "_dataset_file", None)
    if handle is not None:
        try:
            handle.close()
        except OSError:
            pass
    path = getattr(msg, "_dataset_path", None)
    if isinstance(path, tuple):
        path = path[0]
    if path is not None:
        Path(path).unlink(missing_ok=True)


def _audit_refusal(audit: Any, peer: Peer, permission: str, request: str) -> None:
    """One Security Alert (use of a restricted function) per remote AE and service, folded
    over a burst of refused requests (a modality sending 500 images is one record)."""
    subject = builders.node_subject(f"{peer.ae_title}@{peer.address}", peer.node.name if peer.node else "")

    def make(studies: Any, outcome: int, detail: str) -> Any:
        return builders.security_alert(
            reporter=builders.Party(peer.ae_title or "unknown", peer.address), node=audit.node(),
            event_type=codes.USE_OF_RESTRICTED_FUNCTION, subject=subject, outcome=outcome, detail=detail,
        )

    audit.aggregate(
        ("dimse-refused", peer.ae_title, peer.address, permission), make, outcome=codes.MINOR_FAILURE,
        detail=f"{request} refused (0124H): the remote AE lacks the {permission!r} permission",
    )
