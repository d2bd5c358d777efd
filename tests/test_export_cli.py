"""`hilum export`: a data dir filled by `hilum import`, exported as stored or de-identified."""

from __future__ import annotations

import csv
import shutil
import stat
import zipfile
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file

from conftest import RunningServer, run_hilum
from factory import StudySpec, write_study
from hilum.config import Settings


def imported(settings: Settings, tmp_path: Path) -> tuple[StudySpec, StudySpec, Path]:
    """Two patients' studies plus pydicom's CT_small, imported with `hilum import`."""
    a = StudySpec(patient_id="PAT-A", patient_name="ALPHA^ANN", series=2, slices=2)
    b = StudySpec(patient_id="PAT-B", patient_name="BETA^BOB", slices=1)
    source = tmp_path / "source"
    write_study(a, source / "a")
    write_study(b, source / "b")
    ct = get_testdata_file("CT_small.dcm")
    assert ct is not None
    shutil.copy(ct, source / "ct.dcm")
    result = run_hilum(settings, "import", str(source))
    assert "accepted 6" in result.stdout, result.stdout
    return a, b, source


def test_export_deidentified_zip_with_mapping(server: RunningServer, tmp_path: Path) -> None:
    a, b, _ = imported(server.settings, tmp_path)
    out, mapping = tmp_path / "research.zip", tmp_path / "mapping.csv"
    result = server.hilum(
        "export", "--study", a.study_uid, "--study", b.study_uid, "--out", str(out),
        "--deidentify", "--profile-option", "retain-patient-characteristics",
        "--date-shift-days", "-30", "--pseudonym", "SUBJ-{n}", "--mapping", str(mapping),
    )
    assert "exported 5 instance(s) of 2 study(ies)" in result.stdout, result.stdout
    assert "retain-modified-dates" in result.stdout and "keep it confidential" in result.stdout
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        datasets = [dcmread(BytesIO(zf.read(n))) for n in names]
    assert len(names) == 5
    by_patient: dict[str, list] = {}
    for name, ds in zip(names, datasets, strict=True):
        assert name == f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.StudyDate == "20231216"  # 2024-01-15 - 30 days
        assert ds.PatientSex == "F"  # retained characteristic
        assert "AccessionNumber" not in ds or ds.AccessionNumber == ""
        by_patient.setdefault(str(ds.PatientID), []).append(ds)
    assert sorted(by_patient) == ["SUBJ-1", "SUBJ-2"]
    assert {len(v) for v in by_patient.values()} == {4, 1}
    for group in by_patient.values():
        assert len({ds.StudyInstanceUID for ds in group}) == 1
        assert group[0].StudyInstanceUID not in (a.study_uid, b.study_uid)
    rows = list(csv.reader(mapping.open()))
    assert rows[0] == ["kind", "original", "replacement"]
    assert ["PatientID", "PAT-A", "SUBJ-1"] in rows and ["DateShiftDays", "", "-30"] in rows
    study_a = next(r[2] for r in rows if r[:2] == ["UID", a.study_uid])
    assert study_a in {str(ds.StudyInstanceUID) for ds in by_patient["SUBJ-1"]}
    assert stat.S_IMODE(mapping.stat().st_mode) == 0o600


def test_export_as_stored_to_folder_by_patient(settings: Settings, tmp_path: Path) -> None:
    a, _, source = imported(settings, tmp_path)
    out = tmp_path / "copy"
    result = run_hilum(settings, "export", "--patient-id", "PAT-A", "--out", str(out))
    assert "exported 4 instance(s) of 1 study(ies)" in result.stdout and "as stored" in result.stdout
    files = sorted(out.rglob("*.dcm"))
    assert len(files) == 4
    originals = {dcmread(p).SOPInstanceUID: p for p in (source / "a").glob("*.dcm")}
    for path in files:
        ds = dcmread(path)
        assert path.relative_to(out).parts[:2] == (a.study_uid, ds.SeriesInstanceUID)
        assert ds.PatientName == "ALPHA^ANN"
        original = dcmread(originals[ds.SOPInstanceUID])
        assert ds.PixelData == original.PixelData
    assert not [p for p in out.rglob("*") if p.name.startswith(".hilum-export")]


def test_export_refuses_burned_in_and_reports_errors_in_one_line(
    settings: Settings, tmp_path: Path
) -> None:
    spec = StudySpec(patient_id="PAT-C", slices=2)
    paths = write_study(spec, tmp_path / "src")
    ds = dcmread(paths[0])
    ds.BurnedInAnnotation = "YES"
    ds.save_as(paths[0])
    run_hilum(settings, "import", str(tmp_path / "src"))
    out = tmp_path / "out"
    result = run_hilum(settings, "export", "--study", spec.study_uid, "--out", str(out), "--deidentify")
    assert "exported 1 instance(s)" in result.stdout
    assert f"refused {ds.SOPInstanceUID}: BurnedInAnnotation is YES" in result.stdout
    assert len(list(out.rglob("*.dcm"))) == 1
    allowed = run_hilum(settings, "export", "--study", spec.study_uid, "--out", str(tmp_path / "all"),
                        "--deidentify", "--allow-burned-in")
    assert "exported 2 instance(s)" in allowed.stdout and "burned-in annotation" in allowed.stdout

    def error(*args: str) -> str:
        failed = run_hilum(settings, "export", *args, check=False)
        assert failed.returncode != 0
        lines = failed.stderr.strip().splitlines()
        assert len(lines) == 1, failed.stderr
        return lines[0]

    assert "no stored study 1.2.3.4" in error("--study", "1.2.3.4", "--out", str(tmp_path / "x"))
    assert "needs --deidentify" in error("--study", spec.study_uid, "--out", str(tmp_path / "y"),
                                         "--pseudonym", "P")
    assert "not an empty folder" in error("--study", spec.study_uid, "--out", str(out))
    assert "unknown profile option" in error("--study", spec.study_uid, "--out", str(tmp_path / "z"),
                                             "--deidentify", "--profile-option", "retain-all")
    assert "exclude each other" in error(
        "--study", spec.study_uid, "--out", str(tmp_path / "w"), "--deidentify",
        "--profile-option", "retain-full-dates", "--profile-option", "retain-modified-dates",
    )
    assert "say what to export" in error("--out", str(tmp_path / "v"))
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
