"""SCU operations against remote AEs: echo, store, find, move, get."""

from __future__ import annotations

import re
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.presentation import StoragePresentationContexts, build_context
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from hilum.config import DicomSettings, RemoteAE, validate_ae_title
from hilum.dimse.stored_send import abort_broken_send, open_sendable, sendable_size
from hilum.dimse.tls import client_context, default_client_context
from hilum.dimse.tuning import apply_pynetdicom_tuning
from hilum.domain.errors import HilumError
from hilum.storage.base import StorageError

_ADDRESS = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d{1,5})$")

MODELS = {
    ("find", "STUDY"): StudyRootQueryRetrieveInformationModelFind,
    ("find", "PATIENT"): PatientRootQueryRetrieveInformationModelFind,
    ("move", "STUDY"): StudyRootQueryRetrieveInformationModelMove,
    ("move", "PATIENT"): PatientRootQueryRetrieveInformationModelMove,
    ("get", "STUDY"): StudyRootQueryRetrieveInformationModelGet,
    ("get", "PATIENT"): PatientRootQueryRetrieveInformationModelGet,
}


class ScuError(HilumError):
    pass


def parse_address(text: str) -> RemoteAE | None:
    """``AET@host:port`` as an ad-hoc remote AE, or None if ``text`` isn't one."""
    match = _ADDRESS.match(text)
    if not match:
        return None
    return RemoteAE(
        name="adhoc",
        ae_title=validate_ae_title(match["aet"]),
        host=match["host"],
        port=int(match["port"]),
    )


@dataclass
class StoreReport:
    sent: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    bytes: int = 0


