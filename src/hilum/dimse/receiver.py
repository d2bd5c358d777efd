"""A receiving process of the DICOM server: N of them accept on one shared listening socket.

Each worker process runs its own pynetdicom acceptor with its own index
writer (group commit) so C-STORE throughput scales past one core and the
GIL. Associations run in threads inside each worker. Started by
hilum.dimse.server.DimseServer through hilum.processes.worker_entry.
"""

from __future__ import annotations

import logging
import socket
import ssl
import tempfile
import threading
from multiprocessing.connection import Connection
from typing import Any

from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config
from pynetdicom.association import Association
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from hilum.app import Services, build_services
from hilum.config import Settings
from hilum.dimse import tls
from hilum.dimse.access import AccessControl
from hilum.dimse.fastpath import FastRequestHandler, set_staging_dir
from hilum.dimse.handlers import DimseHandlers
from hilum.dimse.tuning import apply_pynetdicom_tuning, set_nodelay
from hilum.processes import WorkerControl

LOG = logging.getLogger(__name__)

QUERY_RETRIEVE_MODELS = (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
)


def _syntax_preference() -> list[str]:
    """Every transfer syntax, in the order Hilum picks one when a context offers several.

    pynetdicom accepts the first of the acceptor's syntaxes that the requestor
    proposed. Hilum prefers what keeps every pixel: lossless compression, then
    uncompressed (explicit VR before implicit), and lossy compression only
    when nothing else is offered.
    """

    def rank(ts: UID) -> tuple[int, str]:
        if ts.is_compressed and not ts.is_deflated:
            lossless = (
                ("Lossless" in ts.name and "Near" not in ts.name)
                or ts == RLELossless
                or ts.name == "Deflated Image Frame Compression"
            )
            return (0 if lossless else 5, str(ts))
        order = {
            DeflatedExplicitVRLittleEndian: 1,
            ExplicitVRLittleEndian: 2,
            ImplicitVRLittleEndian: 4,
        }
        return (order.get(ts, 3), str(ts))

    return [str(ts) for ts in sorted((UID(t) for t in ALL_TRANSFER_SYNTAXES), key=rank)]


STORAGE_SYNTAX_PREFERENCE = _syntax_preference()

_inherited: dict[str, socket.socket] = {}


class SharedSocketServer(ThreadedAssociationServer):
    """pynetdicom's threaded acceptor on a listening socket made by `hilum serve`.

    Every receiving process accepts from the same socket, so the kernel hands
    each new association to whichever process is waiting: better balanced than
    SO_REUSEPORT, which hashes connections to processes up front.
    """

    listening = "socket"  # which of the sockets `hilum serve` passed down

    def server_bind(self) -> None:
        listening = _inherited[self.listening]
        if self.socket is not None and self.socket is not listening:
            self.socket.close()
        self.socket = listening
        if self.ae.network_timeout is not None:
            listening.settimeout(self.ae.network_timeout)
        self.server_address = listening.getsockname()

    def server_activate(self) -> None:
        pass  # already listening

    def get_request(self) -> tuple[socket.socket, Any]:
        client, address = super().get_request()
        set_nodelay(client)
        return client, address


class TlsSharedSocketServer(SharedSocketServer):
    """The same on the DICOM TLS listening socket (``dicom.tls_port``).

    pynetdicom would complete each TLS handshake in the accepting thread; here
    it runs in the connection's own thread, bounded by the ACSE timeout.
    """

    listening = "tls"

    def get_request(self) -> tuple[socket.socket, Any]:
        assert self.socket is not None and self.ssl_context is not None
        client, address = self.socket.accept()
        set_nodelay(client)
        return tls.accept(self.ssl_context, client), address

    audit: Any = None  # the AuditService, set by serve_dicom: failed handshakes are recorded

    def _handshake_failed(self, peer: str, detail: str) -> None:
        if self.audit is not None:
            host = peer.rsplit(":", 1)[0] if ":" in peer else peer
            self.audit.node_authentication_failure(ae_title="", address=host, detail=detail)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if not tls.handshake(request, self.ae.acse_timeout, self._handshake_failed):
            self.shutdown_request(request)
            return
        super().process_request_thread(request, client_address)


