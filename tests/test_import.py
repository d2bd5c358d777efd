"""``hilum import``: folder trees, zip files and DICOMDIR media, through the one ingest path."""

from __future__ import annotations

import hashlib
import re
import zipfile
from pathlib import Path

from pydicom import dcmread
from pydicom.fileset import FileSet
from pydicom.uid import MediaStorageDirectoryStorage
from sqlalchemy import func, select

from conftest import run_hilum
from factory import StudySpec, make_study, write_study
from hilum.app import Services
from hilum.index.models import Instance, Patient, Series, Study

SUMMARY = re.compile(r"accepted (\d+), already stored (\d+), rejected (\d+)")


def summary(stdout: str) -> tuple[int, int, int]:
    match = SUMMARY.search(stdout)
    assert match, stdout
    return int(match[1]), int(match[2]), int(match[3])


def import_(services: Services, *paths: Path, check: bool = True) -> str:
    result = run_hilum(services.settings, "import", *map(str, paths), check=check)
    return result.stdout


def rows(services: Services) -> dict[str, int]:
    with services.engine.connect() as conn:
        return {
            model.__tablename__: conn.execute(select(func.count()).select_from(model)).scalar_one()
            for model in (Patient, Study, Series, Instance)
        }


def stored_uids(services: Services) -> set[str]:
    with services.engine.connect() as conn:
        return set(conn.execute(select(Instance.sop_instance_uid)).scalars())


def fingerprint(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under root: content hash and mtime, to prove the originals are untouched."""
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def uid_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_import_folder_tree_with_rejects_then_rerun(services: Services, tmp_path: Path) -> None:
    src = tmp_path / "incoming"
    good = [
        *write_study(StudySpec(patient_id="P1", slices=3, size=16), src / "a"),
        *write_study(StudySpec(patient_id="P2", series=2, slices=2, size=16), src / "b" / "deep"),
    ]
    # A text file, a truncated DICOM file and a file without StudyInstanceUID.
    text = src / "README.txt"
    text.write_text("not a DICOM file\n")
    truncated = src / "b" / "truncated.dcm"
    blob = good[0].read_bytes()
    truncated.write_bytes(blob[: len(blob) - 200])
    no_study = src / "no-study-uid.dcm"
    ds = make_study(StudySpec(patient_id="P3", slices=1, size=16))[0]
    del ds.StudyInstanceUID
    ds.save_as(no_study, enforce_file_format=True)
    before = fingerprint(src)

    out = import_(services, src)
    assert summary(out) == (len(good), 0, 3), out
    rejected = {line for line in out.splitlines() if line.strip().startswith("rejected ")}
    assert len(rejected) == 3, out

    def reason_for(path: Path) -> str:
        (line,) = [line for line in rejected if str(path) in line]
        return line.split(f"{path}:", 1)[1]

    assert "not a DICOM file" in reason_for(text)
    assert "truncated" in reason_for(truncated)
    assert "StudyInstanceUID" in reason_for(no_study)
    assert stored_uids(services) == {uid_of(p) for p in good}
    assert rows(services) == {"patients": 2, "studies": 2, "series": 3, "instances": 7}
    assert fingerprint(src) == before  # nothing moved, changed or deleted
    # Nothing is left in staging; every stored file is a committed instance.
    assert list(services.storage.staging_dir().iterdir()) == []
    assert len(list(services.storage.keys())) == len(good)

    # Again: all known files are skipped; no new rows or files.
    out = import_(services, src / "a", src / "b" / "deep")
    assert summary(out) == (0, len(good), 0), out
    assert rows(services) == {"patients": 2, "studies": 2, "series": 3, "instances": 7}
    assert len(list(services.storage.keys())) == len(good)
    assert fingerprint(src) == before


def test_import_zip(services: Services, tmp_path: Path) -> None:
    tmp_path = tmp_path / "media"  # (the data dir is tmp_path / "data")
    files = write_study(StudySpec(patient_id="ZIP1", series=2, slices=2, size=16), tmp_path / "z")
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i, path in enumerate(files):
            zf.write(path, f"nested/dir{i % 2}/{path.name}")
        zf.writestr("nested/notes.txt", "hello")
    before = fingerprint(tmp_path)

    out = import_(services, archive)
    assert summary(out) == (len(files), 0, 1), out
    assert "notes.txt" in out
    assert stored_uids(services) == {uid_of(p) for p in files}
    assert fingerprint(tmp_path) == before
    # A second run: all already stored.
    out = import_(services, archive)
    assert summary(out) == (0, len(files), 1), out
    assert rows(services)["instances"] == len(files)


def make_fileset(source: list[Path], folder: Path) -> Path:
    fs = FileSet()
    for path in source:
        fs.add(path)
    fs.write(folder)
    return folder / "DICOMDIR"


def test_import_dicomdir_media(services: Services, tmp_path: Path) -> None:
    tmp_path = tmp_path / "media"  # (the data dir is tmp_path / "data")
    first = write_study(
        StudySpec(patient_id="MEDIA1", series=2, slices=2, size=16), tmp_path / "s1"
    )
    second = write_study(StudySpec(patient_id="MEDIA2", slices=3, size=16), tmp_path / "s2")
    dicomdir_a = make_fileset(first, tmp_path / "cd-a")
    dicomdir_b = make_fileset(second, tmp_path / "cd-b")
    # A file on the medium that the DICOMDIR does not reference: not imported via the DICOMDIR.
    stray = make_study(StudySpec(patient_id="STRAY", slices=1, size=16))[0]
    stray.save_as(tmp_path / "cd-b" / "STRAY.dcm", enforce_file_format=True)
    before = fingerprint(tmp_path)

    # The medium's folder: read through its DICOMDIR; the DICOMDIR itself is no instance.
    out = import_(services, dicomdir_a.parent)
    assert summary(out) == (len(first), 0, 0), out
    assert "DICOMDIR" not in out
    # The DICOMDIR file given directly: exactly the files it references.
    out = import_(services, dicomdir_b)
    assert summary(out) == (len(second), 0, 0), out

    assert stored_uids(services) == {uid_of(p) for p in first + second}
    with services.engine.connect() as conn:
        classes = set(conn.execute(select(Instance.sop_class_uid)).scalars())
    assert MediaStorageDirectoryStorage not in classes
    assert fingerprint(tmp_path) == before

    # The whole medium again: everything referenced is already stored; the stray file is new.
    out = import_(services, dicomdir_b.parent)
    assert summary(out) == (1, len(second), 0), out
    assert stray.SOPInstanceUID in stored_uids(services)


def test_import_missing_path_and_only_rejects_fail(services: Services, tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.txt").write_text("x")
    result = run_hilum(
        services.settings, "import", str(junk), str(tmp_path / "does-not-exist"), check=False
    )
    assert result.returncode != 0
    assert summary(result.stdout) == (0, 0, 2), result.stdout
    assert "does-not-exist" in result.stdout
    assert rows(services)["instances"] == 0
