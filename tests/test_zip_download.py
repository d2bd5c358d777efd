"""Study and series download as a zip File-set (PS3.10): DICOMDIR + files, streamed."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import httpx
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.fileset import FileSet

from conftest import RunningServer, require_tool
from factory import StudySpec, make_study
from hilum.export.archive import CHUNK, stream_archive
from hilum.index.search import StoredInstance
from hilum.storage.filesystem import FilesystemStorage


def stored_by_uid(server: RunningServer) -> dict[str, bytes]:
    root = server.settings.storage_dir
    found = {}
    for path in root.rglob("*.dcm"):
        if ".staging" not in path.parts:
            found[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path.read_bytes()
    return found


def download(server: RunningServer, path: str, target: Path) -> httpx.Response:
    url = f"http://127.0.0.1:{server.settings.http.port}/api/v1{path}"
    with httpx.stream("GET", url, timeout=120) as response, target.open("wb") as out:
        for chunk in response.iter_bytes():
            out.write(chunk)
    return response


def write(datasets: list[Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_study_archive_is_a_valid_file_set(server: RunningServer, tmp_path: Path) -> None:
    spec = StudySpec(patient_name="MÜLLER^JÖRG", series=2, slices=3)
    datasets = make_study(spec)
    for ds in datasets:
        ds.SpecificCharacterSet = "ISO_IR 100"
        # Real-world gaps: no Study ID, an empty Instance Number (invented in the record only).
        del ds.StudyID
    datasets[1].InstanceNumber = None
    write(make_study(StudySpec(patient_id="OTHER", slices=2)), tmp_path / "other")
    write(datasets, tmp_path / "in")
    server.hilum("import", str(tmp_path / "other"), str(tmp_path / "in"))

    response = download(server, f"/studies/{spec.study_uid}/archive", tmp_path / "study.zip")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    assert f'filename="{spec.study_uid}.zip"' in response.headers["content-disposition"]

    out = tmp_path / "unzipped"
    with zipfile.ZipFile(tmp_path / "study.zip") as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        assert names[-1] == "DICOMDIR" and len(names) == 7
        assert all(i.compress_type == zipfile.ZIP_STORED for i in archive.infolist())
        archive.extractall(out)

    stored = stored_by_uid(server)
    dicomdir = dcmread(out / "DICOMDIR")
    assert dicomdir.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.1.3.10"
    records = [r for r in dicomdir.DirectoryRecordSequence if "ReferencedFileID" in r]
    assert len(records) == 6
    referenced = {}
    for record in records:
        file_id = "/".join(record.ReferencedFileID)
        assert record.DirectoryRecordType == "IMAGE" and len(record.ReferencedFileID) == 4
        assert all(len(c) <= 8 and c.isalnum() and c.isupper() for c in record.ReferencedFileID)
        referenced[record.ReferencedSOPInstanceUIDInFile] = file_id
        assert (out / file_id).read_bytes() == stored[record.ReferencedSOPInstanceUIDInFile]
        assert record.ReferencedTransferSyntaxUIDInFile == dcmread(out / file_id).file_meta.TransferSyntaxUID
    assert set(referenced) == {ds.SOPInstanceUID for ds in datasets}

    # pydicom's own File-set reader agrees: one patient, one study, two series.
    file_set = FileSet(dicomdir)
    assert len(file_set) == 6
    assert file_set.find_values("PatientName") == ["MÜLLER^JÖRG"]
    assert file_set.find_values("StudyInstanceUID") == [spec.study_uid]
    assert len(file_set.find_values("SeriesInstanceUID")) == 2
    for instance in file_set:
        assert instance.path.endswith(referenced[instance.SOPInstanceUID])
        assert instance.load().SOPInstanceUID == instance.SOPInstanceUID

    dump = subprocess.run([require_tool("dcmdump"), "-q", str(out / "DICOMDIR")],
                          capture_output=True, text=True, errors="replace")
    assert dump.returncode == 0 and "DirectoryRecordSequence" in dump.stdout
    assert dump.stdout.count('"Directory Record" IMAGE') == 6
    check = subprocess.run([require_tool("dciodvfy"), str(out / "DICOMDIR")],
                           capture_output=True, text=True, errors="replace")
    assert "Error" not in check.stdout + check.stderr, check.stdout + check.stderr


def test_series_archive_and_errors(server: RunningServer, tmp_path: Path) -> None:
    spec = StudySpec(series=2, slices=2)
    datasets = make_study(spec)
    server.hilum("import", *map(str, write(datasets, tmp_path / "in")))
    series_uid = datasets[2].SeriesInstanceUID
    response = download(server, f"/series/{series_uid}/archive", tmp_path / "series.zip")
    assert response.status_code == 200
    with zipfile.ZipFile(tmp_path / "series.zip") as archive:
        archive.extractall(tmp_path / "out")
    file_set = FileSet(dcmread(tmp_path / "out" / "DICOMDIR"))
    assert sorted(i.SOPInstanceUID for i in file_set) == sorted(
        ds.SOPInstanceUID for ds in datasets if ds.SeriesInstanceUID == series_uid)

    base = f"http://127.0.0.1:{server.settings.http.port}/api/v1"
    for path, status in (("/studies/1.2.3/archive", 404), ("/series/1.2.3/archive", 404),
                         ("/studies/x.y/archive", 400), ("/series/1.2.*/archive", 400)):
        response = httpx.get(base + path, timeout=10)
        assert response.status_code == status, path
        assert response.headers["content-type"] == "application/problem+json"


def test_archive_streams_in_bounded_chunks(tmp_path: Path) -> None:
    """Large files go out in 1 MiB pieces: the archive is never held whole."""
    storage = FilesystemStorage(tmp_path / "storage")
    spec = StudySpec(slices=4, size=1024)  # 2 MiB of pixel data per instance
    instances = []
    for ds in make_study(spec):
        key = f"s/{ds.SOPInstanceUID}.dcm"
        (tmp_path / "storage" / "s").mkdir(exist_ok=True)
        ds.save_as(tmp_path / "storage" / key, enforce_file_format=True)
        instances.append(StoredInstance(ds.SOPInstanceUID, ds.SOPClassUID, ds.file_meta.TransferSyntaxUID,
                                        key, 0, spec.study_uid, ds.SeriesInstanceUID))
    # One instance vanishes (deleted while the download runs): left out of zip and DICOMDIR.
    (tmp_path / "storage" / instances[1].storage_key).unlink()
    chunks = list(stream_archive(storage, instances))
    assert max(len(c) for c in chunks) <= CHUNK + 1024
    (tmp_path / "a.zip").write_bytes(b"".join(chunks))
    with zipfile.ZipFile(tmp_path / "a.zip") as archive:
        assert archive.testzip() is None
        archive.extractall(tmp_path / "out")
    file_set = FileSet(dcmread(tmp_path / "out" / "DICOMDIR"))
    assert sorted(i.SOPInstanceUID for i in file_set) == sorted(
        i.sop_instance_uid for n, i in enumerate(instances) if n != 1)
