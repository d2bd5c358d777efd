"""pynetdicom event handlers. Thin: translate DIMSE <-> services, nothing more.

Every handler turns exceptions into a DIMSE failure status, so a bug never
reaches the wire as a dropped association.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import _config, evt
from pynetdicom.association import Association
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    Verification,
)

from hilum.app import Services
from hilum.auth.access import not_a_share_copy
from hilum.dicom.filemeta import file_meta_bytes
from hilum.dimse.commitment import CommitmentService
from hilum.dimse.identifiers import (
    PATIENT_ROOT,
    STUDY_ROOT,
    query_from_identifier,
    response_identifier,
)
from hilum.dimse.scu import Scu
from hilum.dimse.stored_send import abort_broken_send, sendable
from hilum.domain.errors import IngestFailure, InvalidQuery, out_of_space
from hilum.index.search import StoredInstance, matching_instances, search
from hilum.storage.base import StorageError, StorageIntegrityError, readable

LOG = logging.getLogger(__name__)

_PATIENT_ROOT_MODELS = {
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
}
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def _root(event: Any) -> str:
    return PATIENT_ROOT if event.request.AffectedSOPClassUID in _PATIENT_ROOT_MODELS else STUDY_ROOT


def _source(event: Any) -> str:
    requestor = event.assoc.requestor
    return f"dimse:{requestor.ae_title}@{requestor.address}"


class DimseHandlers:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.ae_title = services.settings.dicom.ae_title
        self.commitment = CommitmentService(services)
        # C-MOVE sub-associations to remote AEs with tls = true use Hilum's TLS client settings
        self._sub_operations = Scu.from_settings(services.settings.dicom)
        # C-STORE sub-operations given a file path send its data set bytes as stored
        # (see _send_files_unchanged), not re-encoded by pydicom.
        _config.STORE_SEND_CHUNKED_DATASET = True

    def bindings(self) -> list[tuple[Any, Any]]:
        return [
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_C_FIND, self.on_find),
            (evt.EVT_C_MOVE, self.on_move),
            (evt.EVT_C_GET, self.on_get),
            (evt.EVT_N_ACTION, self.commitment.on_n_action),
        ]

    # -- C-ECHO (PS3.4 A) ------------------------------------------------------
    def on_echo(self, event: Any) -> int:
        return 0x0000

    # -- C-STORE (PS3.4 B) -----------------------------------------------------
    def on_store(self, event: Any) -> Any:
        try:
            staged = self._staged_file(event)
            result = self.services.ingest.ingest_staged(
                staged,
                source=_source(event),
                affected_sop_instance_uid=str(event.request.AffectedSOPInstanceUID or ""),
                affected_sop_class_uid=str(event.request.AffectedSOPClassUID or ""),
            )
        except IngestFailure as failure:
            LOG.info("C-STORE refused from %s: %s", _source(event), failure)
            return _status(failure.status.dimse_status, failure.message)
        except Exception as exc:
            if out_of_space(exc):  # PS3.4 B.2.3: Refused: Out of Resources; the sender retries later
                LOG.warning("C-STORE from %s refused: out of storage space: %s", _source(event), exc)
                return _status(0xA700, f"out of resources: {exc}")
            LOG.exception("C-STORE failed")
            return _status(0x0110, f"processing failure: {exc}")
        if result.message:
            LOG.warning("C-STORE %s: %s", result.sop_instance_uid, result.message)
        return 0x0000

    def _staged_file(self, event: Any) -> Path:
        """The received data set as a Part 10 file in the staging area.

        Large data sets were already streamed to a staging file as they arrived
        (fast path spill, or pynetdicom's chunked mode); small ones are in memory
        and get written with a hand-built file meta header.
        """
        request = event.request
        spilled = getattr(request, "_dataset_file", None)
        failed = getattr(spilled, "error", None)
        if failed is not None:  # the fast path could not write the spill file (disk full...)
            raise failed
        path = getattr(request, "_dataset_path", None)
        if path is not None:
            return Path(path)
        header = file_meta_bytes(
            str(request.AffectedSOPClassUID),
            str(request.AffectedSOPInstanceUID),
            str(event.context.transfer_syntax),
            source_ae_title=event.assoc.requestor.ae_title,
        )
        return self.services.ingest.stage_bytes(header, request.DataSet.getbuffer())

    # -- C-FIND (PS3.4 C.4.1) ----------------------------------------------------
    def on_find(self, event: Any) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        try:
            identifier = event.identifier
            self.services.audit.dimse_query(event, identifier)  # PS3.15 A.5.3.10 Query
            query = query_from_identifier(identifier, _root(event))
            query.restrict = not_a_share_copy()
        except InvalidQuery as exc:
            yield _status(0xA900, str(exc)), None
            return
        except Exception as exc:
            yield _status(0xC000, f"cannot read identifier: {exc}"), None
            return
        try:
            with self.services.engine.connect() as conn:
                for hit in search(conn, query):
                    if event.is_cancelled:
                        yield 0xFE00, None
                        return
                    yield 0xFF00, response_identifier(
                        identifier, hit.values, query.level, self.ae_title
                    )
        except InvalidQuery as exc:
            yield _status(0xA900, str(exc)), None
            return
        yield 0x0000, None

    # -- C-MOVE (PS3.4 C.4.2) ----------------------------------------------------
    def on_move(self, event: Any) -> Iterator[Any]:
        destination = self.services.nodes.by_ae_title(str(event.move_destination).strip())
        if destination is None:
            LOG.info("C-MOVE to unknown destination %r", event.move_destination)
            yield None, None  # pynetdicom answers 0xA801 Move Destination Unknown
            return
        try:
            instances = self._instances(event)
        except InvalidQuery as exc:
            # pynetdicom wants the destination and a sub-operation count before
            # a status; one "sub-operation" that fails carries the 0xA900.
            verification = build_context(Verification)
            yield destination.host, destination.port, {
                "contexts": [verification],
                "tls_args": self._sub_operations.tls_args(destination),
            }
            yield 1
            yield _status(0xA900, str(exc)), None
            return
        captured: dict[str, Association] = {}

        def _on_accepted(accepted_event: Any) -> None:
            _send_files_unchanged(accepted_event.assoc)
            captured["assoc"] = accepted_event.assoc

        contexts = _contexts_for(instances)
        yield (
            destination.host,
            destination.port,
            {
                "contexts": contexts,
                "evt_handlers": [(evt.EVT_ACCEPTED, _on_accepted)],
                "tls_args": self._sub_operations.tls_args(destination),
            },
        )
        yield len(instances)
        for instance in self.services.audit.dimse_retrieving(event, instances, destination):
            if event.is_cancelled:
                yield 0xFE00, None
                return
            store_assoc = captured.get("assoc")
            accepted = _accepted_syntaxes(store_assoc, scp_role=False) if store_assoc else {}
            yield 0xFF00, self._dataset_for(instance, accepted)

    # -- C-GET (PS3.4 C.4.3) -----------------------------------------------------
    def on_get(self, event: Any) -> Iterator[Any]:
        try:
            instances = self._instances(event)
        except InvalidQuery as exc:
            yield 1  # see on_move: a count must come before the failure status
            yield _status(0xA900, str(exc)), None
            return
        yield len(instances)
        _send_files_unchanged(event.assoc)
        accepted = _accepted_syntaxes(event.assoc, scp_role=True)
        for instance in self.services.audit.dimse_retrieving(event, instances):
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, self._dataset_for(instance, accepted)

    def _instances(self, event: Any) -> list[StoredInstance]:
        query = query_from_identifier(event.identifier, _root(event))
        query.restrict = not_a_share_copy()  # they belong to their share link
        with self.services.engine.connect() as conn:
            return matching_instances(conn, query)

    def _dataset_for(
        self, instance: StoredInstance, accepted: dict[str, set[str]]
    ) -> Dataset | None:
        """The stored dataset, in a transfer syntax the peer accepted (decompressed if need be)."""
        syntaxes = accepted.get(instance.sop_class_uid, set())
        stored_ts = instance.transfer_syntax_uid
        try:
            if stored_ts in syntaxes:
                unchanged = self._stored_file(instance)
                if unchanged is not None:
                    return unchanged
            with self.services.storage.open(instance.storage_key) as handle:
                ds = dcmread(handle)
        except StorageIntegrityError as exc:
            # Encrypted at rest and failing its check (wrong key, altered data): this
            # sub-operation fails, its UID in the Failed SOP Instance UID List.
            LOG.error("cannot send %s: %s", instance.sop_instance_uid, exc)
            return _failing_stand_in(instance, exc)
        if stored_ts in syntaxes or not syntaxes:
            return ds
        if UID(stored_ts).is_compressed and syntaxes & {str(u) for u in _UNCOMPRESSED}:
            try:
                # -> Explicit VR Little Endian; the same instance, so the same UID
                # (pydicom would generate a new SOP Instance UID by default)
                ds.decompress(generate_instance_uid=False)
            except Exception as exc:  # no decoder for this syntax: let the sub-op fail
                LOG.warning("cannot decompress %s: %s", instance.sop_instance_uid, exc)
                return ds
        # The file meta keeps naming the data set's real encoding: pynetdicom converts
        # to the uncompressed syntax the peer accepted (relabelling it fails the send).
        return ds

    def _stored_file(self, instance: StoredInstance) -> Dataset | None:
        """A stand-in that makes the sub-operation send the stored file's data set as is.

        Re-encoding with pydicom is not byte-preserving (group lengths dropped,
        UN values converted) and fails on some valid files.
        """
        source = readable(self.services.storage, instance.storage_key)
        try:
            with source.open("rb") as handle:
                read_preamble(handle, False)
                meta = _read_file_meta_info(handle)
        except StorageIntegrityError:
            raise
        except Exception:
            return None
        if (
            str(meta.get("MediaStorageSOPClassUID", "")) != instance.sop_class_uid
            or str(meta.get("MediaStorageSOPInstanceUID", "")) != instance.sop_instance_uid
            or str(meta.get("TransferSyntaxUID", "")) != instance.transfer_syntax_uid
        ):
            return None
        ds = Dataset()
        ds.SOPClassUID = instance.sop_class_uid
        ds.SOPInstanceUID = instance.sop_instance_uid
        ds.hilum_stored_path = source
        return ds


def _failing_stand_in(instance: StoredInstance, exc: Exception) -> Dataset:
    """A stand-in whose C-STORE sub-operation fails (before anything is sent) with ``exc``."""
    ds = Dataset()
    ds.SOPClassUID = instance.sop_class_uid
    ds.SOPInstanceUID = instance.sop_instance_uid
    ds.hilum_send_failure = exc
    return ds


def _send_files_unchanged(assoc: Association) -> None:
    """Make ``assoc`` send a :meth:`DimseHandlers._stored_file` stand-in from its file.

    pynetdicom's C-GET/C-MOVE only pass Datasets to ``send_c_store``, which
    itself sends a file path's data set bytes untouched (STORE_SEND_CHUNKED_DATASET).
    A stored object without a local path is sent through :func:`sendable`.
    """
    if getattr(assoc, "_hilum_sends_files", False):
        return
    send = assoc.send_c_store

    def send_c_store(dataset: Any, *args: Any, **kwargs: Any) -> Any:
        failure = getattr(dataset, "hilum_send_failure", None)
        if failure is not None:
            raise failure  # pynetdicom counts a failed sub-operation
        source = getattr(dataset, "hilum_stored_path", None)
        if source is None:
            return send(dataset, *args, **kwargs)
        # A local file as is; a stored object without one (encrypted at rest) through
        # a virtual path read by the storage area (dimse/stored_send.py).
        with sendable(source) as path:
            try:
                return send(path, *args, **kwargs)
            except StorageError:
                abort_broken_send(assoc)
                raise

    assoc.send_c_store = send_c_store  # type: ignore[method-assign]
    assoc._hilum_sends_files = True  # type: ignore[attr-defined]


def _contexts_for(instances: list[StoredInstance]) -> list[Any]:
    """Presentation contexts for a C-MOVE sub-association: stored syntax + uncompressed."""
    from pynetdicom.presentation import build_context

    by_class: dict[str, set[str]] = {}
    for instance in instances:
        by_class.setdefault(instance.sop_class_uid, set()).add(instance.transfer_syntax_uid)
    contexts = []
    for sop_class, syntaxes in sorted(by_class.items()):
        compressed = sorted(s for s in syntaxes if UID(s).is_compressed)
        for ts in compressed:
            contexts.append(build_context(sop_class, [ts]))
        contexts.append(build_context(sop_class, [str(u) for u in _UNCOMPRESSED]))
    return contexts[:128]


def _accepted_syntaxes(assoc: Association | None, *, scp_role: bool) -> dict[str, set[str]]:
    accepted: dict[str, set[str]] = {}
    if assoc is None:
        return accepted
    for cx in assoc.accepted_contexts:
        # C-GET: the peer is the storage SCP, so Hilum needs contexts where it is SCU
        if scp_role and cx.as_scu is False:
            continue
        accepted.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
    return accepted


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds

