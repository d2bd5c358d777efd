"""hilum.deid: PS3.15 Annex E Basic Application Level Confidentiality Profile and its options.

The checks walk the generated Table E.1-1 programmatically (inside sequences
too) against pydicom's test files and generated studies, and run dciodvfy on
every output: no error the original did not already have.
"""

from __future__ import annotations

import re
import stat
import subprocess
import tracemalloc
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conftest import require_tool
from factory import StudySpec, make_study
from hilum.deid import (
    BurnedInAnnotationRefused,
    DeidConfig,
    DeidentificationError,
    Deidentifier,
    DeidJob,
    Option,
    deidentify_stream,
    parse_options,
)
from hilum.deid.table_e11 import ROWS

SAMPLES = ["CT_small.dcm", "MR_small.dcm", "test-SR.dcm", "reportsi.dcm", "JPEG2000.dcm",
           "examples_overlay.dcm", "rtplan.dcm", "rtdose.dcm", "waveform_ecg.dcm",
           "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_padded.dcm"]
REPLACING = {"X", "Z", "D", "U", "X/Z", "X/D", "Z/D", "X/Z/D"}


def encode(ds: Dataset) -> bytes:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def run(data: bytes, job: DeidJob) -> tuple[bytes, Dataset]:
    out = BytesIO()
    deidentify_stream(BytesIO(data), out, Deidentifier(job))
    return out.getvalue(), dcmread(BytesIO(out.getvalue()))


def identified_ct(spec: StudySpec | None = None) -> list[Dataset]:
    """A generated study with many identifying attributes, nested ones and private ones."""
    study = make_study(spec or StudySpec(series=2, slices=2))
    frame_of_reference = generate_uid()
    for ds in study:
        ds.FrameOfReferenceUID = frame_of_reference
        ds.InstitutionName = "St. Elsewhere Hospital"
        ds.InstitutionAddress = "1 Main Street, Springfield"
        ds.StationName = "CTSTATION7"
        ds.DeviceSerialNumber = "SN-778899"
        ds.OperatorsName = "TECH^TERRY"
        ds.PerformingPhysicianName = "SURGEON^SAM"
        ds.OtherPatientIDs = "MRN-445566"
        ds.PatientAge = "054Y"
        ds.PatientWeight = 71.5
        ds.PatientAddress = "22 Baker Street"
        ds.AcquisitionDateTime = "20240115101700.250000"
        ds.ContentDate = "20240115"
        ds.SeriesDate = "20240115"
        ds.StudyDescription = "CT CHEST for DOE JANE MRN PAT001"
        ds.ImageComments = "patient DOE said hello"
        ds.InstanceCreatorUID = "1.2.826.0.1.3680043.8.498.1"
        person = Dataset()
        person.PersonIdentificationCodeSequence = Sequence()
        request = Dataset()
        request.RequestedProcedureID = "RP-12345"
        request.ScheduledProcedureStepID = "SPS-67890"
        request.RequestingPhysician = "HOUSE^GREGORY"
        ds.RequestAttributesSequence = Sequence([request])
        block = ds.private_block(0x0011, "ACME HOSPITAL", create=True)
        block.add_new(0x01, "LO", "PAT001 DOE^JANE")
        block.add_new(0x02, "DS", "1.5")
    # Later instances reference the first one, as a GSPS or a derived image would.
    first = study[0]
    for ds in study[1:]:
        ref = Dataset()
        ref.ReferencedSOPClassUID = first.SOPClassUID
        ref.ReferencedSOPInstanceUID = first.SOPInstanceUID
        ds.ReferencedImageSequence = Sequence([ref])
        source = Dataset()
        source.ReferencedSOPClassUID = first.SOPClassUID
        source.ReferencedSOPInstanceUID = first.SOPInstanceUID
        ds.SourceImageSequence = Sequence([source])
    return study


