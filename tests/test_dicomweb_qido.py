"""QIDO-RS (PS3.18 10.6) against a real `hilum serve`, with dicomweb-client as the client."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from conftest import BACKENDS
from factory import StudySpec, make_study
from test_dicomweb_support import base_url, make_client, problem, running_server, values

STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
WARNING = '299 hilum: "There are additional results that can be requested"'


@dataclass
class Data:
    a: list[Dataset]  # DOE^JANE, CT, 2 series x 2, 2024-01-15 10:15
    b: list[Dataset]  # SMITH^JOHN^PAUL, MR, 1 x 2, 2023-06-01 08:30
    c: list[Dataset]  # Doe^John, CT, 1 x 1, 2022-12-31 23:59:59
    pages: list[str]  # 25 one-instance studies of patient PAGE
    many: list[Dataset]  # 210 instances of one series (more than one filtering batch)


def _set(datasets: list[Dataset], **attributes: Any) -> list[Dataset]:
    for ds in datasets:
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
    return datasets


@pytest.fixture(scope="module", params=BACKENDS)
def qido(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with running_server(request.param, tmp_path_factory) as server:
        yield server


@pytest.fixture(scope="module")
def data(qido: Any) -> Data:
    client, _ = make_client(qido)
    a = make_study(
        StudySpec(
            patient_id="Q-A",
            patient_name="DOE^JANE",
            study_date="20240115",
            study_time="101500",
            accession="ACC-A",
            description="CT CHEST",
            series=2,
            slices=2,
        )
    )
    _set(a, InstitutionAddress="1 Main Street", KVP="120")
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "24627-2", "LN", "CT CHEST"
    _set(a, ProcedureCodeSequence=[code])
    _set(a[:2], SliceThickness="1.25", Manufacturer="ACME")
    _set(a[2:], SliceThickness="5", Manufacturer="Globex")
    b = make_study(
        StudySpec(
            patient_id="Q-B",
            patient_name="SMITH^JOHN^PAUL",
            study_date="20230601",
            study_time="083000",
            accession="ACC-B",
            description="MR BRAIN",
            modality="MR",
            slices=2,
        )
    )
    _set(b, InstitutionAddress="22 Side Road", SliceThickness="3")
    c = make_study(
        StudySpec(
            patient_id="Q-C",
            patient_name="Doe^John",
            study_date="20221231",
            study_time="235959",
            accession="ACC-C2",
            description="CT ABDOMEN",
            slices=1,
        )
    )
    _set(c, InstitutionAddress="1 Main Street", KVP="100", SliceThickness="1.25")
    for study in (a, b, c):
        client.store_instances(study)
    pages = []
    for number in range(25):
        spec = StudySpec(
            patient_id="PAGE",
            patient_name=f"PAGE^{number:02d}",
            study_date=f"201001{number + 1:02d}",
            description="PAGING",
            slices=1,
            size=4,
        )
        pages.append(spec.study_uid)
        client.store_instances(make_study(spec))
    many = make_study(
        StudySpec(patient_id="MANY", patient_name="MANY^X", description="MANY", slices=210, size=2)
    )
    for number, ds in enumerate(many):
        ds.SliceThickness = "2" if number % 2 == 0 else "3"
    client.store_instances(many)
    return Data(a, b, c, pages, many)


def _uids(results: list[dict[str, Any]], tag: str = STUDY_UID) -> set[str]:
    return {values(r, tag)[0] for r in results}


def _studies(client: DICOMwebClient, **filters: Any) -> set[str]:
    return _uids(client.search_for_studies(search_filters=filters))


def test_single_value_matching(qido: Any, data: Data) -> None:
    client, _ = make_client(qido)
    a, b, c = data.a[0].StudyInstanceUID, data.b[0].StudyInstanceUID, data.c[0].StudyInstanceUID
    assert _studies(client, PatientID="Q-A") == {a}
    assert _studies(client, AccessionNumber="ACC-B") == {b}
    assert _studies(client, StudyDate="20221231") == {c}
    assert _studies(client, StudyInstanceUID=a) == {a}
    assert _studies(client, ModalitiesInStudy="MR") == {b}
    assert _studies(client, PatientName="DOE^JANE") == {a}
    assert _studies(client, PatientName="doe^jane") == {a}  # PN matching ignores case here
    assert _studies(client, PatientID="nobody") == set()
    series = client.search_for_series(search_filters={"Modality": "MR"})
    assert _uids(series, SERIES_UID) == {data.b[0].SeriesInstanceUID}
    series = client.search_for_series(search_filters={"Manufacturer": "Globex"})
    assert _uids(series, SERIES_UID) == {data.a[2].SeriesInstanceUID}
    instances = client.search_for_instances(search_filters={"SOPInstanceUID": data.a[3].SOPInstanceUID})
    assert _uids(instances, SOP_UID) == {data.a[3].SOPInstanceUID}
    instances = client.search_for_instances(
        data.a[0].StudyInstanceUID, search_filters={"InstanceNumber": "2"}
    )
    assert _uids(instances, SOP_UID) == {data.a[1].SOPInstanceUID, data.a[3].SOPInstanceUID}


def test_wildcard_matching(qido: Any, data: Data) -> None:
    client, _ = make_client(qido)
    a, b, c = data.a[0].StudyInstanceUID, data.b[0].StudyInstanceUID, data.c[0].StudyInstanceUID
    assert _studies(client, PatientName="DOE*") == {a, c}
    assert _studies(client, PatientName="*JOHN*") == {b, c}
    assert _studies(client, PatientID="Q-?") == {a, b, c}
    assert _studies(client, AccessionNumber="ACC-?") == {a, b}
    assert _studies(client, StudyDescription="CT*") == {a, c}
    assert _studies(client, StudyDescription="?R BRAIN") == {b}
    series = client.search_for_series(search_filters={"SeriesDescription": "*2", "PatientID": "Q-A"})
    assert _uids(series, SERIES_UID) == {data.a[2].SeriesInstanceUID}


def test_uid_list_matching(qido: Any, data: Data) -> None:
    """PS3.18 8.3.4.1: uid-list-match is ``attribute=1#value`` (comma-separated); backslash as C-FIND."""
    client, _ = make_client(qido)
    a, b = data.a[0].StudyInstanceUID, data.b[0].StudyInstanceUID
    assert _studies(client, StudyInstanceUID=f"{a},{b}") == {a, b}
    assert _studies(client, StudyInstanceUID=f"{a}\\{b}") == {a, b}
    wanted = {data.a[0].SeriesInstanceUID, data.c[0].SeriesInstanceUID}
    series = client.search_for_series(search_filters={"SeriesInstanceUID": ",".join(wanted)})
    assert _uids(series, SERIES_UID) == wanted
    wanted = {data.a[0].SOPInstanceUID, data.b[1].SOPInstanceUID, "1.2.3.4.5.6"}
    instances = client.search_for_instances(search_filters={"SOPInstanceUID": ",".join(sorted(wanted))})
    assert _uids(instances, SOP_UID) == wanted - {"1.2.3.4.5.6"}
    # The same UID attribute given several times is one list (other attributes: 400).
    repeated = httpx.get(
        f"{base_url(qido)}/studies", params=[("StudyInstanceUID", a), ("StudyInstanceUID", b)], timeout=30
    )
    assert repeated.status_code == 200 and _uids(repeated.json()) == {a, b}
    twice = httpx.get(f"{base_url(qido)}/studies", params=[("PatientID", "Q-A"), ("PatientID", "Q-B")])
    assert twice.status_code == 400 and "more than once" in twice.json()["detail"]


