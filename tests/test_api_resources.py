"""The resource API (/api/v1/patients, studies, series, instances) on a real server:
paged and filtered lists, details, and deletion (index rows, counters, files, change feed)."""

from __future__ import annotations

import subprocess
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import RunningServer, require_tool
from factory import StudySpec, write_study

pytestmark = pytest.mark.postgres  # SQL matters here: both back-ends


def api(server: RunningServer) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{server.settings.http.port}/api/v1", timeout=60)


def stored_files(server: RunningServer) -> set[Path]:
    root = server.settings.storage_dir
    return {p for p in root.rglob("*") if p.is_file() and ".staging" not in p.parts}


def store(server: RunningServer, files: list[Path]) -> None:
    subprocess.run(
        [require_tool("storescu"), "-aec", server.ae_title, "127.0.0.1", str(server.port),
         *map(str, files)],
        check=True, capture_output=True,
    )


@pytest.fixture
def three_studies(server: RunningServer, tmp_path: Path) -> dict[str, StudySpec]:
    specs = {
        "jane_ct": StudySpec(patient_id="PAT001", patient_name="DOE^JANE", study_date="20240115",
                             accession="A1", series=2, slices=3),
        "jane_mr": StudySpec(patient_id="PAT001", patient_name="DOE^JANE", study_date="20230610",
                             accession="A2", modality="MR", series=1, slices=2),
        "john_ct": StudySpec(patient_id="PAT002", patient_name="SMITH^JOHN", study_date="20241231",
                             accession="A3", series=1, slices=4, sex="M"),
    }
    for name, spec in specs.items():
        write_study(spec, tmp_path / name)
    # One command (one process start), one file at a time: patient and study pks follow this order.
    server.hilum("import", "--threads", "1", *(str(tmp_path / name) for name in specs))
    return specs


def uids(page: dict[str, Any], key: str) -> list[str]:
    return [item[key] for item in page["items"]]


def test_lists_filter_sort_and_page(server: RunningServer, three_studies: dict[str, StudySpec]) -> None:
    s = three_studies
    with api(server) as client:
        patients = client.get("/patients").json()
        assert patients["total"] == 2 and not patients["has_more"]
        jane = patients["items"][0]
        assert (jane["PatientID"], jane["PatientName"], jane["NumberOfPatientRelatedStudies"]) == (
            "PAT001", "DOE^JANE", 2)
        assert jane["NumberOfPatientRelatedInstances"] == 8
        assert datetime.fromisoformat(jane["created_at"]).utcoffset() == timedelta(0)

        studies = client.get("/studies", params={"sort": "-StudyDate"}).json()
        assert uids(studies, "StudyInstanceUID") == [s["john_ct"].study_uid, s["jane_ct"].study_uid,
                                                      s["jane_mr"].study_uid]
        first = studies["items"][1]
        assert first["ModalitiesInStudy"] == ["CT"] and first["NumberOfStudyRelatedSeries"] == 2
        assert first["NumberOfStudyRelatedInstances"] == 6 and first["size_bytes"] > 6 * 8192
        assert first["PatientName"] == "DOE^JANE" and first["patient_pk"] == jane["pk"]

        # The one query model: wildcards, ranges, lists, case-insensitive names.
        def studies_where(**params: str) -> list[str]:
            return uids(client.get("/studies", params={**params, "sort": "StudyDate"}).json(),
                        "StudyInstanceUID")

        assert studies_where(PatientName="doe*") == [s["jane_mr"].study_uid, s["jane_ct"].study_uid]
        assert studies_where(StudyDate="20240101-20241231") == [s["jane_ct"].study_uid,
                                                               s["john_ct"].study_uid]
        assert studies_where(ModalitiesInStudy="MR") == [s["jane_mr"].study_uid]
        assert studies_where(AccessionNumber="A3\\A2") == [s["jane_mr"].study_uid, s["john_ct"].study_uid]
        assert studies_where(PatientName="DOE*", StudyDate="20240101-", ModalitiesInStudy="CT") == [
            s["jane_ct"].study_uid]
        assert studies_where(PatientSex="M") == [s["john_ct"].study_uid]

        # Paging: stable order, every study exactly once.
        seen = []
        for offset in range(0, 3):
            page = client.get("/studies", params={"limit": 1, "offset": offset, "sort": "PatientName"}).json()
            assert page["total"] == 3 and page["has_more"] == (offset < 2)
            seen += uids(page, "StudyInstanceUID")
        assert sorted(seen) == sorted(spec.study_uid for spec in s.values())
        assert seen[-1] == s["john_ct"].study_uid  # SMITH after DOE

        series = client.get("/series", params={"StudyInstanceUID": s["jane_ct"].study_uid,
                                               "sort": "-SeriesNumber"}).json()
        assert [x["SeriesNumber"] for x in series["items"]] == [2, 1]
        assert all(x["NumberOfSeriesRelatedInstances"] == 3 for x in series["items"])
        instances = client.get("/instances", params={
            "SeriesInstanceUID": series["items"][0]["SeriesInstanceUID"], "sort": "-InstanceNumber"}).json()
        assert [x["InstanceNumber"] for x in instances["items"]] == [3, 2, 1]
        one = instances["items"][0]
        assert len(one["sha256"]) == 64 and one["size_bytes"] > 8192 and one["source"]
        assert one["TransferSyntaxUID"] and one["StudyInstanceUID"] == s["jane_ct"].study_uid
        assert client.get("/instances", params={"Modality": "CT", "limit": 5}).json()["total"] == 10


