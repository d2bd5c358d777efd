"""PS3.4 C.2.2.2 attribute matching through the shared query model.

One small archive per index backend (module scope: ingest once, one server
start) is queried two ways: with :func:`hilum.index.search.search` directly,
for breadth, and with C-FIND over the wire (pynetdicom and DCMTK findscu)
where the DIMSE encoding matters: statuses, return keys, character sets.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import BasicTextSRStorage
from pynetdicom import AE
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from conftest import (
    BACKENDS,
    RunningServer,
    backend_url,
    free_port,
    require_tool,
    start_server,
    stop_server,
)
from factory import StudySpec, make_study
from hilum.app import Services, build_services, prepare
from hilum.config import load_settings
from hilum.dimse.handlers import DimseHandlers
from hilum.domain.attributes import Level
from hilum.domain.errors import InvalidQuery
from hilum.domain.query import MatchKind, Query, constraint_for, parse_constraint
from hilum.index.search import search

# The corpus. Labels are used in assertions; each study is one StudySpec.
SPECS: dict[str, StudySpec] = {
    "doe1": StudySpec(
        patient_id="PAT001", patient_name="DOE^JANE", study_date="20240115",
        study_time="101500", accession="ACC001", modality="CT", series=1, slices=3,
        referring="HOUSE^GREGORY", size=8,
    ),
    "doe2": StudySpec(
        patient_id="PAT001", patient_name="DOE^JANE", study_date="20240201",
        study_time="0930", accession="ACC%01", modality="CT", series=1, slices=2,
        description="CT ABDOMEN", size=8,
    ),
    "mueller": StudySpec(
        patient_id="PAT002", patient_name="Müller^Jürgen", sex="M", study_date="20240131",
        study_time="115959.999", accession="ACC-002", modality="MR", series=2, slices=2,
        referring="Wilson^James", description="MR KNIE", size=8,
    ),
    "yamada": StudySpec(
        patient_id="PAT003", patient_name="Yamada^Tarou=山田^太郎=やまだ^たろう", sex="M",
        study_date="20231231", study_time="120000", accession="ACC003", modality="CT",
        series=2, slices=2, size=8,
    ),
    "obrien": StudySpec(
        patient_id="PAT_1", patient_name="O'BRIEN^PAT", study_date="20240115",
        study_time="100000", accession="acc001", modality="US", series=1, slices=1, size=8,
    ),
    "smith": StudySpec(
        patient_id="PATX1", patient_name="SMITH^JOHN", study_date="20240116",
        study_time="095959", accession="ACCX01", modality="CT", series=1, slices=1, size=8,
    ),
}
TOTAL_INSTANCES = sum(s.series * s.slices for s in SPECS.values())


@dataclass
class Archive:
    services: Services
    server: RunningServer
    # label -> StudyInstanceUID; StudyInstanceUID -> label
    study_uid: dict[str, str]
    label: dict[str, str]
    # label -> SeriesInstanceUIDs in series-number order
    series: dict[str, list[str]]
    sop_uids: dict[str, list[str]]


def corpus_files(folder: Path) -> dict[str, list[Path]]:
    """Write the corpus; the 'yamada' study's second series is an SR document."""
    out: dict[str, list[Path]] = {}
    for label, spec in SPECS.items():
        paths = []
        for ds in make_study(spec):
            ds.SpecificCharacterSet = "ISO_IR 192"
            if label == "yamada" and ds.SeriesNumber == 1:
                ds.OperatorsName = "Tanaka^Hanako"
            if label == "yamada" and ds.SeriesNumber == 2:
                ds.Modality = "SR"
                ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
                for keyword in ("PixelData", "Rows", "Columns", "BitsAllocated"):
                    delattr(ds, keyword)
            path = folder / label / f"{ds.SOPInstanceUID}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        out[label] = paths
    return out


