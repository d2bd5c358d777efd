"""C-STORE against a real server: counts, duplicates, patient conflicts, bad input.

DCMTK storescu/findscu and pynetdicom are the peers. Every refusal must leave
the index and the storage area exactly as they were (and the staging area empty).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import PatientRootQueryRetrieveInformationModelFind

from conftest import RunningServer, start_server, stop_server
from dimse_util import (
    associate,
    c_find,
    c_get,
    chunked_send,
    dataset_bytes,
    dcmtk,
    findscu,
    identifier,
    instance_row,
    query_rows,
    scp_args,
    scu_ae,
    snapshot,
    stored_path,
)
from factory import StudySpec, ct_slice, make_study, write_study
from hilum.config import Settings


def send(server: RunningServer, *datasets: Dataset, chunked_paths: list[Path] | None = None) -> list[int]:
    """C-STORE with pynetdicom (datasets encoded by pynetdicom, paths sent as raw bytes)."""
    ae = scu_ae("PYSTORE")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = associate(ae, server)
    statuses = []
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            assert status, "no C-STORE response"
            statuses.append(int(status.Status))
        with chunked_send():
            for path in chunked_paths or []:
                status = assoc.send_c_store(path)
                assert status, "no C-STORE response"
                statuses.append(int(status.Status))
    finally:
        assoc.release()
    return statuses


@pytest.mark.postgres  # the writer's counters and conflicts: both back-ends
def test_storescu_series_counts_duplicates_and_patient_conflict(
    server: RunningServer, tmp_path: Path
) -> None:
    spec = StudySpec(patient_id="PAT-STORE", patient_name="DOE^JANE", series=2, slices=3)
    files = write_study(spec, tmp_path / "study")
    out = dcmtk("storescu", "-aet", "STORESCU", *scp_args(server), *map(str, files))
    assert out.returncode == 0, out.stdout + out.stderr

    # -- counts, through C-FIND (DCMTK findscu and pynetdicom) ---------------------
    study = findscu(
        server, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={spec.study_uid}",
        "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "ModalitiesInStudy",
        "PatientName",
    )
    assert len(study) == 1
    assert study[0]["NumberOfStudyRelatedSeries"] == "2"
    assert study[0]["NumberOfStudyRelatedInstances"] == "6"
    assert study[0]["ModalitiesInStudy"] == "CT"
    assert study[0]["PatientName"] == "DOE^JANE"
    series = c_find(server, identifier(
        "SERIES", StudyInstanceUID=spec.study_uid, SeriesInstanceUID="",
        NumberOfSeriesRelatedInstances="", Modality="",
    ))
    assert sorted(int(s.NumberOfSeriesRelatedInstances) for s in series) == [3, 3]
    patient = c_find(
        server,
        identifier("PATIENT", PatientID="PAT-STORE", NumberOfPatientRelatedStudies="",
                   NumberOfPatientRelatedSeries="", NumberOfPatientRelatedInstances=""),
        PatientRootQueryRetrieveInformationModelFind,
    )
    assert [(int(p.NumberOfPatientRelatedStudies), int(p.NumberOfPatientRelatedSeries),
             int(p.NumberOfPatientRelatedInstances)) for p in patient] == [(1, 2, 6)]
    first = snapshot(server.settings)
    assert first.rows["instances"] == 6 and len(first.files) == 6 and not first.staging
    rows_before = {p.name: instance_row(server.settings, p.stem) for p in files}

    # -- identical re-send: success, nothing new -----------------------------------
    out = dcmtk("storescu", "-aet", "STORESCU", *scp_args(server), *map(str, files))
    assert out.returncode == 0, out.stdout + out.stderr
    assert snapshot(server.settings) == first
    assert {p.name: instance_row(server.settings, p.stem) for p in files} == rows_before

    # -- different data set, same SOP Instance UID, policy 'ignore' (the default) ---
    changed = dcmread(files[0])
    changed.SeriesDescription = "CHANGED"
    changed.PixelData = bytes(len(changed.PixelData))
    assert send(server, changed) == [0x0000]
    assert snapshot(server.settings) == first
    assert instance_row(server.settings, files[0].stem) == rows_before[files[0].name]
    assert dataset_bytes(stored_path(server.settings, files[0].stem)) == dataset_bytes(files[0])

    # -- patient conflict: same PatientID, another name --------------------------------
    other = StudySpec(patient_id="PAT-STORE", patient_name="DOE^JOHN", slices=2,
                      accession="ACC002")
    other_files = write_study(other, tmp_path / "other")
    out = dcmtk("storescu", "-aet", "STORESCU", *scp_args(server), *map(str, other_files))
    assert out.returncode == 0, out.stdout + out.stderr
    conflicts = query_rows(
        server.settings,
        "SELECT attribute, stored_value, received_value, sop_instance_uid, study_instance_uid "
        "FROM patient_conflicts ORDER BY id",
    )
    assert {(c.attribute, c.stored_value, c.received_value) for c in conflicts} == {
        ("PatientName", "DOE^JANE", "DOE^JOHN")
    }
    assert sorted(c.sop_instance_uid for c in conflicts) == sorted(p.stem for p in other_files)
    assert {c.study_instance_uid for c in conflicts} == {other.study_uid}
    names = query_rows(server.settings,
                       "SELECT patient_name FROM patients WHERE patient_id = 'PAT-STORE'")
    assert [n.patient_name for n in names] == ["DOE^JANE"]
    patient = c_find(
        server,
        identifier("PATIENT", PatientID="PAT-STORE", PatientName="",
                   NumberOfPatientRelatedStudies="", NumberOfPatientRelatedInstances=""),
        PatientRootQueryRetrieveInformationModelFind,
    )
    assert [(str(p.PatientName), int(p.NumberOfPatientRelatedStudies),
             int(p.NumberOfPatientRelatedInstances)) for p in patient] == [("DOE^JANE", 2, 8)]
    # the instances themselves are kept as received
    assert str(dcmread(stored_path(server.settings, other_files[0].stem)).PatientName) == "DOE^JOHN"


@pytest.fixture(params=["replace", "reject"])
def policy_server(
    request: pytest.FixtureRequest, settings: Settings, tmp_path: Path
) -> Iterator[tuple[str, RunningServer]]:
    """A server whose duplicate policy is set through HILUM_DICOM__DUPLICATE_POLICY."""
    running = start_server(
        settings, tmp_path, env={"HILUM_DICOM__DUPLICATE_POLICY": request.param}
    )
    try:
        yield request.param, running
    finally:
        stop_server(running)


@pytest.mark.postgres  # replacing recounts in SQL: both back-ends
def test_duplicate_policies(policy_server: tuple[str, RunningServer]) -> None:
    """'ignore' (the default) is covered above; here 'replace' and 'reject'."""
    policy, server = policy_server
    spec = StudySpec(patient_id="PAT-DUP", slices=2)
    original, sibling = make_study(spec)
    assert send(server, original, sibling) == [0x0000, 0x0000]
    first = snapshot(server.settings)
    row = instance_row(server.settings, original.SOPInstanceUID)

    # identical re-send: success and nothing new, whatever the policy
    assert send(server, original) == [0x0000]
    assert snapshot(server.settings) == first

    changed = dcmread(io.BytesIO(_encode(original)))
    changed.SeriesDescription = "CHANGED"
    changed.PixelData = bytes(len(changed.PixelData))
    status = send(server, changed)[0]
    after = snapshot(server.settings)
    new_row = instance_row(server.settings, original.SOPInstanceUID)
    stored = dcmread(stored_path(server.settings, original.SOPInstanceUID))
    got = c_get(server, identifier("IMAGE", StudyInstanceUID=spec.study_uid,
                                   SeriesInstanceUID=original.SeriesInstanceUID,
                                   SOPInstanceUID=original.SOPInstanceUID),
                {CTImageStorage: [ExplicitVRLittleEndian]})
    retrieved = dcmread(io.BytesIO(got.received[original.SOPInstanceUID][1]), force=True)
    if policy == "replace":
        assert status == 0x0000
        assert new_row.sha256 != row.sha256 and new_row.storage_key != row.storage_key
        assert stored.SeriesDescription == "CHANGED"
        assert retrieved.SeriesDescription == "CHANGED"
        assert after.rows == first.rows
        assert len(after.files) == len(first.files)  # the old file is gone
        assert not (server.settings.storage_dir / row.storage_key).exists()
        kinds = query_rows(server.settings, "SELECT kind FROM changes WHERE resource_uid = :u "
                           "ORDER BY seq", u=str(original.SOPInstanceUID))
        assert [k.kind for k in kinds] == ["stored", "replaced"]
    else:
        assert status == 0xA900
        assert new_row == row
        assert stored.SeriesDescription == "series 1"
        assert retrieved.SeriesDescription == "series 1"
        assert after == first
    assert not after.staging


def _encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_bad_input_is_refused_and_leaves_nothing_behind(
    server: RunningServer, tmp_path: Path
) -> None:
    good = make_study(StudySpec(patient_id="PAT-GOOD", slices=1))[0]
    assert send(server, good) == [0x0000]
    before = snapshot(server.settings)

    def without(keyword: str) -> Dataset:
        ds = ct_slice(StudySpec(patient_id="PAT-BAD"), generate_uid(), 1, 0)
        delattr(ds, keyword)
        return ds

    bad_uid = ct_slice(StudySpec(patient_id="PAT-BAD"), generate_uid(), 1, 0)
    bad_uid.StudyInstanceUID = "not-a-uid"
    statuses = send(server, without("StudyInstanceUID"), without("SeriesInstanceUID"), bad_uid)
    assert statuses == [0xA900, 0xA900, 0xA900]
    assert snapshot(server.settings) == before

    # Raw bytes on the wire: a valid File Meta, then a broken data set.
    full = _encode(ct_slice(StudySpec(patient_id="PAT-BAD"), generate_uid(), 1, 0))
    reference = tmp_path / "reference.dcm"
    reference.write_bytes(full)
    _, offset = split_dataset(reference)
    meta = full[:offset]
    pixel_header = full.rfind(b"\xe0\x7f\x10\x00")
    broken = {
        "truncated-pixel-data.dcm": full[: len(full) - 1000],
        "truncated-in-element-header.dcm": full[: pixel_header + 5],
        "truncated-in-a-value.dcm": full[: offset + 20],
        "text-not-dicom.dcm": meta + b"this is not a DICOM data set\n" * 64,
        "noise-not-dicom.dcm": meta + bytes((i * 7919 + 13) % 256 for i in range(4096)),
    }
    paths = []
    for name, data in broken.items():
        path = tmp_path / name
        path.write_bytes(data)
        paths.append(path)
    statuses = send(server, chunked_paths=paths)
    assert statuses == [0xC000] * len(paths), dict(zip(broken, map(hex, statuses), strict=True))
    after = snapshot(server.settings)
    assert after == before, "a refused instance left rows or files behind"
    assert not after.staging
    # the association is still fine afterwards, and so is the server
    assert send(server, make_study(StudySpec(patient_id="PAT-GOOD", slices=1))[0]) == [0x0000]