def test_date_and_time_ranges(qido: Any, data: Data) -> None:
    client, _ = make_client(qido)
    a, b, c = data.a[0].StudyInstanceUID, data.b[0].StudyInstanceUID, data.c[0].StudyInstanceUID
    ours = {"PatientID": "Q-?"}
    assert _studies(client, StudyDate="20230101-20231231", **ours) == {b}
    assert _studies(client, StudyDate="20221231-20230601", **ours) == {b, c}  # both ends included
    assert _studies(client, StudyDate="20230602-", **ours) == {a}  # open end
    assert _studies(client, StudyDate="-20230601", **ours) == {b, c}  # open start
    assert _studies(client, StudyDate="20100105-20100107") == set(data.pages[4:7])
    assert _studies(client, StudyTime="080000-100000", **ours) == {b}
    assert _studies(client, StudyTime="2300-", **ours) == {c}
    assert _studies(client, StudyTime="-0830", **ours) == {b}  # 0830 lasts until 08:30:59.999999
    assert _studies(client, StudyTime="0830-1015", **ours) == {a, b}
    assert _studies(client, StudyDate="20240115", StudyTime="1000-1100", **ours) == {a}


def test_fuzzy_person_name_matching(qido: Any, data: Data) -> None:
    client, _ = make_client(qido)
    a, b, c = data.a[0].StudyInstanceUID, data.b[0].StudyInstanceUID, data.c[0].StudyInstanceUID

    def fuzzy(name: str) -> set[str]:
        return _uids(client.search_for_studies(fuzzymatching=True, search_filters={"PatientName": name}))

    assert fuzzy("doe") == {a, c}  # family name prefix, any case
    assert fuzzy("jo") == {b, c}  # given name prefix
    assert fuzzy("PAU") == {b}  # middle name
    assert fuzzy("jan") == {a}
    assert fuzzy("ohn") == set()  # a prefix of a component, not any substring
    assert _studies(client, PatientName="jo") == set()  # without fuzzy matching: the whole name
    not_fuzzy = client.search_for_studies(fuzzymatching=False, search_filters={"PatientName": "jo"})
    assert _uids(not_fuzzy) == set()