@pytest.fixture(scope="module", params=BACKENDS)
def archive(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Archive]:
    tmp = tmp_path_factory.mktemp(f"query-{request.param}")
    with backend_url(request.param) as url:
        settings = load_settings(
            None,
            data_dir=tmp / "data",
            database_url=url,
            dicom={"ae_title": "HILUM", "port": free_port(), "host": "127.0.0.1", "workers": 1},
            http={"port": free_port()},
        )
        prepare(settings)
        services = build_services(settings)
        try:
            files = corpus_files(tmp / "in")
            series: dict[str, list[str]] = {}
            sops: dict[str, list[str]] = {}
            for label, paths in files.items():
                for path in paths:
                    result = services.ingest.ingest_file(path, source="test")
                    assert result.ok, result
                    ds = dcmread(path, stop_before_pixels=True)
                    if ds.SeriesInstanceUID not in series.setdefault(label, []):
                        series[label].append(ds.SeriesInstanceUID)
                    sops.setdefault(label, []).append(ds.SOPInstanceUID)
            server = start_server(settings, tmp)
            try:
                uids = {label: spec.study_uid for label, spec in SPECS.items()}
                yield Archive(
                    services, server, uids, {v: k for k, v in uids.items()}, series, sops
                )
            finally:
                stop_server(server)
        finally:
            services.close()


# -- helpers ------------------------------------------------------------------------
def run(archive: Archive, level: str, **keys: str) -> list[dict[str, Any]]:
    query = Query(level=Level(level), constraints=[constraint_for(k, v) for k, v in keys.items()])
    with archive.services.engine.connect() as conn:
        return [hit.values for hit in search(conn, query)]


def studies(archive: Archive, **keys: str) -> set[str]:
    return {archive.label[v["StudyInstanceUID"]] for v in run(archive, "STUDY", **keys)}


