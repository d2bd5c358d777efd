"""Storage Commitment Push Model SCP (PS3.4 J).

The N-ACTION request is answered at once; the N-EVENT-REPORT with the
outcome is then sent on a new association to the requesting AE (PS3.4
J.3.3: the SCP may use a different association), so the requesting AE must
be a known remote AE (``hilum ae add``). An instance counts as committed when
its index row exists and its file is present in the storage area with the
recorded size.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from pynetdicom.sop_class import StorageCommitmentPushModel
from sqlalchemy import insert, select, update

from hilum.dimse.scu import Scu
from hilum.index.models import Instance, commitments_t
from hilum.storage.base import StorageError

LOG = logging.getLogger(__name__)

# PS3.4 J.3.2.1.1: Storage Commitment Push Model SOP Instance UID
COMMITMENT_INSTANCE_UID = "1.2.840.10008.1.20.1.1"
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119


class CommitmentService:
    def __init__(self, services: Any) -> None:
        self.services = services

    def on_n_action(self, event: Any) -> tuple[int | Dataset, Dataset | None]:
        request = event.request
        if request.RequestedSOPClassUID != StorageCommitmentPushModel:
            return 0x0122, None  # SOP class not supported
        if int(request.ActionTypeID or 0) != 1:
            return 0x0123, None  # no such action
        calling = event.assoc.requestor.ae_title.strip()
        node = self.services.nodes.by_ae_title(calling)
        if node is None:
            status = Dataset()
            status.Status = 0x0110
            status.ErrorComment = f"{calling} is not a known remote AE"[:64]
            return status, None
        try:
            info = event.action_information
            transaction_uid = str(info.TransactionUID)
            references = [
                (str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID))
                for item in info.ReferencedSOPSequence
            ]
        except Exception as exc:
            status = Dataset()
            status.Status = 0x0106  # invalid attribute value
            status.ErrorComment = f"bad Action Information: {exc}"[:64]
            return status, None
        # Kept in the index until delivered, so a restart does not lose the report.
        with self.services.engine.begin() as conn:
            request_pk = conn.execute(
                insert(commitments_t)
                .values(
                    transaction_uid=transaction_uid,
                    calling_ae_title=calling,
                    state="pending",
                    references_json=json.dumps(references),
                )
                .returning(commitments_t.c.id)
            ).scalar_one()
        self._start(request_pk, node, transaction_uid, references)
        return 0x0000, None

    def _start(
        self, request_pk: int, node: Any, transaction_uid: str, references: list[tuple[str, str]]
    ) -> None:
        thread = threading.Thread(
            target=self._report,
            args=(request_pk, node, transaction_uid, references),
            name=f"commitment-{transaction_uid[-8:]}",
            daemon=True,
        )
        thread.start()

    def resume_pending(self) -> int:
        """Send the reports a previous run accepted but did not deliver."""
        with self.services.engine.connect() as conn:
            rows = conn.execute(
                select(commitments_t).where(commitments_t.c.state == "pending")
            ).all()
        resumed = 0
        for row in rows:
            node = self.services.nodes.by_ae_title(row.calling_ae_title)
            if node is None:
                self._mark(row.id, "failed")
                continue
            references = [tuple(r) for r in json.loads(row.references_json)]
            self._start(row.id, node, row.transaction_uid, references)
            resumed += 1
        return resumed

    def _mark(self, request_pk: int, state: str) -> None:
        with self.services.engine.begin() as conn:
            conn.execute(
                update(commitments_t)
                .where(commitments_t.c.id == request_pk)
                .values(state=state, attempts=commitments_t.c.attempts + 1)
            )

    def check(
        self, references: list[tuple[str, str]]
    ) -> tuple[list[tuple[str, str]], list[tuple[str, str, int]]]:
        """Split references into committed and failed (with a failure reason)."""
        committed: list[tuple[str, str]] = []
        failed: list[tuple[str, str, int]] = []
        table = Instance.__table__
        with self.services.engine.connect() as conn:
            for sop_class, sop_instance in references:
                row = conn.execute(
                    select(table.c.sop_class_uid, table.c.storage_key, table.c.size_bytes).where(
                        table.c.sop_instance_uid == sop_instance
                    )
                ).first()
                if row is None:
                    failed.append((sop_class, sop_instance, NO_SUCH_OBJECT_INSTANCE))
                    continue
                if row.sop_class_uid != sop_class:
                    failed.append((sop_class, sop_instance, CLASS_INSTANCE_CONFLICT))
                    continue
                try:
                    stored = self.services.storage.stat(row.storage_key)
                except StorageError:
                    failed.append((sop_class, sop_instance, NO_SUCH_OBJECT_INSTANCE))
                    continue
                if stored.size != row.size_bytes:
                    failed.append((sop_class, sop_instance, 0x0110))
                    continue
                committed.append((sop_class, sop_instance))
        return committed, failed

    def _report(
        self,
        request_pk: int,
        node: Any,
        transaction_uid: str,
        references: list[tuple[str, str]],
    ) -> None:
        committed, failed = self.check(references)
        info = Dataset()
        info.TransactionUID = transaction_uid
        if committed:
            info.ReferencedSOPSequence = [_ref(c, i) for c, i in committed]
        if failed:
            items = []
            for c, i, reason in failed:
                item = _ref(c, i)
                item.FailureReason = reason
                items.append(item)
            info.FailedSOPSequence = items
        event_type = 2 if failed else 1  # J.3.3: 1 = all success, 2 = failures exist
        ae = AE(ae_title=self.services.settings.dicom.ae_title)
        ae.add_requested_context(StorageCommitmentPushModel)
        role = build_role(StorageCommitmentPushModel, scu_role=False, scp_role=True)
        # over DICOM TLS to a remote AE with tls = true, with Hilum's client certificate
        tls_args = Scu.from_settings(self.services.settings.dicom).tls_args(node)
        for attempt in range(3):
            assoc = ae.associate(node.host, node.port, ae_title=node.ae_title, ext_neg=[role],
                                 tls_args=tls_args)
            if assoc.is_established:
                try:
                    status, _ = assoc.send_n_event_report(
                        info, event_type, StorageCommitmentPushModel, COMMITMENT_INSTANCE_UID
                    )
                    LOG.info(
                        "storage commitment %s: %d committed, %d failed, report status %s",
                        transaction_uid, len(committed), len(failed),
                        getattr(status, "Status", None),
                    )
                    if status is not None and getattr(status, "Status", None) is not None:
                        self._mark(request_pk, "sent")
                        return
                finally:
                    assoc.release()
            LOG.warning(
                "cannot deliver storage commitment report to %s (attempt %d)", node.ae_title, attempt + 1
            )
            threading.Event().wait(2.0 * (attempt + 1))
        # Stays pending: the next start of Hilum tries again.
        LOG.error("storage commitment report %s was not delivered", transaction_uid)


def _ref(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item
