"""Forwarding audit messages to a syslog collector (IHE ITI-20 Record Audit Event).

Messages are RFC 5424 syslog messages: PRI 85 (facility 10 authpriv,
severity 5 notice), MSGID ``IHE+RFC-3881``, the audit XML as the UTF-8 MSG
(with BOM). Transports: UDP (RFC 5426, one message per datagram), TCP
(RFC 6587) and TLS (RFC 5425), both octet-counted (``LEN SP MSG``).

A :class:`SyslogForwarder` sends from its own thread: a collector that is down
or slow never blocks whoever records an audit message. Unsent messages wait in
a bounded queue and are retried with back-off; past the bound the oldest are
dropped, counted and logged (the database keeps every record regardless).
"""

from __future__ import annotations

import collections
import logging
import os
import re
import socket
import ssl
import threading
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from hilum.audit.messages import format_datetime

LOG = logging.getLogger(__name__)

PRI_AUTHPRIV_NOTICE = 10 * 8 + 5
MSGID = "IHE+RFC-3881"
BOM = b"\xef\xbb\xbf"
MAX_UDP = 65507  # the largest UDP payload over IPv4
_NOT_PRINTUSASCII = re.compile(r"[^\x21-\x7e]")


def _header_field(value: str, limit: int) -> str:
    """RFC 5424 6.2: header fields are PRINTUSASCII, "-" when empty."""
    return _NOT_PRINTUSASCII.sub("_", value)[:limit] or "-"


def format_message(
    xml: str,
    *,
    at: datetime,
    hostname: str,
    app_name: str = "hilum",
    procid: str = "",
    sequence_id: int | None = None,
) -> bytes:
    """One RFC 5424 SYSLOG-MSG carrying an audit message."""
    structured = "-"
    if sequence_id is not None:
        # RFC 5424 7.3.1: meta sequenceId counts 1..2147483647, then wraps to 1.
        structured = f'[meta sequenceId="{(sequence_id - 1) % 2147483647 + 1}"]'
    header = (
        f"<{PRI_AUTHPRIV_NOTICE}>1 {format_datetime(at)} {_header_field(hostname, 255)} "
        f"{_header_field(app_name, 48)} {_header_field(procid or str(os.getpid()), 128)} "
        f"{MSGID} {structured} "
    )
    return header.encode("ascii") + BOM + xml.encode("utf-8")


def octet_counted(message: bytes) -> bytes:
    """RFC 5425 4.3 / RFC 6587 3.4.1 framing: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode("ascii") + b" " + message


class SyslogForwarder:
    def __init__(
        self,
        url: str,
        *,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        queue_size: int = 10000,
        connect_timeout: float = 10.0,
    ) -> None:
        parts = urlsplit(url)
        self.scheme = parts.scheme
        self.host = parts.hostname or ""
        self.port = parts.port or (6514 if self.scheme == "tls" else 601 if self.scheme == "tcp" else 514)
        self.url = url
        self._ssl: ssl.SSLContext | None = None
        if self.scheme == "tls":
            context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            if cert_file is not None:
                context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
            self._ssl = context
        self._timeout = connect_timeout
        self._queue: collections.deque[bytes] = collections.deque()
        self._queue_size = queue_size
        self._cond = threading.Condition()
        self._stop = False
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.dropped = 0
        self.failures = 0

    # -- producer side -------------------------------------------------------------------
    def submit(self, messages: list[bytes]) -> None:
        with self._cond:
            for message in messages:
                if len(self._queue) >= self._queue_size:
                    self._queue.popleft()
                    self.dropped += 1
                    if self.dropped == 1 or self.dropped % 1000 == 0:
                        LOG.error(
                            "syslog collector %s unreachable: %d audit message(s) not forwarded "
                            "(the audit log in the database keeps them)", self.url, self.dropped,
                        )
                self._queue.append(message)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
                self._thread.start()
            self._cond.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (for at most ``timeout`` seconds), then stop."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue and self._thread is not None and time.monotonic() < deadline:
                self._cond.wait(0.05)
            self._stop = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(max(0.1, deadline - time.monotonic()))
        if self._queue:
            LOG.error("%d audit message(s) not forwarded to %s at shutdown", len(self._queue), self.url)
        self._disconnect()

    @property
    def pending(self) -> int:
        return len(self._queue)

    # -- the sending thread ------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.5
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait()
                if not self._queue:
                    return
                message = self._queue[0]
            try:
                self._send(message)
            except OSError as exc:
                self.failures += 1
                self._disconnect()
                if self.failures == 1 or self.failures % 100 == 0:
                    LOG.warning("cannot forward audit messages to %s: %s (retrying)", self.url, exc)
                with self._cond:
                    if self._stop:
                        return
                    self._cond.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 0.5
            with self._cond:
                if self._queue and self._queue[0] is message:
                    self._queue.popleft()
                self.sent += 1
                self._cond.notify_all()

    def _send(self, message: bytes) -> None:
        if self.scheme == "udp":
            if len(message) > MAX_UDP:
                LOG.error("audit message of %d bytes too large for UDP syslog: not forwarded", len(message))
                self.dropped += 1
                return
            if self._sock is None:
                family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
                self._sock = socket.socket(family, socket.SOCK_DGRAM)
            self._sock.sendto(message, (self.host, self.port))
            return
        if self._sock is None:
            sock = socket.create_connection((self.host, self.port), timeout=self._timeout)
            if self._ssl is not None:
                try:
                    sock = self._ssl.wrap_socket(sock, server_hostname=self.host)
                except (OSError, ssl.SSLError):
                    sock.close()
                    raise
            sock.settimeout(self._timeout)
            self._sock = sock
        self._sock.sendall(octet_counted(message))

    def _disconnect(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
