"""C-MOVE / C-GET with an identifier Hilum cannot match: 0xA900, not a crash."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from conftest import RunningServer


def _identifier(**keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_bad_retrieve_identifiers_get_a900(server: RunningServer) -> None:
    server.hilum("ae", "add", "self", server.ae_title, "127.0.0.1", str(server.port))
    ae = AE(ae_title="RETRIEVER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    assoc = ae.associate("127.0.0.1", server.port, ae_title=server.ae_title)
    assert assoc.is_established
    try:
        # No matching key at all, and a malformed date: both refused with 0xA900.
        for identifier in (_identifier(), _identifier(StudyDate="2024-13-45x")):
            moves = list(
                assoc.send_c_move(identifier, server.ae_title, StudyRootQueryRetrieveInformationModelMove)
            )
            assert moves[-1][0].Status == 0xA900, moves
            gets = list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))
            assert gets[-1][0].Status == 0xA900, gets
    finally:
        assoc.release()
    assert "Traceback" not in server.log.read_text()