def _request_handler(fast_path: bool, access: AccessControl) -> type[RequestHandler]:
    """pynetdicom's request handler (or the fast path's), with Hilum's access control."""
    base: type[RequestHandler] = FastRequestHandler if fast_path else RequestHandler

    class GuardedRequestHandler(base):  # type: ignore[valid-type, misc]
        def _create_association(self) -> Association:
            return access.guard(super()._create_association())

    return GuardedRequestHandler


def build_ae(services: Services) -> AE:
    dicom = services.settings.dicom
    ae = AE(ae_title=dicom.ae_title)
    ae.maximum_pdu_size = dicom.max_pdu_length
    ae.acse_timeout = dicom.acse_timeout
    ae.dimse_timeout = dicom.dimse_timeout
    ae.network_timeout = dicom.network_timeout
    ae.maximum_associations = dicom.max_associations
    ae.require_called_aet = dicom.check_called_ae_title
    if dicom.allowed_calling_ae_titles:
        ae.require_calling_aet = list(dicom.allowed_calling_ae_titles)
    ae.add_supported_context(Verification)
    # Storage: every standard SOP class, every transfer syntax, stored as received.
    # scu_role/scp_role so C-GET requestors can take the SCP role (PS3.7 D.3.3.4).
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(
            str(cx.abstract_syntax), STORAGE_SYNTAX_PREFERENCE, scu_role=True, scp_role=True
        )
    for model in QUERY_RETRIEVE_MODELS:
        ae.add_supported_context(model)
    ae.add_supported_context(StorageCommitmentPushModel)
    return ae


def configure_receiving(services: Services) -> None:
    """Where received C-STORE data sets go: memory up to a bound, then staging files.

    With the fast path (default) small data sets stay in memory and large ones
    spill to staging as they arrive; without it, pynetdicom's chunked mode
    writes every data set to a staging file.
    """
    staging = services.storage.staging_dir()
    tempfile.tempdir = str(staging)
    set_staging_dir(staging)
    _config.STORE_RECV_CHUNKED_DATASET = not services.settings.dicom.fast_path
    _config.LOG_HANDLER_LEVEL = "none"
    apply_pynetdicom_tuning()


def run_worker(
    control: WorkerControl,
    settings_data: dict[str, Any],
    index: int,
    ready: Connection | None,
    listening: socket.socket,
    tls_listening: socket.socket | None = None,
) -> None:
    """One receiving process (plain and, if configured, TLS listener), started by
    hilum.processes.worker_entry."""
    settings = Settings(**settings_data)
    _inherited["socket"] = listening
    from hilum.logging import configure_logging

    configure_logging(settings.log_level, prefix=f"dimse-{index}")
    services = build_services(settings)
    services.writer.on_failure = control.fail
    configure_receiving(services)
    ae = build_ae(services)
    handlers = DimseHandlers(services)
    if index == 0:  # one process resumes undelivered Storage Commitment reports
        resumed = handlers.commitment.resume_pending()
        if resumed:
            LOG.info("resending %d pending storage commitment report(s)", resumed)
    access = AccessControl(
        services.nodes, accept_unknown_aes=settings.dicom.accept_unknown_aes, audit=services.audit
    )
    request_handler = _request_handler(settings.dicom.fast_path, access)
    listeners: list[tuple[type[SharedSocketServer], int, ssl.SSLContext | None]] = []
    if settings.dicom.port:  # dicom.port = 0: TLS only, ``listening`` is the TLS socket too
        listeners.append((SharedSocketServer, settings.dicom.port, None))
    if tls_listening is not None:
        _inherited["tls"] = tls_listening
        listeners.append(
            (TlsSharedSocketServer, settings.dicom.tls_port, tls.server_context(settings.dicom))
        )
    servers = []
    for server_class, port, context in listeners:
        address = (settings.dicom.host, port)
        server = ae.make_server(
            address,
            evt_handlers=handlers.bindings(),  # type: ignore[arg-type]
            server_class=server_class,
            ssl_context=context,
            request_handler=request_handler,
        )
        if isinstance(server, TlsSharedSocketServer):
            server.audit = services.audit
        ae._servers.append(server)  # as AE.start_server does; server.shutdown() removes it
        servers.append(server)
        name = "dimse-tls-acceptor" if context else "dimse-acceptor"
        threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
        LOG.debug("worker %d listening on %s%s", index, address, " (TLS)" if context else "")
    control.serving(ready)
    control.stop.wait()
    control.exit_if_failed()  # the index writer stopped: associations cannot finish anyway
    for server in servers:
        server.shutdown()
    services.close()
