"""TLS for DICOM (PS3.15 B.9/B.10, BCP 195 secure transport) and for HTTPS.

One policy for every TLS endpoint Hilum has: TLS 1.2 or later, and for TLS
1.2 only forward-secret AEAD cipher suites (ECDHE/DHE with AES-GCM or
ChaCha20-Poly1305): the suites BCP 195 (RFC 9325) recommends, which DCMTK's
default "Non-downgrading BCP 195" profile proposes. TLS 1.3 suites are
OpenSSL's, all AEAD.

* DICOM server (``dicom.tls_port``): :func:`server_context`. The handshake of
  an accepted connection runs in its association's thread with the ACSE
  timeout (:func:`handshake`), never in the accepting thread, so a peer that
  connects and stays silent holds up nobody else.
* DICOM client (remote AEs with ``tls = true``): :func:`client_context`
  verifies the remote certificate and host name against
  ``dicom.tls_ca_certificates`` (or the system's CAs) and presents Hilum's
  certificate when one is configured.
* HTTPS (``http.tls_certificate``): :func:`uvicorn_ssl_options`.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hilum.config import DicomSettings, HttpSettings, Settings
from hilum.domain.errors import HilumError

LOG = logging.getLogger(__name__)

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
# TLS 1.2 suites: forward secrecy and AEAD only (RFC 9325 4.2).
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL"


class TlsConfigError(HilumError):
    """A certificate, key or CA file that cannot be used; the message names the setting."""


def _harden(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = MINIMUM_VERSION
    context.set_ciphers(CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


def _load_chain(context: ssl.SSLContext, certificate: str, key: str, what: str) -> None:
    for path in (certificate, key):
        if not Path(path).is_file():
            raise TlsConfigError(f"{what}: {path} does not exist")
    try:
        context.load_cert_chain(certificate, key)
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(
            f"{what}: cannot use certificate {certificate} with key {key}: {exc}"
        ) from None


def _load_cas(context: ssl.SSLContext, bundle: str, what: str) -> None:
    if not Path(bundle).is_file():
        raise TlsConfigError(f"{what}: {bundle} does not exist")
    try:
        context.load_verify_locations(cafile=bundle)
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(f"{what}: cannot read CA certificates from {bundle}: {exc}") from None


def server_context(dicom: DicomSettings) -> ssl.SSLContext:
    """The context the DICOM TLS listener wraps accepted connections with."""
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_chain(
        context, dicom.tls_certificate, dicom.tls_private_key,
        "dicom.tls_certificate / dicom.tls_private_key",
    )
    if dicom.tls_ca_certificates:
        _load_cas(context, dicom.tls_ca_certificates, "dicom.tls_ca_certificates")
        # A client certificate, when sent, must verify; whether one must be sent:
        context.verify_mode = (
            ssl.CERT_REQUIRED if dicom.tls_require_client_certificate else ssl.CERT_OPTIONAL
        )
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context(dicom: DicomSettings) -> ssl.SSLContext:
    """The context for Hilum's associations to remote AEs with ``tls = true``."""
    if dicom.tls_ca_certificates:  # the bundle replaces the system's CAs
        # PROTOCOL_TLS_CLIENT: certificate and host name verified
        context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
        _load_cas(context, dicom.tls_ca_certificates, "dicom.tls_ca_certificates")
    else:
        context = default_client_context()
    if dicom.tls_certificate:
        _load_chain(
            context, dicom.tls_certificate, dicom.tls_private_key,
            "dicom.tls_certificate / dicom.tls_private_key",
        )
    return context


def default_client_context() -> ssl.SSLContext:
    """A client context without Hilum's settings: the system's CAs, no client certificate."""
    return _harden(ssl.create_default_context(ssl.Purpose.SERVER_AUTH))


def accept(context: ssl.SSLContext, client: socket.socket) -> ssl.SSLSocket:
    """Wrap an accepted connection; the handshake is left to :func:`handshake`."""
    return context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)


def handshake(
    sock: ssl.SSLSocket, timeout: float | None, on_failure: Callable[[str, str], None] | None = None
) -> bool:
    """Complete the server side of the TLS handshake within ``timeout`` seconds.

    False (logged) when it fails: a plain DICOM peer on the TLS port, a client
    certificate that is missing or does not verify, a protocol or cipher
    mismatch, a peer that stays silent.
    """
    try:
        sock.settimeout(timeout)
        sock.do_handshake()
        sock.settimeout(None)  # blocking, as pynetdicom expects its sockets
    except (OSError, ValueError) as exc:
        peer = _peer(sock)
        LOG.warning("TLS handshake with %s failed: %s", peer, exc)
        if on_failure is not None:
            on_failure(peer, f"TLS handshake failed: {exc}")
        return False
    LOG.debug("TLS %s %s with %s", sock.version(), (sock.cipher() or ("?",))[0], _peer(sock))
    return True


def _peer(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "(disconnected peer)"
    return f"{host}:{port}"


def uvicorn_ssl_options(http: HttpSettings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config``: HTTPS when a certificate is configured."""
    if not http.tls_certificate:
        return {}
    return {
        "ssl_certfile": http.tls_certificate,
        "ssl_keyfile": http.tls_private_key,
        "ssl_ciphers": CIPHERS,  # uvicorn's own default, "TLSv1", admits CBC suites
    }


def check(settings: Settings) -> None:
    """Load every configured certificate and key once, so `hilum serve` fails early and clearly."""
    if settings.dicom.tls_port:
        server_context(settings.dicom)
    elif settings.dicom.tls_certificate or settings.dicom.tls_ca_certificates:
        client_context(settings.dicom)
    http = settings.http
    if http.tls_certificate:
        _load_chain(
            _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)), http.tls_certificate,
            http.tls_private_key, "http.tls_certificate / http.tls_private_key",
        )