def identifier(level: str, **keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def c_find(
    archive: Archive, ds: Dataset, model: Any = StudyRootQueryRetrieveInformationModelFind
) -> tuple[list[Dataset], Dataset]:
    ae = AE(ae_title="QMSCU")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", archive.server.port, ae_title=archive.server.ae_title)
    assert assoc.is_established
    pending: list[Dataset] = []
    final: Dataset | None = None
    try:
        for status, found in assoc.send_c_find(ds, model):
            assert status, "no C-FIND response (timeout or abort)"
            if status.Status in (0xFF00, 0xFF01):
                pending.append(found)
            else:
                final = status
    finally:
        assoc.release()
    assert final is not None
    return pending, final


# -- single value, universal, case ------------------------------------------------
def test_single_value_matching(archive: Archive) -> None:
    assert studies(archive, PatientID="PAT001") == {"doe1", "doe2"}
    assert studies(archive, AccessionNumber="ACC-002") == {"mueller"}
    assert studies(archive, StudyDate="20240115") == {"doe1", "obrien"}
    assert studies(archive, StudyInstanceUID=archive.study_uid["smith"]) == {"smith"}
    # Non-PN values are case-sensitive (C.2.2.2.1).
    assert studies(archive, AccessionNumber="acc001") == {"obrien"}
    assert studies(archive, AccessionNumber="ACC001") == {"doe1"}
    # Several keys: AND.
    assert studies(archive, PatientID="PAT001", StudyDate="20240201") == {"doe2"}
    assert studies(archive, PatientID="PAT001", StudyDate="20240131") == set()


def test_person_name_matching_is_case_insensitive(archive: Archive) -> None:
    assert studies(archive, PatientName="doe^jane") == {"doe1", "doe2"}
    assert studies(archive, PatientName="DOE^JANE^^^") == {"doe1", "doe2"}
    assert studies(archive, PatientName="müller^jürgen") == {"mueller"}
    assert studies(archive, PatientName="MÜLLER^JÜRGEN") == {"mueller"}
    assert studies(archive, ReferringPhysicianName="house^gregory") == set(SPECS) - {"mueller"}
    assert studies(archive, ReferringPhysicianName="wilson^*") == {"mueller"}


def test_person_name_without_key_column_is_case_insensitive(archive: Archive) -> None:
    """Every PN attribute, not only those with a folded key column, matches case-insensitively."""
    ct_series = archive.series["yamada"][0]
    for value in ("Tanaka^Hanako", "TANAKA^HANAKO", "tanaka^hanako", "tanaka*", "T?NAKA^*"):
        hits = run(archive, "SERIES", OperatorsName=value)
        assert [h["SeriesInstanceUID"] for h in hits] == [ct_series], value
    assert run(archive, "SERIES", OperatorsName="tanaka^h") == []


def test_universal_matching(archive: Archive) -> None:
    everything = set(SPECS)
    assert studies(archive) == everything
    assert studies(archive, PatientName="") == everything
    assert studies(archive, PatientName="*") == everything
    assert studies(archive, StudyDate="") == everything
    assert parse_constraint("PatientName", "PN", "").kind is MatchKind.UNIVERSAL
    assert parse_constraint("AccessionNumber", "SH", "*").kind is MatchKind.UNIVERSAL


# -- wildcards ---------------------------------------------------------------------
def test_wildcard_matching(archive: Archive) -> None:
    assert studies(archive, PatientName="DOE*") == {"doe1", "doe2"}
    assert studies(archive, PatientName="do?^ja*") == {"doe1", "doe2"}
    assert studies(archive, PatientName="*^J*") == {"doe1", "doe2", "mueller", "smith"}
    assert studies(archive, PatientName="m?ller*") == {"mueller"}  # ? is one character: ü
    assert studies(archive, PatientName="MÜLL*") == {"mueller"}
    assert studies(archive, PatientName="yamada*") == {"yamada"}
    assert studies(archive, PatientName="*山田*") == {"yamada"}
    assert studies(archive, PatientName="*やまだ^たろう") == {"yamada"}
    assert studies(archive, PatientName="o'b*") == {"obrien"}
    assert studies(archive, PatientID="PAT00?") == {"doe1", "doe2", "mueller", "yamada"}
    assert studies(archive, StudyDescription="CT*") == {"doe1", "doe2", "obrien", "yamada", "smith"}


def test_wildcard_on_non_pn_is_case_sensitive(archive: Archive) -> None:
    # C.2.2.2.4: wild card matching is case-sensitive except for PN.
    assert studies(archive, AccessionNumber="acc*") == {"obrien"}
    assert studies(archive, AccessionNumber="ACC00?") == {"doe1", "yamada"}
    assert studies(archive, StudyDescription="mr*") == set()


def test_sql_wildcards_in_values_are_literal(archive: Archive) -> None:
    # '%' and '_' mean nothing special in DICOM: they must not act as SQL wildcards.
    assert studies(archive, AccessionNumber="ACC%*") == {"doe2"}
    assert studies(archive, AccessionNumber="ACC%01") == {"doe2"}
    assert studies(archive, PatientID="PAT_*") == {"obrien"}
    assert studies(archive, PatientID="PAT_1") == {"obrien"}
    assert studies(archive, PatientID="%") == set()
    assert studies(archive, PatientID="*%*") == set()
    assert studies(archive, PatientID="_AT*") == set()


# -- list matching -------------------------------------------------------------------
def test_list_matching(archive: Archive) -> None:
    a, b = archive.study_uid["doe1"], archive.study_uid["yamada"]
    assert studies(archive, StudyInstanceUID=f"{a}\\{b}") == {"doe1", "yamada"}
    assert studies(archive, StudyInstanceUID=f"{a}\\1.2.3.4") == {"doe1"}
    assert studies(archive, PatientID="PAT002\\PAT003") == {"mueller", "yamada"}
    assert studies(archive, AccessionNumber="ACC-002\\ACCX*") == {"mueller", "smith"}
    assert studies(archive, PatientName="smith^john\\o'brien^pat") == {"smith", "obrien"}
    assert studies(archive, StudyDate="20240115\\20231231") == {"doe1", "obrien", "yamada"}
    series = archive.series["mueller"]
    hits = run(archive, "SERIES", SeriesInstanceUID="\\".join(series))
    assert {h["SeriesInstanceUID"] for h in hits} == set(series)


# -- ranges --------------------------------------------------------------------------
def test_date_range_matching(archive: Archive) -> None:
    assert studies(archive, StudyDate="20240101-20240131") == {"doe1", "mueller", "obrien", "smith"}
    assert studies(archive, StudyDate="20240131-") == {"mueller", "doe2"}
    assert studies(archive, StudyDate="-20240114") == {"yamada"}
    assert studies(archive, StudyDate="20240115-20240115") == {"doe1", "obrien"}
    assert studies(archive, PatientBirthDate="19600101-19800101") == set(SPECS)


def test_time_range_matching(archive: Archive) -> None:
    # Times stored: doe1 101500, doe2 0930, mueller 115959.999, yamada 120000,
    # obrien 100000, smith 095959.
    # A partial time stands for the whole period it names: "10-11" is 10:00:00..11:59:59.999999.
    assert studies(archive, StudyTime="10-11") == {"doe1", "mueller", "obrien"}
    assert studies(archive, StudyTime="1000-1015") == {"doe1", "obrien"}
    assert studies(archive, StudyTime="101500-101500") == {"doe1"}
    assert studies(archive, StudyTime="-0959") == {"doe2", "smith"}
    assert studies(archive, StudyTime="12-") == {"yamada"}
    assert studies(archive, StudyTime="11:59:59.999-") == {"mueller", "yamada"}
    assert studies(archive, StudyTime="0930") == {"doe2"}
    assert studies(archive, StudyTime="093000") == {"doe2"}


def test_range_constraints_are_validated() -> None:
    with pytest.raises(InvalidQuery):
        parse_constraint("StudyDate", "DA", "20240131-20240101")  # ends before it starts
    with pytest.raises(InvalidQuery):
        parse_constraint("StudyDate", "DA", "2024XX01")
    with pytest.raises(InvalidQuery):
        parse_constraint("StudyDate", "DA", "2024-")
    with pytest.raises(InvalidQuery):
        parse_constraint("StudyTime", "TM", "1-2")
    with pytest.raises(InvalidQuery):
        constraint_for("NoSuchKeyword", "x")
    c = parse_constraint("StudyTime", "TM", "10-11")
    assert (c.kind, c.low, c.high) == (MatchKind.RANGE, "100000", "115959.999999")


# -- computed attributes -------------------------------------------------------------
def test_modalities_in_study(archive: Archive) -> None:
    assert studies(archive, ModalitiesInStudy="SR") == {"yamada"}
    assert studies(archive, ModalitiesInStudy="CT") == {"doe1", "doe2", "yamada", "smith"}
    assert studies(archive, ModalitiesInStudy="SR\\MR") == {"yamada", "mueller"}
    assert studies(archive, ModalitiesInStudy="CT", PatientID="PAT003") == {"yamada"}
    assert studies(archive, ModalitiesInStudy="XA") == set()
    (hit,) = run(archive, "STUDY", PatientID="PAT003")
    assert hit["ModalitiesInStudy"] == "CT\\SR"
    pending, final = c_find(
        archive, identifier("STUDY", ModalitiesInStudy="SR", StudyInstanceUID="")
    )
    assert final.Status == 0x0000
    assert len(pending) == 1
    assert list(pending[0].ModalitiesInStudy) == ["CT", "SR"]
    assert pending[0].StudyInstanceUID == archive.study_uid["yamada"]


def test_computed_counts(archive: Archive) -> None:
    (hit,) = run(archive, "STUDY", StudyInstanceUID=archive.study_uid["mueller"])
    assert hit["NumberOfStudyRelatedSeries"] == 2
    assert hit["NumberOfStudyRelatedInstances"] == 4
    (patient,) = run(archive, "PATIENT", PatientID="PAT001")
    assert patient["NumberOfPatientRelatedStudies"] == 2
    assert patient["NumberOfPatientRelatedSeries"] == 2
    assert patient["NumberOfPatientRelatedInstances"] == 5
    for h in run(archive, "SERIES", StudyInstanceUID=archive.study_uid["yamada"]):
        assert h["NumberOfSeriesRelatedInstances"] == 2
    # Computed attributes are matchable too.
    assert studies(archive, NumberOfStudyRelatedInstances="4") == {"mueller", "yamada"}
    assert studies(archive, NumberOfStudyRelatedSeries="2") == {"mueller", "yamada"}
    assert studies(archive, NumberOfPatientRelatedStudies="2") == {"doe1", "doe2"}

    pending, final = c_find(
        archive,
        identifier(
            "STUDY", PatientID="PAT001", StudyInstanceUID="", NumberOfStudyRelatedSeries="",
            NumberOfStudyRelatedInstances="", NumberOfPatientRelatedStudies="",
        ),
    )
    assert final.Status == 0x0000
    got = {
        archive.label[d.StudyInstanceUID]: (
            d.NumberOfStudyRelatedSeries, d.NumberOfStudyRelatedInstances,
            d.NumberOfPatientRelatedStudies,
        )
        for d in pending
    }
    assert got == {"doe1": (1, 3, 2), "doe2": (1, 2, 2)}
    pending, final = c_find(
        archive,
        identifier(
            "SERIES", StudyInstanceUID=archive.study_uid["doe2"], SeriesInstanceUID="",
            NumberOfSeriesRelatedInstances="",
        ),
    )
    assert final.Status == 0x0000
    assert [d.NumberOfSeriesRelatedInstances for d in pending] == [2]


# -- levels --------------------------------------------------------------------------
def test_patient_level_under_patient_root(archive: Archive) -> None:
    pending, final = c_find(
        archive,
        identifier("PATIENT", PatientID="", PatientName="", PatientSex="M"),
        PatientRootQueryRetrieveInformationModelFind,
    )
    assert final.Status == 0x0000
    assert sorted(d.PatientID for d in pending) == ["PAT002", "PAT003"]
    assert all(d.QueryRetrieveLevel == "PATIENT" for d in pending)
    assert "StudyInstanceUID" not in pending[0]
    # One answer per patient, not per study.
    pending, final = c_find(
        archive, identifier("PATIENT", PatientID="PAT001", PatientName=""),
        PatientRootQueryRetrieveInformationModelFind,
    )
    assert [str(d.PatientName) for d in pending] == ["DOE^JANE"]
    # Patient root, study level under a patient.
    pending, final = c_find(
        archive, identifier("STUDY", PatientID="PAT001", StudyInstanceUID=""),
        PatientRootQueryRetrieveInformationModelFind,
    )
    assert final.Status == 0x0000
    assert {archive.label[d.StudyInstanceUID] for d in pending} == {"doe1", "doe2"}


def test_study_level_over_the_wire(archive: Archive) -> None:
    pending, final = c_find(
        archive,
        identifier(
            "STUDY", PatientName="DOE*", StudyDate="20240101-20240131", StudyTime="",
            AccessionNumber="", StudyInstanceUID="", PatientID="",
        ),
    )
    assert final.Status == 0x0000
    assert len(pending) == 1
    (d,) = pending
    assert d.QueryRetrieveLevel == "STUDY"
    assert d.StudyInstanceUID == archive.study_uid["doe1"]
    assert (d.AccessionNumber, d.StudyDate, d.StudyTime, d.PatientID) == (
        "ACC001", "20240115", "101500", "PAT001",
    )
    assert d.RetrieveAETitle == "HILUM"


def test_series_level_hierarchical(archive: Archive) -> None:
    pending, final = c_find(
        archive,
        identifier(
            "SERIES", StudyInstanceUID=archive.study_uid["yamada"], SeriesInstanceUID="",
            Modality="", SeriesNumber="",
        ),
    )
    assert final.Status == 0x0000
    got = sorted((int(d.SeriesNumber), d.Modality, d.SeriesInstanceUID) for d in pending)
    assert got == [(1, "CT", archive.series["yamada"][0]), (2, "SR", archive.series["yamada"][1])]
    assert all(d.StudyInstanceUID == archive.study_uid["yamada"] for d in pending)
    # Matching on a series attribute within the study.
    pending, _ = c_find(
        archive,
        identifier("SERIES", StudyInstanceUID=archive.study_uid["yamada"], Modality="SR"),
    )
    assert [d.SeriesInstanceUID for d in pending] == [archive.series["yamada"][1]]
    # Series of all studies, by modality.
    hits = run(archive, "SERIES", Modality="MR")
    assert len(hits) == 2
    assert {h["StudyInstanceUID"] for h in hits} == {archive.study_uid["mueller"]}


def test_image_level(archive: Archive) -> None:
    series_uid = archive.series["doe1"][0]
    pending, final = c_find(
        archive,
        identifier(
            "IMAGE", StudyInstanceUID=archive.study_uid["doe1"], SeriesInstanceUID=series_uid,
            SOPInstanceUID="", InstanceNumber="", SOPClassUID="", Rows=None,
        ),
    )
    assert final.Status == 0x0000
    assert sorted(int(d.InstanceNumber) for d in pending) == [1, 2, 3]
    assert {d.SOPInstanceUID for d in pending} == set(archive.sop_uids["doe1"])
    assert all(d.Rows == 8 and d.SeriesInstanceUID == series_uid for d in pending)
    # Single instance by UID, and UID list.
    wanted = archive.sop_uids["mueller"][:2]
    hits = run(archive, "IMAGE", SOPInstanceUID="\\".join(wanted))
    assert {h["SOPInstanceUID"] for h in hits} == set(wanted)
    assert len(run(archive, "IMAGE")) == TOTAL_INSTANCES
    assert len(run(archive, "IMAGE", PatientName="DOE*", InstanceNumber="3")) == 1


# -- return keys, errors, character sets ----------------------------------------------
def test_return_keys_not_in_the_index_come_back_empty(archive: Archive) -> None:
    ds = identifier(
        "STUDY", PatientID="PAT002", StudyInstanceUID="", PatientName="",
        OtherPatientIDs="", StudyComments="", SeriesDescription="",
    )
    pending, final = c_find(archive, ds)
    assert final.Status == 0x0000
    (d,) = pending
    for keyword in ("OtherPatientIDs", "StudyComments", "SeriesDescription"):
        assert keyword in d, keyword
        assert d[keyword].value in (None, "", b""), keyword
    assert str(d.PatientName) == "Müller^Jürgen"


def test_non_ascii_query_over_the_wire(archive: Archive) -> None:
    ds = identifier("STUDY", PatientName="müller*", StudyInstanceUID="", PatientID="")
    ds.SpecificCharacterSet = "ISO_IR 192"
    pending, final = c_find(archive, ds)
    assert final.Status == 0x0000
    assert [d.PatientID for d in pending] == ["PAT002"]
    assert str(pending[0].PatientName) == "Müller^Jürgen"
    ds = identifier("STUDY", PatientName="*山田*", StudyInstanceUID="")
    ds.SpecificCharacterSet = "ISO_IR 192"
    pending, final = c_find(archive, ds)
    assert final.Status == 0x0000
    assert [str(d.PatientName) for d in pending] == ["Yamada^Tarou=山田^太郎=やまだ^たろう"]
    assert pending[0].SpecificCharacterSet == "ISO_IR 192"


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize(
    ("level", "keys", "model"),
    [
        ("WRONG", {"PatientID": ""}, StudyRootQueryRetrieveInformationModelFind),
        ("", {"PatientID": ""}, StudyRootQueryRetrieveInformationModelFind),
        ("PATIENT", {"PatientID": ""}, StudyRootQueryRetrieveInformationModelFind),
        ("STUDY", {"StudyDate": "2024XX01"}, StudyRootQueryRetrieveInformationModelFind),
        ("STUDY", {"StudyDate": "20240131-20240101"}, StudyRootQueryRetrieveInformationModelFind),
        ("STUDY", {"StudyTime": "25x"}, PatientRootQueryRetrieveInformationModelFind),
    ],
    ids=["bad-level", "no-level", "patient-level-in-study-root", "bad-date", "reversed-range",
         "bad-time"],
)
def test_invalid_identifier_fails_with_comment(
    archive: Archive, level: str, keys: dict[str, str], model: Any
) -> None:
    pending, final = c_find(archive, identifier(level, **keys), model)
    assert pending == []
    assert final.Status in (0xA900, 0xC000)
    assert "ErrorComment" in final
    assert str(final.ErrorComment).strip()


def test_results_are_streamed_and_cancel_stops_them(archive: Archive) -> None:
    """The C-FIND handler is a generator over a streaming cursor, and honours C-CANCEL."""
    handlers = DimseHandlers(archive.services)
    event = SimpleNamespace(
        identifier=identifier("IMAGE", SOPInstanceUID=""),
        request=SimpleNamespace(AffectedSOPClassUID=StudyRootQueryRetrieveInformationModelFind),
        is_cancelled=False,
    )
    responses = handlers.on_find(event)
    first = [next(responses) for _ in range(3)]
    assert [status for status, _ in first] == [0xFF00] * 3
    event.is_cancelled = True
    status, ds = next(responses)
    assert (status, ds) == (0xFE00, None)
    assert list(responses) == []
    # Without a cancel: every instance, then success.
    event.is_cancelled = False
    out = list(handlers.on_find(event))
    assert len(out) == TOTAL_INSTANCES + 1
    assert out[-1] == (0x0000, None)


def test_findscu(archive: Archive, tmp_path: Path) -> None:
    findscu = require_tool("findscu")
    out_dir = tmp_path / "rsp"
    out_dir.mkdir()
    proc = subprocess.run(
        [
            findscu, "-S", "-aec", archive.server.ae_title, "-X", "-od", str(out_dir),
            "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=PAT001",
            "-k", "StudyDate=20240101-", "-k", "StudyInstanceUID", "-k", "AccessionNumber",
            "-k", "NumberOfStudyRelatedInstances", "-k", "ModalitiesInStudy",
            "127.0.0.1", str(archive.server.port),
        ],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = [dcmread(p) for p in sorted(out_dir.iterdir())]
    got = {
        (d.AccessionNumber, int(d.NumberOfStudyRelatedInstances), d.ModalitiesInStudy)
        for d in found
    }
    assert got == {("ACC001", 3, "CT"), ("ACC%01", 2, "CT")}