BAD_REQUESTS: list[tuple[str, dict[str, str]]] = [
    ("/studies", {"Nonsense": "1"}),
    ("/studies", {"StudyDate": "2024"}),
    ("/studies", {"StudyDate": "20241231-20240101"}),
    ("/studies", {"sort": "SeriesNumber"}),
    ("/studies", {"limit": "0"}),
    ("/studies", {"limit": "100000"}),
    ("/studies", {"offset": "-1"}),
    ("/studies", {"limit": "many"}),
    ("/patients", {"StudyDate": "20240101"}),
    ("/series", {"ModalitiesInStudy": "CT"}),
    ("/instances", {"InstanceNumber": "99999999999999999999"}),
    ("/studies", {"PatientID": "a\x00b"}),
    ("/studies/not-a-uid", {}),
    ("/studies/1.2.*", {}),
    ("/series/1.2.3.4%5C1.2", {}),
    ("/patients/1", {"by": "nonsense"}),
]


def test_bad_parameters_are_400(server: RunningServer) -> None:
    with api(server) as client:
        for path, params in BAD_REQUESTS:
            response = client.get(path, params=params)
            assert response.status_code == 400, (path, params, response.text)
            assert response.headers["content-type"] == "application/problem+json"
        assert client.get("/studies?PatientID=A&PatientID=B").status_code == 400
        assert client.delete("/studies/1.2.*").status_code == 400
        assert client.delete("/patients/X", params={"by": "pk"}).status_code == 400


def test_details_and_404(server: RunningServer, three_studies: dict[str, StudySpec]) -> None:
    s = three_studies
    with api(server) as client:
        study = client.get(f"/studies/{s['jane_ct'].study_uid}").json()
        assert study["StudyDate"] == "20240115" and study["AccessionNumber"] == "A1"
        assert [x["SeriesNumber"] for x in study["series"]] == [1, 2]
        series_uid = study["series"][1]["SeriesInstanceUID"]
        series = client.get(f"/series/{series_uid}").json()
        assert series["StudyInstanceUID"] == s["jane_ct"].study_uid
        assert [x["InstanceNumber"] for x in series["instances"]] == [1, 2, 3]
        sop_uid = series["instances"][0]["SOPInstanceUID"]
        instance = client.get(f"/instances/{sop_uid}").json()
        assert instance["SeriesInstanceUID"] == series_uid and instance["Rows"] == 64

        by_id = client.get("/patients/PAT002").json()
        by_pk = client.get(f"/patients/{by_id['pk']}").json()
        assert by_id == by_pk and [x["StudyInstanceUID"] for x in by_pk["studies"]] == [
            s["john_ct"].study_uid]
        jane = client.get("/patients/PAT001").json()
        assert [x["StudyDate"] for x in jane["studies"]] == ["20240115", "20230610"]

        for path in ("/studies/1.2.3", "/series/1.2.3", "/instances/1.2.3", "/patients/NOBODY",
                     "/patients/999999", "/studies/1.2.3/archive"):
            response = client.get(path)
            assert response.status_code == 404, path
            assert response.headers["content-type"] == "application/problem+json"
        assert client.delete("/studies/1.2.3").status_code == 404
        assert client.delete("/patients/NOBODY").status_code == 404

        schema = client.get("/openapi.json").json()["components"]["schemas"]
        assert schema["Study"]["properties"]["PatientName"]["description"].startswith("(0010,0010)")
        assert "series" in schema["StudyDetail"]["properties"]


def test_patient_reference_that_is_both_a_pk_and_an_id_is_refused(
    server: RunningServer, tmp_path: Path
) -> None:
    first = StudySpec(patient_id="X1", patient_name="FIRST^ONE")
    server.hilum("import", str(write_study(first, tmp_path / "a")[0]))
    with api(server) as client:
        pk = client.get("/patients/X1").json()["pk"]
        second = StudySpec(patient_id=str(pk), patient_name="SECOND^TWO")
        server.hilum("import", str(write_study(second, tmp_path / "b")[0]))
        ambiguous = client.get(f"/patients/{pk}")
        assert ambiguous.status_code == 409 and len(ambiguous.json()["candidates"]) == 2
        assert client.get(f"/patients/{pk}", params={"by": "pk"}).json()["PatientID"] == "X1"
        assert client.get(f"/patients/{pk}", params={"by": "PatientID"}).json()["PatientName"] == "SECOND^TWO"
        assert client.get("/patients/X1", params={"by": "pk"}).status_code == 400


