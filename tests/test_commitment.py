"""Storage Commitment Push Model (PS3.4 J) against a real server.

The requesting AE is pynetdicom with its own listening SCP, registered with
``hilum ae add``: it sends N-ACTION (Request Storage Commitment) and waits for
the N-EVENT-REPORT that Hilum sends on a new association.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, StorageCommitmentPushModel

from conftest import RunningServer, free_port
from dimse_util import associate, dcmtk, instance_row, scp_args, stored_path
from factory import StudySpec, write_study

COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"  # PS3.4 J.3.2.1.1 (well-known)
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
PROCESSING_FAILURE = 0x0110


@dataclass
class Report:
    event_type: int
    info: Dataset
    calling_ae: str

    def committed(self) -> set[tuple[str, str]]:
        return {(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
                for i in self.info.get("ReferencedSOPSequence", [])}

    def failed(self) -> set[tuple[str, str, int]]:
        return {(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID),
                 int(i.FailureReason)) for i in self.info.get("FailedSOPSequence", [])}


class CommitmentScu:
    """A Storage Commitment SCU that also listens for the N-EVENT-REPORT."""

    def __init__(self, ae_title: str) -> None:
        self.ae_title = ae_title
        self.port = free_port()
        self.reports: queue.Queue[Report] = queue.Queue()
        self.ae = AE(ae_title=ae_title)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 30
        self.ae.add_requested_context(StorageCommitmentPushModel)
        # The report comes on a new association where Hilum takes the SCP role.
        self.ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
        self.listener = self.ae.start_server(
            ("127.0.0.1", self.port), block=False,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report)],
        )

    def _on_report(self, event: Any) -> tuple[int, None]:
        self.reports.put(Report(int(event.event_type), event.event_information,
                                event.assoc.requestor.ae_title.strip()))
        return 0x0000, None

    def request(self, server: RunningServer, references: list[tuple[str, str]]) -> tuple[str, int]:
        """N-ACTION Request Storage Commitment; (transaction UID, N-ACTION status)."""
        info = Dataset()
        info.TransactionUID = generate_uid()
        items = []
        for sop_class, sop_instance in references:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            items.append(item)
        info.ReferencedSOPSequence = items
        assoc = associate(self.ae, server)
        try:
            status, _ = assoc.send_n_action(info, 1, StorageCommitmentPushModel,
                                            COMMITMENT_INSTANCE)
        finally:
            assoc.release()
        assert status, "no N-ACTION response"
        return str(info.TransactionUID), int(status.Status)

    def report(self, timeout: float = 30) -> Report:
        return self.reports.get(timeout=timeout)

    def close(self) -> None:
        self.listener.shutdown()


@pytest.fixture
def committer() -> Iterator[CommitmentScu]:
    scu = CommitmentScu("COMMITSCU")
    try:
        yield scu
    finally:
        scu.close()


def test_storage_commitment_push_model(
    server: RunningServer, committer: CommitmentScu, tmp_path: Any
) -> None:
    files = write_study(StudySpec(patient_id="PAT-COMMIT", slices=4), tmp_path / "in")
    out = dcmtk("storescu", "-aet", "COMMITSCU", *scp_args(server), *map(str, files))
    assert out.returncode == 0, out.stdout + out.stderr
    stored = [(CTImageStorage, p.stem) for p in files]

    # -- not a known remote AE yet: refused at once, no report ----------------------------
    _, status = committer.request(server, stored)
    assert status == PROCESSING_FAILURE
    with pytest.raises(queue.Empty):
        committer.reports.get(timeout=2)

    server.hilum("ae", "add", "committer", committer.ae_title, "127.0.0.1", str(committer.port))

    # -- everything stored: event type 1, no FailedSOPSequence ----------------------------------
    transaction, status = committer.request(server, stored[:2])
    assert status == 0x0000
    report = committer.report()
    assert report.event_type == 1
    assert report.calling_ae == server.ae_title
    assert str(report.info.TransactionUID) == transaction
    assert report.committed() == set(stored[:2])
    assert "FailedSOPSequence" not in report.info

    # -- stored + unknown + wrong class + file gone + file damaged: event type 2 ---------------
    unknown = (CTImageStorage, generate_uid())
    wrong_class = (MRImageStorage, stored[1][1])
    gone, damaged = stored[2], stored[3]
    stored_path(server.settings, gone[1]).unlink()
    with stored_path(server.settings, damaged[1]).open("r+b") as handle:
        handle.truncate(100)
    transaction, status = committer.request(
        server, [stored[0], unknown, wrong_class, gone, damaged]
    )
    assert status == 0x0000
    report = committer.report()
    assert report.event_type == 2
    assert str(report.info.TransactionUID) == transaction
    assert report.committed() == {stored[0]}
    assert report.failed() == {
        (*unknown, NO_SUCH_OBJECT_INSTANCE),
        (*wrong_class, CLASS_INSTANCE_CONFLICT),
        (*gone, NO_SUCH_OBJECT_INSTANCE),
        (*damaged, PROCESSING_FAILURE),
    }

    # -- nothing committed at all: event type 2, no ReferencedSOPSequence ------------------------
    transaction, status = committer.request(server, [unknown])
    assert status == 0x0000
    report = committer.report()
    assert report.event_type == 2
    assert report.committed() == set()
    assert report.failed() == {(*unknown, NO_SUCH_OBJECT_INSTANCE)}
    assert committer.reports.empty()
    # the index still lists what was stored (commitment never changes it)
    assert instance_row(server.settings, gone[1]) is not None


def test_pending_reports_survive_a_restart(services: Any, committer: CommitmentScu) -> None:
    """A report accepted but not yet delivered is sent by the next start of Hilum."""
    import json

    from sqlalchemy import insert, select

    from hilum.config import RemoteAE
    from hilum.dimse.commitment import CommitmentService
    from hilum.index.models import commitments_t

    services.nodes.add(
        RemoteAE(name="committer", ae_title=committer.ae_title, host="127.0.0.1",
                 port=committer.port)
    )
    transaction = generate_uid()
    unknown = (CTImageStorage, generate_uid())
    with services.engine.begin() as conn:  # as left by a run that stopped before delivering
        conn.execute(insert(commitments_t).values(
            transaction_uid=transaction, calling_ae_title=committer.ae_title,
            state="pending", references_json=json.dumps([list(unknown)]),
        ))
    assert CommitmentService(services).resume_pending() == 1
    report = committer.report()
    assert str(report.info.TransactionUID) == transaction
    assert report.event_type == 2
    assert report.failed() == {(*unknown, NO_SUCH_OBJECT_INSTANCE)}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with services.engine.connect() as conn:
            state = conn.execute(select(commitments_t.c.state)).scalar_one()
        if state == "sent":
            break
        time.sleep(0.05)
    assert state == "sent"
    assert CommitmentService(services).resume_pending() == 0  # nothing left to send
