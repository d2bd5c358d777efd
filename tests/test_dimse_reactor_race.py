"""pynetdicom's reactor must not take a response a send_*() is waiting for.

pynetdicom pauses an association's reactor thread before sending a request, but its
pause check has a window (the reactor flags itself paused just before waiting on a
checkpoint that is still open). A reactor that is slow through that window takes
the response off the DIMSE queue, drops it as "unexpected", and the sender waits
the whole DIMSE timeout: store jobs and C-MOVE sub-operations stalled this way on a
loaded machine. The window is widened here (the checkpoint's wait returns 50 ms
late) so the race happens on every request; hilum.dimse.tuning hands the response
back to the sender.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind, Verification

from conftest import free_port
from hilum.dimse.tuning import apply_pynetdicom_tuning


class LateCheckpoint(threading.Event):
    """A checkpoint whose wait returns late: the reactor's pause window, 50 ms wide."""

    def wait(self, timeout: float | None = None) -> bool:
        result = super().wait(timeout)
        time.sleep(0.05)
        return result


@pytest.fixture(scope="module")
def peer() -> Iterator[int]:
    apply_pynetdicom_tuning()

    def on_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        for n in range(3):
            match = Dataset()
            match.QueryRetrieveLevel = "STUDY"
            match.StudyInstanceUID = f"1.2.3.{n}"
            yield 0xFF00, match

    ae = AE(ae_title="PEER")
    ae.add_supported_context(Verification)
    ae.add_supported_context(CTImageStorage)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000), (evt.EVT_C_FIND, on_find)],
    )
    yield port
    server.shutdown()


def _ct() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "RACE"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def test_responses_reach_the_sender_when_the_reactor_is_slow_to_pause(peer: int) -> None:
    ae = AE(ae_title="HILUM")
    ae.dimse_timeout = 5
    for context in (Verification, CTImageStorage, StudyRootQueryRetrieveInformationModelFind):
        ae.add_requested_context(context)
    assoc = ae.associate("127.0.0.1", peer, ae_title="PEER")
    assert assoc.is_established
    try:
        assoc._reactor_checkpoint = LateCheckpoint()
        assoc._reactor_checkpoint.set()
        time.sleep(0.1)  # the reactor is now in its slow window on every turn
        started = time.monotonic()
        for _ in range(5):
            assert assoc.send_c_echo().Status == 0x0000
            assert assoc.send_c_store(_ct()).Status == 0x0000
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        statuses = [
            int(status.Status)
            for status, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
        ]
        assert statuses == [0xFF00, 0xFF00, 0xFF00, 0x0000]
        # Each request waits at most one reactor turn (~50 ms), never the 5 s DIMSE timeout.
        assert time.monotonic() - started < 4.0
    finally:
        assoc.release()


def late_acse(original: Any) -> Any:
    """ACSE.send_request, holding the requesting ACSE thread back after it hands the
    A-ASSOCIATE-RQ over, so the network thread connects, sends it, reads the peer's
    answer and closes before the ACSE looks at the socket: the window a loaded machine
    opens at random."""

    def send_request(acse: Any) -> None:
        original(acse)
        time.sleep(0.5)

    return send_request


def test_a_rejection_is_reported_as_rejected_when_the_acse_is_late(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from pynetdicom.acse import ACSE

    from dimse_util import dcmtk_storescp
    from hilum.config import RemoteAE
    from hilum.dimse.scu import Scu, ScuError

    apply_pynetdicom_tuning()
    monkeypatch.setattr(ACSE, "send_request", late_acse(ACSE.send_request))
    with dcmtk_storescp(tmp_path / "received", "REFUSING", "--refuse") as scp:
        remote = RemoteAE(name="picky", ae_title=scp.ae_title, host="127.0.0.1", port=scp.port)
        for _ in range(3):
            with pytest.raises(ScuError, match="rejected"):
                Scu("HILUM", timeout=10).echo(remote)
