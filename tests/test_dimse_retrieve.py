"""C-MOVE and C-GET against a real server, with DCMTK and pynetdicom peers, and the CLI.

Move destinations are DCMTK storescp processes registered with ``hilum ae add``.
Compressed instances (JPEG 2000 and RLE from pydicom's test files) retrieved by
a peer that accepts only uncompressed transfer syntaxes arrive decompressed,
with the same pixels.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelMove,
)

from conftest import RunningServer, free_port
from dimse_util import (
    UNCOMPRESSED,
    GetSession,
    PynetdicomStoreScp,
    associate,
    c_get,
    chunked_send,
    dataset_bytes,
    dcmtk,
    dcmtk_storescp,
    identifier,
    scp_args,
    scu_ae,
    snapshot,
)
from factory import StudySpec, write_study

# Compressed instances from pydicom's own test files (installed with pydicom).
COMPRESSED = ("MR_small_jp2klossless.dcm", "emri_small_RLE.dcm")


def _move(server: RunningServer, destination: str, ident: Dataset) -> Dataset:
    """C-MOVE with pynetdicom; the final response."""
    ae = scu_ae("PYMOVE")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = associate(ae, server)
    last = None
    try:
        for status, _ in assoc.send_c_move(ident, destination,
                                           StudyRootQueryRetrieveInformationModelMove):
            assert status, "no C-MOVE response"
            last = status
    finally:
        assoc.release()
    assert last is not None
    return last


def _movescu(server: RunningServer, destination: str, *keys: str) -> str:
    args = ["-v", "-S", "-aet", "MOVESCU", "-aem", destination]
    for key in keys:
        args += ["-k", key]
    out = dcmtk("movescu", *args, *scp_args(server))
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "Received Final Move Response (Success)" in text, text
    return text


def _store_compressed(server: RunningServer) -> dict[str, Dataset]:
    """Store the compressed test files as they are; SOP Instance UID -> original."""
    originals = {}
    ae = scu_ae("PYSTORE")
    for name in COMPRESSED:
        ds = dcmread(get_testdata_file(name))
        ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
        originals[str(ds.SOPInstanceUID)] = ds
    assoc = associate(ae, server)
    try:
        with chunked_send():
            for name in COMPRESSED:
                status = assoc.send_c_store(Path(get_testdata_file(name)))
                assert status and status.Status == 0x0000, name
    finally:
        assoc.release()
    return originals


def _image(ds: Dataset) -> Dataset:
    return identifier("IMAGE", StudyInstanceUID=ds.StudyInstanceUID,
                      SeriesInstanceUID=ds.SeriesInstanceUID, SOPInstanceUID=ds.SOPInstanceUID)


def _assert_decompressed(received: Dataset, original: Dataset) -> None:
    assert not received.file_meta.TransferSyntaxUID.is_compressed
    assert received.SOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(received.pixel_array, original.pixel_array)


def test_move_and_get_with_dcmtk_and_pynetdicom(server: RunningServer, tmp_path: Path) -> None:
    spec = StudySpec(patient_id="PAT-RET", series=2, slices=3)
    files = write_study(spec, tmp_path / "study")
    out = dcmtk("storescu", "-aet", "STORESCU", *scp_args(server), *map(str, files))
    assert out.returncode == 0, out.stdout + out.stderr
    originals = _store_compressed(server)
    series_uids = sorted({dcmread(p, stop_before_pixels=True).SeriesInstanceUID for p in files})
    before = snapshot(server.settings)

    # ALLSCP writes what it receives bit-preserving (-B): moved data sets must be the originals
    with dcmtk_storescp(tmp_path / "all", "ALLSCP", "+xa", "-B") as dest, \
            dcmtk_storescp(tmp_path / "plain", "PLAINSCP", "+xe") as plain:
        server.hilum("ae", "add", "all", dest.ae_title, "127.0.0.1", str(dest.port))
        server.hilum("ae", "add", "plain", plain.ae_title, "127.0.0.1", str(plain.port))

        # -- movescu, STUDY level then SERIES level ---------------------------------
        _movescu(server, "ALLSCP", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={spec.study_uid}")
        received = dest.received()
        assert sorted(p.name.split(".", 1)[1] for p in received) == sorted(p.stem for p in files)
        by_uid = {p.stem: p for p in files}
        for path in received:
            assert dataset_bytes(path) == dataset_bytes(by_uid[path.name.split(".", 1)[1]])
            path.unlink()
        _movescu(server, "ALLSCP", "QueryRetrieveLevel=SERIES",
                 f"StudyInstanceUID={spec.study_uid}", f"SeriesInstanceUID={series_uids[0]}")
        received = dest.received()
        assert len(received) == 3
        assert {dcmread(p).SeriesInstanceUID for p in received} == {series_uids[0]}
        for path in received:
            path.unlink()

        # -- unknown destination: 0xA801, with movescu and pynetdicom ------------------
        out = dcmtk("movescu", "-S", "-aet", "MOVESCU", "-aem", "NOWHERE",
                    "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={spec.study_uid}",
                    *scp_args(server))
        assert "MoveDestinationUnknown" in out.stdout + out.stderr, out.stdout + out.stderr
        status = _move(server, "NOWHERE",
                       identifier("STUDY", StudyInstanceUID=spec.study_uid))
        assert int(status.Status) == 0xA801
        assert dest.received() == []

        # -- compressed instances to a peer that accepts only uncompressed -------------
        for original in originals.values():
            status = _move(server, "PLAINSCP", _image(original))
            assert int(status.Status) == 0x0000
            assert int(status.NumberOfCompletedSuboperations) == 1
        arrived = {str(ds.SOPInstanceUID): ds for ds in map(dcmread, plain.received())}
        assert set(arrived) == set(originals)
        for uid, original in originals.items():
            assert arrived[uid].file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            _assert_decompressed(arrived[uid], original)
        # ... and to a peer that accepts them as stored: unchanged
        for original in originals.values():
            assert int(_move(server, "ALLSCP", _image(original)).Status) == 0x0000
        kept = {p.name.split(".", 1)[1]: dcmread(p) for p in dest.received()}
        for uid, original in originals.items():
            assert kept[uid].file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
            assert kept[uid].PixelData == original.PixelData
        # byte for byte (storescp -B still rewrites OW to OB for encapsulated Pixel Data, so
        # the wire bytes are taken at a pynetdicom SCP)
        with PynetdicomStoreScp("PYDEST") as pydest:
            server.hilum("ae", "add", "pydest", pydest.ae_title, "127.0.0.1", str(pydest.port))
            for original in originals.values():
                assert int(_move(server, "PYDEST", _image(original)).Status) == 0x0000
            for uid, original in originals.items():
                assert pydest.received[uid] == (
                    original.file_meta.TransferSyntaxUID, dataset_bytes(Path(original.filename))
                )

    # -- getscu (DCMTK), STUDY level; it accepts uncompressed syntaxes only ------------------
    got = tmp_path / "getscu"
    got.mkdir()
    out = dcmtk("getscu", "-S", "-aet", "GETSCU", "-od", str(got),
                "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={spec.study_uid}",
                *scp_args(server))
    assert out.returncode == 0 and "E:" not in out.stdout + out.stderr, out.stdout + out.stderr
    assert sorted(p.name.split(".", 1)[1] for p in got.iterdir()) == sorted(p.stem for p in files)
    for original in originals.values():
        out = dcmtk("getscu", "-S", "-aet", "GETSCU", "-od", str(got),
                    "-k", "QueryRetrieveLevel=IMAGE",
                    "-k", f"StudyInstanceUID={original.StudyInstanceUID}",
                    "-k", f"SeriesInstanceUID={original.SeriesInstanceUID}",
                    "-k", f"SOPInstanceUID={original.SOPInstanceUID}", *scp_args(server))
        assert out.returncode == 0 and "E:" not in out.stdout + out.stderr, out.stdout + out.stderr
        [path] = [p for p in got.iterdir() if p.name.endswith(str(original.SOPInstanceUID))]
        _assert_decompressed(dcmread(path), original)

    # -- pynetdicom C-GET accepting only Implicit VR Little Endian --------------------------
    implicit_only = {CTImageStorage: [ImplicitVRLittleEndian]}
    result = c_get(server, identifier("STUDY", StudyInstanceUID=spec.study_uid), implicit_only)
    assert int(result.status.Status) == 0x0000 and len(result.received) == 6
    assert {ts for ts, _ in result.received.values()} == {ImplicitVRLittleEndian}
    uncompressed_only = {str(o.SOPClassUID): UNCOMPRESSED for o in originals.values()}
    with GetSession(server, uncompressed_only) as session:
        for uid, original in originals.items():
            result = session.get(_image(original))
            assert int(result.status.Status) == 0x0000, uid
            ts, data = result.received[uid]
            ds = dcmread(io.BytesIO(data), force=True)
            ds.file_meta = Dataset()
            ds.file_meta.TransferSyntaxUID = ts
            _assert_decompressed(ds, original)

    # retrieving changed nothing
    assert snapshot(server.settings) == before


def test_cli_echo_store_find_move_get(server: RunningServer, tmp_path: Path) -> None:
    address = f"{server.ae_title}@127.0.0.1:{server.port}"
    out = server.hilum("echo", address)
    assert "status 0x0000" in out.stdout

    spec = StudySpec(patient_id="PAT-CLI", patient_name="CLI^PATIENT", series=1, slices=4)
    folder = tmp_path / "in"
    files = write_study(spec, folder)
    (folder / "notes.txt").write_text("not DICOM")
    out = server.hilum("store", address, str(folder), check=False)
    assert out.returncode == 1  # one file was not DICOM...
    assert "sent 4 file(s)" in out.stdout
    assert "notes.txt" in out.stdout  # ...and is reported
    assert snapshot(server.settings).rows["instances"] == 4

    out = server.hilum("find", address, "-L", "STUDY", "-k", "PatientID=PAT-CLI",
                       "-k", "StudyInstanceUID", "-k", "NumberOfStudyRelatedInstances",
                       "-k", "PatientName")
    assert "1 match(es)" in out.stdout
    assert spec.study_uid[:20] in out.stdout.replace("\n", "")
    assert "CLI^PATIENT" in out.stdout
    out = server.hilum("find", address, "-L", "PATIENT", "--root", "PATIENT",
                       "-k", "PatientID=PAT-CLI", "-k", "NumberOfPatientRelatedInstances")
    assert "1 match(es)" in out.stdout

    with dcmtk_storescp(tmp_path / "dest", "CLIDEST", "+xa") as dest:
        server.hilum("ae", "add", "clidest", dest.ae_title, "127.0.0.1", str(dest.port))
        listed = server.hilum("ae", "list")
        assert "CLIDEST" in listed.stdout
        out = server.hilum("move", address, "CLIDEST", "-L", "STUDY",
                           "-k", f"StudyInstanceUID={spec.study_uid}")
        assert "status 0x0000: completed 4, failed 0" in out.stdout, out.stdout
        assert len(dest.received()) == 4
        # by name: the remote AE registered above, not an address
        out = server.hilum("move", address, "NOWHERE", "-L", "STUDY",
                           "-k", f"StudyInstanceUID={spec.study_uid}", check=False)
        assert out.returncode == 1 and "status 0xA801" in out.stdout, out.stdout

    out = server.hilum("get", address, "-L", "STUDY", "-k", f"StudyInstanceUID={spec.study_uid}",
                       "-o", str(tmp_path / "got"))
    assert "status 0x0000: completed 4, failed 0" in out.stdout, out.stdout
    got = sorted(p.name for p in (tmp_path / "got").iterdir())
    assert got == sorted(p.name for p in files)
    for path in files:
        assert dcmread(tmp_path / "got" / path.name).PixelData == dcmread(path).PixelData

    # a remote given by name (hilum ae add), not as an address
    server.hilum("ae", "add", "self", server.ae_title, "127.0.0.1", str(server.port))
    assert "status 0x0000" in server.hilum("echo", "self").stdout
    unreachable = f"NOBODY@127.0.0.1:{free_port()}"
    out = server.hilum("echo", unreachable, check=False)
    assert out.returncode != 0