def test_delete_levels_updates_counters_files_and_feed(
    server: RunningServer, three_studies: dict[str, StudySpec]
) -> None:
    s = three_studies
    with api(server) as client:
        last = client.get("/changes", params={"since": 0, "limit": 1000}).json()["last"]
        files = stored_files(server)
        assert len(files) == 12
        study = client.get(f"/studies/{s['jane_ct'].study_uid}").json()
        series = client.get(f"/series/{study['series'][0]['SeriesInstanceUID']}").json()
        sop_uid = series["instances"][0]["SOPInstanceUID"]

        report = client.delete(f"/instances/{sop_uid}").json()
        assert report == {"level": "IMAGE", "instances": 1, "series": 0, "studies": 0, "patients": 0,
                          "files_removed": 1, "files_left": []}
        assert len(stored_files(server)) == 11
        assert client.get(f"/instances/{sop_uid}").status_code == 404
        assert client.delete(f"/instances/{sop_uid}").status_code == 404
        study = client.get(f"/studies/{s['jane_ct'].study_uid}").json()
        assert study["NumberOfStudyRelatedInstances"] == 5
        assert [x["NumberOfSeriesRelatedInstances"] for x in study["series"]] == [2, 3]
        jane = client.get("/patients/PAT001").json()
        assert (jane["NumberOfPatientRelatedInstances"], jane["NumberOfPatientRelatedSeries"]) == (7, 3)

        report = client.delete(f"/series/{series['SeriesInstanceUID']}").json()
        assert (report["instances"], report["series"], report["studies"]) == (2, 1, 0)
        study = client.get(f"/studies/{s['jane_ct'].study_uid}").json()
        assert (study["NumberOfStudyRelatedSeries"], study["NumberOfStudyRelatedInstances"]) == (1, 3)

        report = client.delete(f"/studies/{s['jane_ct'].study_uid}").json()
        assert (report["instances"], report["series"], report["studies"], report["patients"]) == (3, 1, 1, 0)
        jane = client.get("/patients/PAT001").json()
        assert (jane["NumberOfPatientRelatedStudies"], jane["NumberOfPatientRelatedInstances"]) == (1, 2)
        assert jane["studies"][0]["ModalitiesInStudy"] == ["MR"]

        report = client.delete("/patients/PAT001").json()
        assert (report["instances"], report["series"], report["studies"], report["patients"]) == (2, 1, 1, 1)
        assert client.get("/patients/PAT001").status_code == 404
        remaining = client.get("/instances").json()
        assert remaining["total"] == 4 and len(stored_files(server)) == 4
        assert {x["StudyInstanceUID"] for x in remaining["items"]} == {s["john_ct"].study_uid}

        feed = client.get("/changes", params={"since": last, "limit": 1000}).json()["changes"]
        assert all(c["kind"] == "deleted" for c in feed)
        by_level = {level: [c for c in feed if c["level"] == level] for level in ("IMAGE", "SERIES", "STUDY")}
        assert (len(by_level["IMAGE"]), len(by_level["SERIES"]), len(by_level["STUDY"])) == (8, 3, 2)
        assert sop_uid == by_level["IMAGE"][0]["resource_uid"]
        stats = client.get("/statistics").json()
        assert (stats["patients"], stats["studies"], stats["series"], stats["instances"]) == (1, 1, 1, 4)


def test_delete_during_ingest_leaves_a_consistent_index(server: RunningServer, tmp_path: Path) -> None:
    """Deleting a study while instances of it (and of others) arrive over C-STORE: whatever
    the interleaving, counters match the rows and every row has its file."""
    target = StudySpec(patient_id="RACE", slices=40)
    files = write_study(target, tmp_path / "target")
    other = write_study(StudySpec(patient_id="OTHER", slices=40), tmp_path / "other")
    store(server, files[:10])
    senders = [threading.Thread(target=store, args=(server, part)) for part in (files[10:], other)]
    with api(server) as client:
        for sender in senders:
            sender.start()
        deletes = 0
        while any(t.is_alive() for t in senders) or deletes == 0:
            response = client.delete(f"/studies/{target.study_uid}")
            assert response.status_code in (200, 404), response.text
            deletes += response.status_code == 200
            time.sleep(0.02)
        for sender in senders:
            sender.join()
        total = 0
        for study in client.get("/studies").json()["items"]:
            listed = client.get("/instances", params={"StudyInstanceUID": study["StudyInstanceUID"],
                                                      "limit": 1000}).json()
            assert study["NumberOfStudyRelatedInstances"] == listed["total"] > 0
            detail = client.get(f"/studies/{study['StudyInstanceUID']}").json()
            assert sum(x["NumberOfSeriesRelatedInstances"] for x in detail["series"]) == listed["total"]
            total += listed["total"]
        for patient in client.get("/patients").json()["items"]:
            assert patient["NumberOfPatientRelatedStudies"] >= 1
        assert len(stored_files(server)) == total
        assert client.get("/instances", params={"PatientID": "OTHER"}).json()["total"] == 40
