"""pynetdicom event handlers. Thin: translate DIMSE <-> services, nothing more.

Every handler turns exceptions into a DIMSE failure status, so a bug never
reaches the wire as a dropped association.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
)

from hilum.app import Services
from hilum.dimse.commitment import CommitmentService
from hilum.dimse.identifiers import (
    PATIENT_ROOT,
    STUDY_ROOT,
    query_from_identifier,
    response_identifier,
)
from hilum.domain.errors import IngestFailure, InvalidQuery
from hilum.index.search import StoredInstance, matching_instances, search

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
        staged = event.dataset_path  # STORE_RECV_CHUNKED_DATASET: already in staging
        try:
            result = self.services.ingest.ingest_staged(
                staged,
                source=_source(event),
                affected_sop_instance_uid=str(event.request.AffectedSOPInstanceUID or ""),
            )
        except IngestFailure as failure:
            LOG.info("C-STORE refused from %s: %s", _source(event), failure)
            return _status(failure.status.dimse_status, failure.message)
        except Exception as exc:
            LOG.exception("C-STORE failed")
            return _status(0x0110, f"processing failure: {exc}")
        if result.message:
            LOG.warning("C-STORE %s: %s", result.sop_instance_uid, result.message)
        return 0x0000

    # -- C-FIND (PS3.4 C.4.1) ----------------------------------------------------
    def on_find(self, event: Any) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        try:
            identifier = event.identifier
            query = query_from_identifier(identifier, _root(event))
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
            yield destination.host, destination.port
            yield _status(0xA900, str(exc)), None
            return
        captured: dict[str, Association] = {}

        def _on_accepted(accepted_event: Any) -> None:
            captured["assoc"] = accepted_event.assoc

        contexts = _contexts_for(instances)
        yield (
            destination.host,
            destination.port,
            {"contexts": contexts, "evt_handlers": [(evt.EVT_ACCEPTED, _on_accepted)]},
        )
        yield len(instances)
        for instance in instances:
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
            yield 0
            yield _status(0xA900, str(exc)), None
            return
        yield len(instances)
        accepted = _accepted_syntaxes(event.assoc, scp_role=True)
        for instance in instances:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, self._dataset_for(instance, accepted)

    def _instances(self, event: Any) -> list[StoredInstance]:
        query = query_from_identifier(event.identifier, _root(event))
        with self.services.engine.connect() as conn:
            return matching_instances(conn, query)

    def _dataset_for(
        self, instance: StoredInstance, accepted: dict[str, set[str]]
    ) -> Dataset | None:
        """The stored dataset, in a transfer syntax the peer accepted (decompressed if need be)."""
        with self.services.storage.open(instance.storage_key) as handle:
            ds = dcmread(handle)
        syntaxes = accepted.get(instance.sop_class_uid, set())
        stored_ts = instance.transfer_syntax_uid
        if stored_ts in syntaxes or not syntaxes:
            return ds
        if UID(stored_ts).is_compressed and syntaxes & {str(u) for u in _UNCOMPRESSED}:
            try:
                ds.decompress()
            except Exception as exc:  # no decoder for this syntax: let the sub-op fail
                LOG.warning("cannot decompress %s: %s", instance.sop_instance_uid, exc)
                return ds
            ds.file_meta.TransferSyntaxUID = _uncompressed_choice(syntaxes)
        elif not UID(stored_ts).is_compressed:
            ds.file_meta.TransferSyntaxUID = _uncompressed_choice(syntaxes)
        return ds


def _uncompressed_choice(syntaxes: set[str]) -> UID:
    return ExplicitVRLittleEndian if ExplicitVRLittleEndian in syntaxes else ImplicitVRLittleEndian


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
        if scp_role and cx.as_scp is False:
            continue
        accepted.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
    return accepted


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds

