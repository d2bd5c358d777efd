"""Private and unknown storage SOP classes are accepted and stored as received."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind

from conftest import RunningServer
from factory import StudySpec, make_study

SIEMENS_CSA_NON_IMAGE = "1.3.12.2.1107.5.9.1"  # a real private storage SOP class


def test_private_sop_class_is_stored_and_standard_negotiation_is_kept(
    server: RunningServer, tmp_path: Path
) -> None:
    ds = make_study(StudySpec(slices=1, size=8))[0]
    ds.SOPClassUID = SIEMENS_CSA_NON_IMAGE
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID

    ae = AE(ae_title="VENDOR")
    ae.add_requested_context(SIEMENS_CSA_NON_IMAGE, ExplicitVRLittleEndian)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, JPEG2000Lossless])
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", server.port, ae_title=server.ae_title)
    assert assoc.is_established
    try:
        accepted = {str(cx.abstract_syntax): str(cx.transfer_syntax[0])
                    for cx in assoc.accepted_contexts}
        assert accepted[SIEMENS_CSA_NON_IMAGE] == ExplicitVRLittleEndian
        # Standard classes still get Hilum's lossless-first choice.
        assert accepted[CTImageStorage] == JPEG2000Lossless
        assert assoc.send_c_store(ds).Status == 0x0000
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = ds.StudyInstanceUID
        query.SeriesInstanceUID = ds.SeriesInstanceUID
        query.SOPInstanceUID = ""
        query.SOPClassUID = ""
        found = [i for s, i in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
                 if i is not None]
    finally:
        assoc.release()
    assert [str(i.SOPClassUID) for i in found] == [SIEMENS_CSA_NON_IMAGE]
    stored = list((server.data_dir / "storage").rglob("*.dcm"))
    assert len(stored) == 1
    assert dcmread(stored[0]).SOPClassUID == SIEMENS_CSA_NON_IMAGE