def test_includefield(qido: Any, data: Data) -> None:
    client, _ = make_client(qido)
    a = data.a[0]
    # By tag and by keyword; an indexed series attribute that is not a default one.
    (series,) = client.search_for_series(
        a.StudyInstanceUID, search_filters={"SeriesNumber": "1"}, fields=["00080070"]
    )
    assert values(series, "00080070") == ["ACME"]
    (series,) = client.search_for_series(a.StudyInstanceUID, search_filters={"SeriesNumber": "2"})
    assert "00080070" not in series  # not asked for
    # Attributes without an index column, from the stored DICOM JSON.
    results = client.search_for_instances(
        a.StudyInstanceUID, a.SeriesInstanceUID, fields=["SliceThickness", "KVP", "00080081"]
    )
    assert len(results) == 2
    for result in results:
        assert values(result, "00180050") == [1.25]
        assert values(result, "00180060") == [120]
        assert values(result, "00080081") == ["1 Main Street"]
    (study,) = client.search_for_studies(search_filters={"PatientID": "Q-B"}, fields=["InstitutionAddress"])
    assert values(study, "00080081") == ["22 Side Road"]
    # A sequence can be asked for (though not matched on).
    (study,) = client.search_for_studies(
        search_filters={"PatientID": "Q-A"}, fields=["ProcedureCodeSequence"]
    )
    assert Dataset.from_json(study).ProcedureCodeSequence[0].CodeValue == "24627-2"
    # Asked for, absent from the data: present and empty.
    (study,) = client.search_for_studies(search_filters={"PatientID": "Q-B"}, fields=["KVP"])
    assert study["00180060"] == {"vr": "DS"}


def test_includefield_all(qido: Any, data: Data) -> None:
    client, _ = make_client(qido)
    a = data.a[0]
    (study,) = client.search_for_studies(search_filters={"PatientID": "Q-A"}, fields=["all"])
    assert values(study, "00100010") == [{"Alphabetic": "DOE^JANE"}]
    assert values(study, "00201206") == [2] and values(study, "00201208") == [4]
    assert values(study, "00080061") == ["CT"]
    (instance,) = client.search_for_instances(
        search_filters={"SOPInstanceUID": a.SOPInstanceUID}, fields=["all"]
    )
    assert values(instance, "00180050") == [1.25]  # from the data set
    assert values(instance, "00200032") == [0, 0, 0]
    assert values(instance, "00280010") == [64]
    assert values(instance, STUDY_UID) == [a.StudyInstanceUID]
    assert values(instance, SERIES_UID) == [a.SeriesInstanceUID]
    assert "7FE00010" not in instance  # bulk data is not part of a search result


def test_attributes_without_an_index_column_as_filters(qido: Any, data: Data) -> None:
    client, _ = make_client(qido)
    a, b, c = data.a[0].StudyInstanceUID, data.b[0].StudyInstanceUID, data.c[0].StudyInstanceUID
    assert _studies(client, InstitutionAddress="1 Main Street") == {a, c}
    assert _studies(client, InstitutionAddress="*Side*") == {b}
    assert _studies(client, InstitutionAddress="1 Main Street", PatientID="Q-C") == {c}
    instances = client.search_for_instances(search_filters={"SliceThickness": "1.25"})
    assert _uids(instances, SOP_UID) == {ds.SOPInstanceUID for ds in [*data.a[:2], *data.c]}
    assert "00180050" in instances[0]  # a filter attribute is returned
    # DS values match by value: "5" is 5.0, "120" matches 120.
    instances = client.search_for_instances(search_filters={"SliceThickness": "5"})
    assert _uids(instances, SOP_UID) == {ds.SOPInstanceUID for ds in data.a[2:]}
    assert _studies(client, KVP="120") == {a}
    assert _studies(client, KVP="120.0") == {a}
    # Paging through matches filtered outside SQL, across its batches of 200.
    study = data.many[0].StudyInstanceUID
    even = {ds.SOPInstanceUID for ds in data.many[::2]}
    seen: list[str] = []
    for offset in range(0, 120, 40):
        page = client.search_for_instances(
            study, search_filters={"SliceThickness": "2"}, limit=40, offset=offset
        )
        seen += [values(r, SOP_UID)[0] for r in page]
    assert len(seen) == len(set(seen)) == 105 and set(seen) == even