def sample(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None, name
    return Path(path).read_bytes()


def table_actions(options: frozenset[Option]) -> dict[int, str]:
    return Deidentifier(DeidJob.create(DeidConfig(options=options))).actions


def violations(original: Dataset, output: Dataset, actions: dict[int, str], path: str = ""
               ) -> Iterator[str]:
    """Every Table E.1-1 attribute whose action replaces it but whose original value is still there."""
    for elem in original:
        tag = int(elem.tag)
        where = f"{path}/{elem.keyword or elem.tag}"
        if elem.tag.is_private:
            if elem.tag in output:
                yield f"{where}: private element kept"
            continue
        action = actions.get(tag)
        got = output.get(elem.tag)
        if elem.VR == "SQ":
            if got is not None and got.VR == "SQ" and len(got.value) == len(elem.value):
                for i, (a, b) in enumerate(zip(elem.value, got.value, strict=True)):
                    yield from violations(a, b, actions, f"{where}[{i}]")
            continue
        if action not in REPLACING or got is None or elem.value in (None, "", b""):
            continue
        if action == "X":
            yield f"{where}: X but present"
        elif str(got.value) == str(elem.value) and elem.tag not in (0x00100010, 0x00100020):
            yield f"{where}: {action} but kept {elem.value!r}"


def dciodvfy_errors(data: bytes, folder: Path, name: str) -> set[str]:
    path = folder / name
    path.write_bytes(data)
    result = subprocess.run([require_tool("dciodvfy"), "-new", str(path)],
                            capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    # Values differ (replaced UIDs); the finding and its place must not.
    return {re.sub(r"= <[^>]*>", "= <>", line.strip()) for line in lines if line.startswith("Error")}


def test_table_is_the_standard_with_its_option_columns() -> None:
    assert len(ROWS) > 600
    assert ROWS["00100010"][0] == "Z"  # Patient's Name
    assert ROWS["0020000d"] == ("U", {Option.UIDS.value: "K"})  # Study Instance UID
    assert ROWS["00080020"][1] == {Option.FULL_DATES.value: "K", Option.MODIFIED_DATES.value: "C"}
    assert ROWS["00080080"][1] == {Option.INSTITUTION.value: "K"}  # Institution Name
    assert ROWS["00181000"][1] == {Option.DEVICE.value: "K"}  # Device Serial Number
    assert ROWS["00101010"][1] == {Option.PATIENT_CHARS.value: "K"}  # Patient's Age
    assert ROWS["0040a730"] == ("D", {Option.STRUCTURED.value: "C"})  # Content Sequence
    assert ROWS["private"] == ("X", {Option.SAFE_PRIVATE.value: "C"})
    codes = {"X", "Z", "D", "U", "K", "C", "X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"}
    for key, (basic, by_option) in ROWS.items():
        assert basic in codes, key
        assert set(by_option.values()) <= {"K", "C"}, key
        assert set(by_option) <= {o.value for o in Option}, key


_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UT"})


@pytest.mark.parametrize("name", SAMPLES)
def test_no_annex_e_attribute_keeps_its_value(name: str) -> None:
    data = sample(name)
    _, got = run(data, DeidJob.create())
    original = dcmread(BytesIO(data))
    actions = table_actions(frozenset())
    assert list(violations(original, original, actions))  # the check does see identifying data
    assert list(violations(original, got, actions)) == []
    assert got.PatientIdentityRemoved == "YES"
    assert got.LongitudinalTemporalInformationModified == "REMOVED"
    assert [i.CodeValue for i in got.DeidentificationMethodCodeSequence] == ["113100"]
    assert got.PatientID == got.PatientName and str(got.PatientID).startswith("ANON-")
    assert not [e for e in got.iterall() if e.tag.is_private]
    assert not [e for e in got if (e.tag.group >> 8) in (0x50, 0x60)]  # curves, overlays
    assert got.file_meta.MediaStorageSOPInstanceUID == got.SOPInstanceUID != original.SOPInstanceUID
    # Pixel data is copied as it was, native or encapsulated.
    assert got.get("PixelData") == original.get("PixelData")
    assert "DataSetTrailingPadding" not in got
    # No identifying string of the original is left in any text attribute, at any depth.
    # (Not a search of the raw bytes: new random UIDs and waveform or pixel samples can
    # contain a short value such as "2721" by chance.)
    texts = [str(e.value) for e in got.iterall() if e.VR in _TEXT_VRS and e.value not in (None, "")]
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber",
                    "ReferringPhysicianName", "OperatorsName", "PerformingPhysicianName"):
        value = str(original.get(keyword, "") or "").strip()
        if len(value) >= 4:
            assert not [t for t in texts if value in t], (keyword, value)


@pytest.mark.parametrize("name", [n for n in SAMPLES if "bigendian" not in n])
def test_output_passes_dciodvfy_as_well_as_the_original(name: str, tmp_path: Path) -> None:
    data = sample(name)
    out, _ = run(data, DeidJob.create(DeidConfig(date_shift_days=-40)))
    before = dciodvfy_errors(data, tmp_path, "original.dcm")
    after = dciodvfy_errors(out, tmp_path, "deidentified.dcm")
    assert after - before == set()


def test_generated_study_passes_dciodvfy_with_every_option(tmp_path: Path) -> None:
    every = frozenset(Option) - {Option.FULL_DATES}
    for options in (frozenset(), every):
        job = DeidJob.create(DeidConfig(options=options))
        for ds in identified_ct(StudySpec(series=1, slices=2)):
            data = encode(ds)
            out, _ = run(data, job)
            before = dciodvfy_errors(data, tmp_path, "original.dcm")
            assert dciodvfy_errors(out, tmp_path, "deidentified.dcm") - before == set()


def test_generated_study_walk_including_sequences_and_private() -> None:
    study = identified_ct()
    job = DeidJob.create()
    for ds in study:
        _, got = run(encode(ds), job)
        assert list(violations(ds, got, table_actions(frozenset()))) == []
        assert "RequestAttributesSequence" not in got  # X (kept only with Clean Descriptors)
        assert "InstitutionName" not in got or got.InstitutionName != ds.InstitutionName


def test_uids_are_remapped_consistently_across_a_study() -> None:
    study = identified_ct(StudySpec(series=2, slices=3))
    job = DeidJob.create()
    outputs = [run(encode(ds), job)[1] for ds in study]
    assert len({o.StudyInstanceUID for o in outputs}) == 1
    assert outputs[0].StudyInstanceUID != study[0].StudyInstanceUID
    assert str(outputs[0].StudyInstanceUID).startswith("2.25.")
    assert len({o.FrameOfReferenceUID for o in outputs}) == 1
    assert len({o.SeriesInstanceUID for o in outputs}) == 2
    assert len({o.SOPInstanceUID for o in outputs}) == len(study)
    for ds, out in zip(study, outputs, strict=True):
        assert out.SeriesInstanceUID == job.map_uid(ds.SeriesInstanceUID)
        assert out.SOPClassUID == ds.SOPClassUID  # not an identifier
    first = outputs[0].SOPInstanceUID
    for out in outputs[1:]:
        assert out.ReferencedImageSequence[0].ReferencedSOPInstanceUID == first
        assert out.SourceImageSequence[0].ReferencedSOPInstanceUID == first
    # Another job (another secret) gives other UIDs; the same secret gives the same.
    assert DeidJob.create().map_uid(study[0].StudyInstanceUID) != outputs[0].StudyInstanceUID
    again = DeidJob.create(DeidConfig(secret=job.secret))
    assert again.map_uid(study[0].StudyInstanceUID) == outputs[0].StudyInstanceUID


def test_modified_dates_shift_every_date_by_the_job_offset() -> None:
    job = DeidJob.create(DeidConfig(date_shift_days=-10))
    assert Option.MODIFIED_DATES in job.options
    for ds in identified_ct():
        _, got = run(encode(ds), job)
        assert got.StudyDate == "20240105"
        assert got.SeriesDate == "20240105"
        assert got.ContentDate == "20240105"
        assert got.AcquisitionDateTime == "20240105101700.250000"
        assert got.StudyTime == ds.StudyTime  # whole days: the time of day stays
        assert got.PatientBirthDate == ""  # not longitudinal: Z in every column
        assert got.LongitudinalTemporalInformationModified == "MODIFIED"
        assert "113107" in [i.CodeValue for i in got.DeidentificationMethodCodeSequence]
    random_job = DeidJob.create(DeidConfig(options=frozenset({Option.MODIFIED_DATES})))
    assert random_job.date_shift_days is not None and -3650 <= random_job.date_shift_days <= -365


def test_full_dates_keep_dates_and_basic_profile_removes_them() -> None:
    ds = identified_ct()[0]
    _, full = run(encode(ds), DeidJob.create(DeidConfig(options=frozenset({Option.FULL_DATES}))))
    assert (full.StudyDate, full.StudyTime) == (ds.StudyDate, ds.StudyTime)
    assert full.LongitudinalTemporalInformationModified == "UNMODIFIED"
    _, basic = run(encode(ds), DeidJob.create())
    assert basic.StudyDate == "" and basic.StudyTime == ""
    assert basic.get("AcquisitionDateTime") != ds.AcquisitionDateTime
    with pytest.raises(ValueError, match="exclude each other"):
        parse_options(["retain-full-dates,retain-modified-dates"])
    with pytest.raises(DeidentificationError):
        DeidJob.create(DeidConfig(options=frozenset({Option.FULL_DATES}), date_shift_days=3))


def test_retain_options_keep_what_they_name_only() -> None:
    ds = identified_ct()[0]
    options = frozenset({Option.PATIENT_CHARS, Option.DEVICE, Option.INSTITUTION, Option.UIDS})
    _, got = run(encode(ds), DeidJob.create(DeidConfig(options=options)))
    assert (got.PatientSex, got.PatientAge, got.PatientWeight) == ("F", "054Y", 71.5)
    assert (got.StationName, got.DeviceSerialNumber) == ("CTSTATION7", "SN-778899")
    assert got.InstitutionName == "St. Elsewhere Hospital"
    assert (got.StudyInstanceUID, got.SOPInstanceUID) == (ds.StudyInstanceUID, ds.SOPInstanceUID)
    assert got.get("OperatorsName") != ds.OperatorsName  # no option retains people
    assert "OtherPatientIDs" not in got and got.PatientBirthDate == ""
    codes = [i.CodeValue for i in got.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113108", "113109", "113110", "113112"]
    _, basic = run(encode(ds), DeidJob.create())
    assert "PatientAge" not in basic and basic.get("StationName") != "CTSTATION7"


def test_clean_descriptors_keeps_descriptions_without_identifiers() -> None:
    ds = identified_ct()[0]
    job = DeidJob.create(DeidConfig(options=frozenset({Option.DESCRIPTORS})))
    _, got = run(encode(ds), job)
    assert got.StudyDescription.startswith("CT CHEST for")
    for needle in ("DOE", "JANE", "PAT001"):
        assert needle not in got.StudyDescription
        assert needle not in got.ImageComments
    assert got.SeriesDescription == ds.SeriesDescription
    _, basic = run(encode(ds), DeidJob.create())
    assert "StudyDescription" not in basic and "ImageComments" not in basic


def test_structured_content_text_is_dummied_or_cleaned() -> None:
    data = sample("test-SR.dcm")
    original = dcmread(BytesIO(data))
    texts = [e.value for e in original.iterall() if e.keyword == "TextValue"]
    assert texts
    _, basic = run(data, DeidJob.create())
    assert {e.value for e in basic.iterall() if e.keyword == "TextValue"} == {"ANONYMIZED"}
    structured = DeidJob.create(DeidConfig(options=frozenset({Option.STRUCTURED})))
    _, cleaned = run(data, structured)
    assert [e.value for e in cleaned.iterall() if e.keyword == "TextValue"] == texts
    assert all(e.value == "ANONYMIZED" for e in cleaned.iterall() if e.keyword == "PersonName")


def test_safe_private_option_keeps_only_listed_private_elements() -> None:
    ds = identified_ct()[0]
    safe = frozenset({("ACME HOSPITAL", 0x0011, 0x02)})
    config = DeidConfig(options=frozenset({Option.SAFE_PRIVATE}), safe_private=safe)
    _, got = run(encode(ds), DeidJob.create(config))
    block = got.private_block(0x0011, "ACME HOSPITAL")
    assert block[0x02].value == "1.5"
    assert 0x01 not in block  # identifying, not listed as safe
    _, none_listed = run(encode(ds), DeidJob.create(DeidConfig(options=config.options)))
    assert not [e for e in none_listed if e.tag.is_private]


def test_burned_in_annotation_is_refused_unless_allowed() -> None:
    ds = identified_ct()[0]
    ds.BurnedInAnnotation = "YES"
    out = BytesIO()
    with pytest.raises(BurnedInAnnotationRefused):
        deidentify_stream(BytesIO(encode(ds)), out, Deidentifier(DeidJob.create()))
    assert out.getvalue() == b""  # nothing written
    allowed = DeidJob.create(DeidConfig(allow_burned_in=True))
    result = deidentify_stream(BytesIO(encode(ds)), BytesIO(), Deidentifier(allowed))
    assert result.burned_in


def test_pseudonyms_are_consistent_per_patient_and_configurable() -> None:
    a = identified_ct(StudySpec(patient_id="P1", patient_name="ONE^ANN", slices=2))
    b = identified_ct(StudySpec(patient_id="P2", patient_name="TWO^BOB", slices=1))
    job = DeidJob.create(DeidConfig(pseudonym="SUBJ-{n:03d}"))
    names = [str(run(encode(ds), job)[1].PatientName) for ds in [*a, *b]]
    assert names == ["SUBJ-001", "SUBJ-001", "SUBJ-002"]
    fixed = DeidJob.create(DeidConfig(pseudonym="CASE7"))
    assert run(encode(a[0]), fixed)[1].PatientID == "CASE7"
    with pytest.raises(DeidentificationError, match="same name to two patients"):
        run(encode(b[0]), fixed)
    with pytest.raises(DeidentificationError, match="invalid --pseudonym"):
        DeidJob.create(DeidConfig(pseudonym="{name}"))


def test_mapping_csv_lists_every_replacement_and_is_private(tmp_path: Path) -> None:
    job = DeidJob.create(DeidConfig(date_shift_days=5))
    study = identified_ct()
    for ds in study:
        run(encode(ds), job)
    path = tmp_path / "mapping.csv"
    rows = job.write_mapping(path)
    text = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f"PatientID,PAT001,{job.patients['PAT001']}" in text
    assert "DateShiftDays,,5" in text
    assert f"UID,{study[0].StudyInstanceUID},{job.map_uid(study[0].StudyInstanceUID)}" in text
    assert rows == len(text.splitlines()) - 1


def test_pixel_data_is_streamed_not_loaded(tmp_path: Path) -> None:
    spec = StudySpec(slices=1, size=64)
    ds = make_study(spec)[0]
    ds.Rows = ds.Columns = 4096  # 32 MiB of pixel data
    ds.PixelData = np.zeros((4096, 4096), dtype=np.int16).tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    source = tmp_path / "big.dcm"
    ds.save_as(source, enforce_file_format=True)
    del ds
    target = tmp_path / "out.dcm"
    tracemalloc.start()
    try:
        with source.open("rb") as src, target.open("wb") as dst:
            deidentify_stream(src, dst, Deidentifier(DeidJob.create()))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak  # the 32 MiB never sit in memory at once
    got = dcmread(target, stop_before_pixels=True)
    assert got.PatientIdentityRemoved == "YES"
    assert target.stat().st_size > 32 << 20


def test_unreadable_input_is_a_clear_error() -> None:
    with pytest.raises(DeidentificationError, match="not a readable DICOM file"):
        deidentify_stream(BytesIO(b"not dicom at all"), BytesIO(), Deidentifier(DeidJob.create()))
