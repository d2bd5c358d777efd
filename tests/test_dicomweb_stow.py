"""STOW-RS (PS3.18 10.5) against a real `hilum serve`, with dicomweb-client as the client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from conftest import DEFAULT_BACKENDS
from factory import StudySpec, make_study
from test_dicomweb_support import (
    STOW_TYPE,
    base_url,
    encode,
    local,
    make_client,
    multipart,
    problem,
    running_server,
    sample,
    staging_files,
    stored_files,
)

# Real files from pydicom's test data, one SOP Instance UID each.
REAL_FILES = [
    "CT_small.dcm",  # explicit VR little endian CT
    "MR_small_implicit.dcm",  # implicit VR little endian
    "JPEG2000.dcm",  # JPEG 2000
    "SC_rgb_rle.dcm",  # RLE, colour
    "emri_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless, multi-frame enhanced MR
    "SC_rgb_dcmtk_+eb+cr.dcm",  # JPEG baseline, colour
    "JPGLosslessP14SV1_1s_1f_8b.dcm",  # JPEG lossless process 14
    "test-SR.dcm",  # comprehensive SR, no pixels
    "rtplan.dcm",  # implicit VR, no pixels
    "liver.dcm",  # 1-bit segmentation, multi-frame
]
FAILURE_REASONS = {0xA700, 0xA900, 0xC000, 0x0110, 0x0122, 0xC122}


@pytest.fixture(scope="module", params=DEFAULT_BACKENDS)
def stow_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with running_server(request.param, tmp_path_factory) as server:
        yield server


def _referenced(response: Dataset) -> dict[str, Dataset]:
    return {str(item.ReferencedSOPInstanceUID): item for item in response.get("ReferencedSOPSequence", [])}


def _failed(body: dict[str, Any]) -> list[dict[str, Any]]:
    return list(body.get("00081198", {}).get("Value", []))


def test_store_generated_study(stow_server: Any) -> None:
    client, recorder = make_client(stow_server)
    study = make_study(StudySpec(series=2, slices=3, patient_id="STOW-GEN"))
    response = client.store_instances(study)
    assert recorder.status == 200
    assert "FailedSOPSequence" not in response
    study_uid = study[0].StudyInstanceUID
    assert response.RetrieveURL.endswith(f"/dicomweb/studies/{study_uid}")
    referenced = _referenced(response)
    assert set(referenced) == {ds.SOPInstanceUID for ds in study}
    for ds in study:
        item = referenced[ds.SOPInstanceUID]
        assert item.ReferencedSOPClassUID == ds.SOPClassUID
        assert "WarningReason" not in item
        assert item.RetrieveURL.endswith(
            f"/studies/{study_uid}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        )
    # The RetrieveURL of each instance leads to it (after putting back the port, see local()).
    first = referenced[study[0].SOPInstanceUID].RetrieveURL
    got = httpx.get(local(first, stow_server), headers={"Accept": "application/dicom"}, timeout=30)
    assert got.status_code == 200 and study[0].SOPInstanceUID.encode() in got.content
    found = client.search_for_instances(study_instance_uid=study_uid)
    assert len(found) == 6


def test_store_real_files_and_get_them_back_unchanged(stow_server: Any) -> None:
    client, recorder = make_client(stow_server)
    originals = [sample(name) for name in REAL_FILES]
    response = client.store_instances(originals)
    assert recorder.status == 200, response
    referenced = _referenced(response)
    assert set(referenced) == {ds.SOPInstanceUID for ds in originals}
    for name, original in zip(REAL_FILES, originals, strict=True):
        item = referenced[original.SOPInstanceUID]
        assert item.ReferencedSOPClassUID == original.SOPClassUID, name
        got = client.retrieve_instance(
            original.StudyInstanceUID,
            original.SeriesInstanceUID,
            original.SOPInstanceUID,
            media_types=(("application/dicom", "*"),),
        )
        assert got.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID, name
        assert got == original, name  # every data element, pixel data bytes included


def test_study_path_stores_only_that_study(stow_server: Any) -> None:
    client, recorder = make_client(stow_server)
    mine = make_study(StudySpec(slices=2, patient_id="STOW-MINE"))
    other = make_study(StudySpec(slices=1, patient_id="STOW-OTHER"))
    response = client.store_instances(
        [mine[0], other[0], mine[1]], study_instance_uid=mine[0].StudyInstanceUID
    )
    assert recorder.status == 202  # PS3.18 10.5.3: some stored, some failed
    assert set(_referenced(response)) == {mine[0].SOPInstanceUID, mine[1].SOPInstanceUID}
    (failed,) = response.FailedSOPSequence
    assert failed.ReferencedSOPInstanceUID == other[0].SOPInstanceUID
    assert failed.ReferencedSOPClassUID == other[0].SOPClassUID
    assert failed.FailureReason == 0xA900
    assert client.search_for_studies(search_filters={"PatientID": "STOW-OTHER"}) == []
    assert len(client.search_for_instances(study_instance_uid=mine[0].StudyInstanceUID)) == 2

    # Nothing of the request stored: 409 (dicomweb-client raises).
    lone = make_study(StudySpec(slices=1, patient_id="STOW-LONE"))
    with pytest.raises(requests.HTTPError) as raised:
        client.store_instances(lone, study_instance_uid=mine[0].StudyInstanceUID)
    assert raised.value.response.status_code == 409
    body = raised.value.response.json()
    assert "00081199" not in body
    assert [f["00081197"]["Value"] for f in _failed(body)] == [[0xA900]]
    assert client.search_for_studies(search_filters={"PatientID": "STOW-LONE"}) == []


def test_parts_that_are_not_dicom_fail_the_others_are_stored(stow_server: Any) -> None:
    client, _ = make_client(stow_server)
    study = make_study(StudySpec(slices=2, patient_id="STOW-MIXED"))
    body = multipart(
        [
            ("application/dicom", encode(study[0])),
            ("text/plain", b"hello, I am not an instance"),
            ("application/dicom", b"\x00garbage" * 50),
            ("application/dicom", encode(study[1])),
        ]
    )
    response = httpx.post(
        f"{base_url(stow_server)}/studies", content=body, headers={"Content-Type": STOW_TYPE}, timeout=30
    )
    assert response.status_code == 202
    assert response.headers["content-type"].startswith("application/dicom+json")
    result = Dataset.from_json(response.json())
    assert {str(i.ReferencedSOPInstanceUID) for i in result.ReferencedSOPSequence} == {
        ds.SOPInstanceUID for ds in study
    }
    failures = result.FailedSOPSequence
    assert len(failures) == 2
    for failure in failures:
        assert failure.FailureReason == 0xC000  # cannot understand
    texts = [f["00204000"]["Value"][0] for f in _failed(response.json())]
    assert "text/plain" in texts[0] and "not a DICOM file" in texts[1]
    assert len(client.search_for_instances(search_filters={"PatientID": "STOW-MIXED"})) == 2


def test_storing_the_same_instances_twice(stow_server: Any) -> None:
    client, recorder = make_client(stow_server)
    study = make_study(StudySpec(slices=3, patient_id="STOW-TWICE"))
    client.store_instances(study)
    files = stored_files(stow_server)
    again = client.store_instances(study)
    assert recorder.status == 200
    assert set(_referenced(again)) == {ds.SOPInstanceUID for ds in study}
    assert stored_files(stow_server) == files
    assert len(client.search_for_instances(search_filters={"PatientID": "STOW-TWICE"})) == 3


def test_stored_with_a_warning_is_202(stow_server: Any) -> None:
    """A patient ID already stored under another name: stored, with a warning (B007)."""
    client, recorder = make_client(stow_server)
    client.store_instances(make_study(StudySpec(slices=1, patient_id="STOW-WARN", patient_name="A^B")))
    second = make_study(StudySpec(slices=1, patient_id="STOW-WARN", patient_name="C^D"))
    response = client.store_instances(second)
    assert recorder.status == 202
    (item,) = response.ReferencedSOPSequence
    assert item.ReferencedSOPInstanceUID == second[0].SOPInstanceUID
    assert item.WarningReason == 0xB007
    assert "FailedSOPSequence" not in response


@pytest.mark.parametrize("cut", ["closing-boundary", "inside-a-part"])
def test_truncated_body_stores_nothing(stow_server: Any, cut: str) -> None:
    client, _ = make_client(stow_server)
    study = make_study(StudySpec(slices=3, patient_id=f"STOW-CUT-{cut}"))
    body = multipart([("application/dicom", encode(ds)) for ds in study], close=False)
    if cut == "inside-a-part":
        body = body[: len(body) - 3000]
    before = stored_files(stow_server)
    response = httpx.post(
        f"{base_url(stow_server)}/studies", content=body, headers={"Content-Type": STOW_TYPE}, timeout=30
    )
    detail = problem(response, 400)
    assert "truncated" in detail or "malformed" in detail
    assert client.search_for_studies(search_filters={"PatientID": f"STOW-CUT-{cut}"}) == []
    assert stored_files(stow_server) == before
    assert staging_files(stow_server) == []


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/dicom", 415),
        ("multipart/form-data; boundary=b0undary", 415),
        ('multipart/related; type="application/dicom+json"; boundary=b0undary', 415),
        ("", 415),
        ('multipart/related; type="application/dicom"', 400),  # no boundary
    ],
)
def test_wrong_content_type(stow_server: Any, content_type: str, status: int) -> None:
    study = make_study(StudySpec(slices=1, patient_id="STOW-CT"))
    body = multipart([("application/dicom", encode(study[0]))])
    headers = {"Content-Type": content_type} if content_type else {}
    response = httpx.post(f"{base_url(stow_server)}/studies", content=body, headers=headers, timeout=30)
    problem(response, status)
    client, _ = make_client(stow_server)
    assert client.search_for_studies(search_filters={"PatientID": "STOW-CT"}) == []


def test_empty_multipart_is_400(stow_server: Any) -> None:
    response = httpx.post(
        f"{base_url(stow_server)}/studies",
        content=b"--b0undary--\r\n",
        headers={"Content-Type": STOW_TYPE},
        timeout=30,
    )
    problem(response, 400)


# -- a server with a small upload limit and a public URL ------------------------------------------
LIMIT = 100_000


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    env = {
        "HILUM_HTTP__MAX_UPLOAD_BYTES": str(LIMIT),
        "HILUM_HTTP__PUBLIC_URL": "http://127.0.0.1:{http_port}/",
    }
    with running_server(DEFAULT_BACKENDS[0], tmp_path_factory, env=env) as server:
        yield server


def test_upload_limit_413_and_nothing_stored(small_server: Any) -> None:
    study = make_study(StudySpec(slices=40, size=64, patient_id="STOW-BIG"))  # ~330 kB of pixels
    url = f"{base_url(small_server)}/studies"
    # With Content-Length (refused before the body is read).
    body = multipart([("application/dicom", encode(ds)) for ds in study])
    assert len(body) > LIMIT
    problem(httpx.post(url, content=body, headers={"Content-Type": STOW_TYPE}, timeout=30), 413)
    # Chunked, without Content-Length (refused once the limit is crossed): dicomweb-client
    # switches to chunked transfer encoding when the body exceeds its chunk size.
    client, _ = make_client(small_server, chunk_size=16_384)
    with pytest.raises(requests.HTTPError) as raised:
        client.store_instances(study)
    assert raised.value.response.status_code == 413
    problem(raised.value.response, 413)
    assert client.search_for_studies(search_filters={"PatientID": "STOW-BIG"}) == []
    assert stored_files(small_server) == set()
    assert staging_files(small_server) == []
    # Under the limit, chunked too, all is well.
    small = make_study(StudySpec(slices=2, size=64, patient_id="STOW-SMALL"))
    client.store_instances(small)
    assert len(client.search_for_instances(search_filters={"PatientID": "STOW-SMALL"})) == 2


def test_public_url_in_retrieve_and_bulkdata_urls(small_server: Any) -> None:
    """http.public_url makes every URL the server hands out absolute, port included."""
    client, _ = make_client(small_server)
    public = f"http://127.0.0.1:{small_server.settings.http.port}/dicomweb"
    ds = make_study(StudySpec(slices=1, patient_id="STOW-PUBLIC"))[0]
    ds.StudyInstanceUID = generate_uid()
    response = client.store_instances([ds])
    assert response.RetrieveURL == f"{public}/studies/{ds.StudyInstanceUID}"
    assert response.ReferencedSOPSequence[0].RetrieveURL.startswith(public + "/studies/")
    (found,) = client.search_for_studies(search_filters={"PatientID": "STOW-PUBLIC"})
    assert found["00081190"]["Value"] == [f"{public}/studies/{ds.StudyInstanceUID}"]
    (metadata,) = client.retrieve_study_metadata(ds.StudyInstanceUID)
    uri = metadata["7FE00010"]["BulkDataURI"]
    assert uri.startswith(public + "/studies/")
    assert client.retrieve_bulkdata(uri, media_types=("application/octet-stream",))[0] == ds.PixelData