def test_paging_visits_each_study_once(qido: Any, data: Data) -> None:
    client, recorder = make_client(qido)
    everything = client.search_for_studies(search_filters={"PatientID": "PAGE"})
    order = [values(r, STUDY_UID)[0] for r in everything]
    assert sorted(order) == sorted(data.pages)
    seen: list[str] = []
    warnings: list[str | None] = []
    for offset in range(0, 28, 7):
        page = client.search_for_studies(search_filters={"PatientID": "PAGE"}, limit=7, offset=offset)
        seen += [values(r, STUDY_UID)[0] for r in page]
        assert recorder.last is not None
        warnings.append(recorder.last.headers.get("Warning"))
    assert seen == order  # each exactly once, in the same stable order
    assert warnings == [WARNING, WARNING, WARNING, None]
    assert client.search_for_studies(search_filters={"PatientID": "PAGE"}, limit=7, offset=25) == []
    # dicomweb-client's own paging (offset += page size until an empty page).
    remaining = client.search_for_studies(search_filters={"PatientID": "PAGE"}, limit=10, get_remaining=True)
    assert [values(r, STUDY_UID)[0] for r in remaining] == order


def test_all_qido_paths(qido: Any, data: Data) -> None:
    client, recorder = make_client(qido)
    a = data.a
    study, series = a[0].StudyInstanceUID, a[0].SeriesInstanceUID
    studies = client.search_for_studies(limit=100)
    assert recorder.last is not None and recorder.last.url.endswith("/dicomweb/studies?limit=100")
    assert len(studies) == 3 + 25 + 1
    all_series = client.search_for_series(limit=100)
    assert len(all_series) == 2 + 1 + 1 + 25 + 1
    all_instances = client.search_for_instances(search_filters={"PatientID": "Q-?"})
    assert len(all_instances) == 4 + 2 + 1
    in_study = client.search_for_series(study)
    assert _uids(in_study, SERIES_UID) == {a[0].SeriesInstanceUID, a[2].SeriesInstanceUID}
    assert {values(s, "00201209")[0] for s in in_study} == {2}  # NumberOfSeriesRelatedInstances
    assert _uids(client.search_for_instances(study), SOP_UID) == {ds.SOPInstanceUID for ds in a}
    in_series = client.search_for_instances(study, series)
    assert _uids(in_series, SOP_UID) == {a[0].SOPInstanceUID, a[1].SOPInstanceUID}
    for result in in_series:
        assert values(result, STUDY_UID) == [study] and values(result, SERIES_UID) == [series]
        assert values(result, "00080016") == [a[0].SOPClassUID]
        assert values(result, "00080056") == ["ONLINE"]
        assert values(result, "00081190")[0].endswith(
            f"/studies/{study}/series/{series}/instances/{values(result, SOP_UID)[0]}"
        )
    # Unknown UIDs in a search path: no match (200, empty), not an error.
    assert client.search_for_series("1.2.3.4.5") == []
    assert client.search_for_instances(study, "1.2.3.4.5") == []


def test_responses_are_dicom_json(qido: Any, data: Data) -> None:
    response = httpx.get(f"{base_url(qido)}/studies", params={"PatientID": "Q-A"}, timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom+json")
    (study,) = response.json()
    assert Dataset.from_json(study).PatientName == "DOE^JANE"


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"NoSuchAttribute": "x"}, "NoSuchAttribute"),
        ({"StudyDate": "2024-13-45"}, "StudyDate"),
        ({"StudyDate": "yesterday"}, "StudyDate"),
        ({"StudyDate": "20240201-20240101"}, "StudyDate"),
        ({"StudyTime": "25x"}, "StudyTime"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"offset": "-5"}, "offset"),
        ({"fuzzymatching": "maybe"}, "fuzzymatching"),
        ({"includefield": "NotAKeyword"}, "NotAKeyword"),
        ({"InstanceNumber": "two"}, "InstanceNumber"),
        ({"ReferencedSOPSequence": "x"}, "ReferencedSOPSequence"),
    ],
)
def test_bad_parameters_are_400(qido: Any, params: dict[str, str], words: str) -> None:
    client, _ = make_client(qido)
    with pytest.raises(requests.HTTPError) as raised:
        client.search_for_studies(search_filters=params)
    assert words in problem(raised.value.response, 400)