class Scu:
    """``tls_context``: for remote AEs with ``tls = true``; without one, such remotes are
    verified against the system's CAs and see no client certificate (see :meth:`from_settings`)."""

    def __init__(
        self,
        ae_title: str,
        *,
        timeout: float = 30,
        tls_context: ssl.SSLContext | Callable[[], ssl.SSLContext] | None = None,
    ) -> None:
        self.ae_title = ae_title
        self.timeout = timeout
        self._tls = tls_context or default_client_context

    @classmethod
    def from_settings(cls, dicom: DicomSettings, *, timeout: float = 30) -> Self:
        """An SCU with Hilum's AE title and TLS client settings (certificate, CAs).

        The certificate files are read when a TLS remote is first contacted.
        """
        return cls(dicom.ae_title, timeout=timeout, tls_context=lambda: client_context(dicom))

    def tls_args(self, remote: RemoteAE) -> tuple[ssl.SSLContext, str] | None:
        """pynetdicom's ``tls_args`` for an association to ``remote`` (None: plain TCP)."""
        if not remote.tls:
            return None
        if not isinstance(self._tls, ssl.SSLContext):
            self._tls = self._tls()
        return self._tls, remote.host

    def _ae(self) -> AE:
        apply_pynetdicom_tuning()
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = self.timeout
        ae.dimse_timeout = self.timeout * 4
        ae.network_timeout = self.timeout * 4
        return ae

    def _associate(self, ae: AE, remote: RemoteAE, **kwargs: Any) -> Association:
        tls_args = self.tls_args(remote)
        started = time.monotonic()
        assoc = ae.associate(
            remote.host, remote.port, ae_title=remote.ae_title, tls_args=tls_args, **kwargs
        )
        if not assoc.is_established:
            reason = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "failed"
            if not assoc.is_rejected and time.monotonic() - started >= 0.95 * self.timeout:
                # pynetdicom aborts when the peer does not answer within the ACSE timeout.
                reason = f"not answered within {self.timeout:g} s"
            over = " over TLS" if tls_args else ""
            raise ScuError(
                f"association{over} with {remote.ae_title}@{remote.host}:{remote.port} {reason}"
            )
        return assoc

    def echo(self, remote: RemoteAE) -> int:
        ae = self._ae()
        ae.add_requested_context(Verification)
        assoc = self._associate(ae, remote)
        try:
            status = assoc.send_c_echo()
            if not status:
                raise ScuError("no C-ECHO response (timeout or abort)")
            return int(status.Status)
        finally:
            assoc.release()

    def store(
        self,
        remote: RemoteAE,
        files: Iterable[Path],
        *,
        on_progress: Callable[[Path, int], None] | None = None,
    ) -> StoreReport:
        """Send files over one association, with a context for each SOP class/syntax seen."""
        paths = list(files)
        headers: list[tuple[Path, str, str]] = []
        report = StoreReport()
        for path in paths:
            try:
                with open_sendable(path) as handle:  # a file, or a stored object (stored_send.py)
                    meta = dcmread(handle, stop_before_pixels=True, specific_tags=["SOPClassUID"])
                headers.append((path, str(meta.SOPClassUID), str(meta.file_meta.TransferSyntaxUID)))
            except Exception as exc:
                report.failed.append((str(path), f"not readable as DICOM: {exc}"))
        wanted: dict[str, set[str]] = {}
        for _, sop_class, ts in headers:
            wanted.setdefault(sop_class, set()).add(ts)
        contexts = []
        for sop_class, syntaxes in sorted(wanted.items()):
            for ts in sorted(syntaxes):
                contexts.append(build_context(sop_class, [ts]))
            contexts.append(build_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
        if len(contexts) > 128:
            raise ScuError("more than 128 SOP class / transfer syntax combinations in one send")
        if not headers:
            return report
        ae = self._ae()
        assoc = self._associate(ae, remote, contexts=contexts)
        try:
            for path, _, _ in headers:
                try:
                    status = assoc.send_c_store(path)
                except StorageError:
                    abort_broken_send(assoc)  # a stored file failed its integrity check mid-send
                    raise
                code = int(getattr(status, "Status", 0xFFFF)) if status else None
                if code in (0x0000, 0xB000, 0xB007, 0xB006):
                    report.sent += 1
                    report.bytes += sendable_size(path)
                else:
                    comment = getattr(status, "ErrorComment", "") if status else "no response"
                    text = f"status 0x{code:04X} {comment}" if code is not None else comment
                    report.failed.append((str(path), text))
                if on_progress:
                    on_progress(path, code if code is not None else -1)
        finally:
            assoc.release()
        return report

    def find(
        self, remote: RemoteAE, identifier: Dataset, *, root: str = "STUDY"
    ) -> Iterator[Dataset]:
        model = MODELS[("find", root)]
        ae = self._ae()
        ae.add_requested_context(model)
        assoc = self._associate(ae, remote)
        try:
            for status, result in assoc.send_c_find(identifier, model):
                if not status:
                    raise ScuError("no C-FIND response (timeout or abort)")
                code = int(status.Status)
                if code in (0xFF00, 0xFF01) and result is not None:
                    yield result
                elif code != 0x0000:
                    raise ScuError(
                        f"C-FIND failed: status 0x{code:04X} {getattr(status, 'ErrorComment', '')}"
                    )
        finally:
            assoc.release()

    def move(
        self, remote: RemoteAE, destination: str, identifier: Dataset, *, root: str = "STUDY"
    ) -> Dataset:
        model = MODELS[("move", root)]
        ae = self._ae()
        ae.add_requested_context(model)
        assoc = self._associate(ae, remote)
        last: Dataset | None = None
        try:
            for status, _ in assoc.send_c_move(identifier, destination, model):
                if not status:
                    raise ScuError("no C-MOVE response (timeout or abort)")
                last = status
        finally:
            assoc.release()
        assert last is not None
        return last

    def get(
        self,
        remote: RemoteAE,
        identifier: Dataset,
        output: Path,
        *,
        root: str = "STUDY",
    ) -> Dataset:
        """C-GET into ``output`` (files named by SOP Instance UID)."""
        model = MODELS[("get", root)]
        output.mkdir(parents=True, exist_ok=True)
        ae = self._ae()
        ae.add_requested_context(model)
        roles = []
        for cx in StoragePresentationContexts[:127]:
            sop_class = str(cx.abstract_syntax)
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
            roles.append(build_role(sop_class, scp_role=True))

        def _on_store(event: Any) -> int:
            ds = event.dataset
            ds.file_meta = event.file_meta
            ds.save_as(output / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
            return 0x0000

        assoc = self._associate(
            ae, remote, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, _on_store)]
        )
        last: Dataset | None = None
        try:
            for status, _ in assoc.send_c_get(identifier, model):
                if not status:
                    raise ScuError("no C-GET response (timeout or abort)")
                last = status
        finally:
            assoc.release()
        assert last is not None
        return last
