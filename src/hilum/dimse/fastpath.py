"""A faster acceptor for pynetdicom 3.0.x, applied per association (``dicom.fast_path``).

Measured in bench/ (see bench/RESULTS.md): stock pynetdicom spends most of a
C-STORE's time in 1 ms polling sleeps, 4 KiB ``recv`` calls, byte copies of
every PDV, and a pydicom round trip to encode each C-STORE response. This
module swaps the classes of each newly accepted association's objects,
before their threads start, for subclasses that:

1. wait on the socket and a wake-up pipe with ``select`` instead of sleeping
   (DUL reactor), and on an event instead of ``sleep(0.001)`` (association
   reactor) — the loop bodies are pynetdicom 3.0.4's, unchanged otherwise;
2. ``recv_into`` one buffer per PDU;
3. decode P-DATA-TF PDUs without copying (PDVs are memoryviews);
4. encode the C-STORE-RSP command set directly (byte-identical, tested);
5. spill a C-STORE data set larger than :data:`SPILL_BYTES` to a file in the
   staging area as it arrives, so memory stays bounded for multi-GB objects.

Nothing global is patched, and ``dicom.fast_path = false`` turns it off. The
classes depend on pynetdicom internals (``_dul_ready``, ``_reactor_checkpoint``,
``_recv_pdu``, ``_data_set_file``): pynetdicom is pinned to 3.0.x for that.
Side effects: EVT_PDU_RECV/EVT_DATA_RECV are not triggered for P-DATA PDUs, and
EVT_DIMSE_SENT is not triggered for fast-pathed C-STORE responses.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import ssl
import struct
import tempfile
import threading
import time
from io import BytesIO
from pathlib import Path
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket, RequestHandler

from hilum.dicom.filemeta import file_meta_bytes
from hilum.dimse.tuning import set_nodelay

LOGGER = logging.getLogger("pynetdicom")
LOG = logging.getLogger(__name__)
IDLE_POLL = 0.05  # seconds: bounds timer/abort checks only, never message latency
SPILL_BYTES = 16 * 1024 * 1024
_U32 = struct.Struct(">I")

_staging: dict[str, Path] = {}


def set_staging_dir(path: Path) -> None:
    _staging["dir"] = path


class FastDUL(DULServiceProvider):
    _wake_r: int
    _wake_w: int

    def _fast_init(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except OSError:  # pipe full (already signalled) or closed
            pass

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        self._wake()

    def kill_dul(self) -> None:
        super().kill_dul()
        self._wake()

    def _idle_wait(self) -> None:
        readable: list[Any] = [self._wake_r]
        sock = self.socket
        if sock is not None and sock.socket is not None and sock._is_connected:
            # TLS: bytes OpenSSL has already decrypted are invisible to select()
            if isinstance(sock.socket, ssl.SSLSocket) and sock.socket.pending():
                return
            readable.append(sock.socket)
        try:
            ready, _, _ = select.select(readable, [], [], IDLE_POLL)
        except (OSError, ValueError):
            time.sleep(0.001)
            return
        if self._wake_r in ready:
            try:
                os.read(self._wake_r, 4096)
            except OSError:
                pass

    def _decode_pdu(self, bytestream: bytearray) -> tuple[Any, str]:
        # Zero-copy P-DATA-TF (PS3.8 9.3.5): PDV values stay slices of the buffer.
        if bytestream[0] != 0x04:
            return super()._decode_pdu(bytestream)
        view = memoryview(bytestream)
        items = []
        offset, end = 6, len(bytestream)
        while offset < end:
            (length,) = _U32.unpack_from(bytestream, offset)
            items.append((bytestream[offset + 4], view[offset + 5 : offset + 4 + length]))
            offset += 4 + length
        return _FastPDataTF(items), "Evt10"

    def run(self) -> None:
        # The thread was created with target=<upstream run_reactor> before the
        # class swap, so override run() rather than run_reactor().
        self.run_reactor()

    def run_reactor(self) -> None:
        try:
            self._run_reactor_fast()
        finally:
            wake = getattr(self.assoc, "_fast_wake", None)
            if wake is not None:
                wake.set()
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _run_reactor_fast(self) -> None:
        # pynetdicom 3.0.4 DULServiceProvider.run_reactor; sleep -> _idle_wait
        self._idle_timer.start()
        sleep = False
        assoc_wake = self.assoc._fast_wake  # type: ignore[attr-defined]
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                sleep = True
            if sleep:
                self._idle_wait()
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                LOGGER.error("Exception in DUL.run(), aborting association")
                LOGGER.exception(exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                if self.socket is not None:
                    self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                sleep = True
                continue
            self.state_machine.do_action(event)
            assoc_wake.set()
            sleep = False


class _FastPDataTF:
    __slots__ = ("items",)

    def __init__(self, items: list[tuple[int, memoryview]]) -> None:
        self.items = items

    def to_primitive(self) -> P_DATA:
        primitive = P_DATA()
        # The public setter insists on bytes; memoryviews are what we want here.
        primitive._presentation_data_value_list = self.items  # type: ignore[assignment]
        return primitive


class FastAssociation(Association):
    _fast_wake: threading.Event

    def _run_reactor(self) -> None:
        # pynetdicom 3.0.4 Association._run_reactor; sleep(0.001) -> event wait
        self._is_paused = False
        wake = self._fast_wake
        while not self._kill:
            wake.wait(IDLE_POLL)
            wake.clear()
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            # Every complete message before looking at release/abort, unless a send_*()
            # paused the reactor meanwhile (its response is its own: see tuning.py).
            while self._reactor_checkpoint.is_set():
                context_id, msg = self.dimse.get_msg(block=False)
                if not msg:
                    break
                self._serve_request(msg, context_id)  # type: ignore[arg-type]
            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                LOGGER.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return
            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return
            if not self.dul.is_alive():
                self.kill()
                return
            if self.dul.idle_timer_expired():
                LOGGER.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


class FastSocket(AssociationSocket):
    def recv(self, nr_bytes: int) -> bytearray:
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        received = 0
        sock = self.socket
        assert sock is not None
        while received < nr_bytes:
            n = sock.recv_into(view[received:], nr_bytes - received)
            if not n:
                del view
                del buffer[received:]
                return buffer
            received += n
        return buffer


def _ui(element: int, uid: str) -> bytes:
    raw = uid.encode("ascii")
    if len(raw) & 1:
        raw += b"\0"
    return struct.pack("<HHI", 0x0000, element, len(raw)) + raw


def _us(element: int, value: int) -> bytes:
    return struct.pack("<HHIH", 0x0000, element, 2, value)


def encode_c_store_rsp(sop_class: str, message_id: int, status: int, sop_instance: str) -> bytes:
    """C-STORE-RSP command set, implicit VR little endian (PS3.7 9.3.1.2)."""
    body = b"".join(
        (
            _ui(0x0002, sop_class),
            _us(0x0100, 0x8001),  # CommandField: C-STORE-RSP
            _us(0x0120, message_id),  # MessageIDBeingRespondedTo
            _us(0x0800, 0x0101),  # CommandDataSetType: none
            _us(0x0900, status),
            _ui(0x1000, sop_instance),
        )
    )
    return struct.pack("<HHII", 0x0000, 0x0000, 4, len(body)) + body


class _SpillFile:
    """What pynetdicom's chunked receive expects of ``_data_set_file`` (``write``,
    ``file.flush``, ``close``, ``name``).

    Unbuffered writes to a staging file. A write that fails (disk full) must not abort
    the association: the error is kept in :attr:`error`, the file removed, and the rest
    of the data set is read and dropped; the C-STORE handler then answers the failure
    (0xA700 Out of Resources when the disk is full, hilum.dimse.handlers).
    """

    def __init__(self, directory: Path) -> None:
        self.file = self  # pynetdicom calls ``_data_set_file.file.flush()``
        self.fd = -1
        self.error: OSError | None = None
        try:
            self.fd, self.name = tempfile.mkstemp(suffix=".part", dir=directory)
        except OSError as exc:
            self.name = str(directory / "unwritable.part")
            self._failed(exc)

    def write(self, data: Any) -> int:
        view = memoryview(data)
        size = view.nbytes
        if self.error is None:
            try:
                while view:
                    view = view[os.write(self.fd, view) :]
            except OSError as exc:
                self._failed(exc)
        return size

    def flush(self) -> None:
        pass

    def _failed(self, exc: OSError) -> None:
        LOG.warning("cannot write a received data set to %s: %s", self.name, exc)
        self.error = exc
        self.close()
        Path(self.name).unlink(missing_ok=True)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class FastDIMSE(DIMSEServiceProvider):
    def send_msg(self, primitive: Any, context_id: int) -> None:
        if (
            type(primitive) is C_STORE
            and primitive.MessageIDBeingRespondedTo is not None
            and primitive.ErrorComment is None
            and primitive.OffendingElement is None
            and primitive.AffectedSOPClassUID
            and primitive.AffectedSOPInstanceUID
        ):
            command = encode_c_store_rsp(
                primitive.AffectedSOPClassUID,
                primitive.MessageIDBeingRespondedTo,
                int(primitive.Status or 0),
                primitive.AffectedSOPInstanceUID,
            )
            pdata = P_DATA()
            pdata.presentation_data_value_list = [[context_id, b"\x03" + command]]  # type: ignore[list-item]
            self.dul.send_pdu(pdata)
            return
        super().send_msg(primitive, context_id)

    def receive_primitive(self, primitive: P_DATA) -> None:
        super().receive_primitive(primitive)
        message = self.message
        if (
            message is not None
            and isinstance(message, C_STORE_RQ)
            and message._data_set_file is None
            and isinstance(message.data_set, BytesIO)
            and message.data_set.tell() > SPILL_BYTES
            and "dir" in _staging
        ):
            self._spill(message)

    def _spill(self, message: Any) -> None:
        """Move a large data set in progress to a staging file; the rest streams there."""
        command = message.command_set
        context = self.assoc._accepted_cx[message.context_id]
        spill = _SpillFile(_staging["dir"])
        spill.write(
            file_meta_bytes(
                str(command.AffectedSOPClassUID),
                str(command.AffectedSOPInstanceUID),
                str(context.transfer_syntax[0]),
                source_ae_title=self.assoc.requestor.ae_title,
            )
        )
        spill.write(message.data_set.getbuffer())
        message.data_set = BytesIO()
        message._data_set_file = spill
        message._data_set_path = Path(spill.name)


def make_fast(assoc: Association) -> Association:
    assoc._fast_wake = threading.Event()  # type: ignore[attr-defined]
    assoc.__class__ = FastAssociation
    dul = assoc.dul
    dul.__class__ = FastDUL
    dul._fast_init()  # type: ignore[attr-defined]
    assoc.dimse.__class__ = FastDIMSE
    sock = dul.socket
    if sock is not None:
        sock.__class__ = FastSocket
        if sock.socket is not None:
            set_nodelay(sock.socket)
    return assoc


class FastRequestHandler(RequestHandler):
    def _create_association(self) -> Association:
        return make_fast(super()._create_association())
