"""DICOMweb error handling and odd input: content negotiation, hostile query values,
non-ASCII names, requests cut off by the client, models missing from the index,
unknown routes and methods."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from pydicom.dataset import Dataset

from conftest import DEFAULT_BACKENDS
from factory import StudySpec, make_study
from test_dicomweb_support import (
    STOW_TYPE,
    base_url,
    encode,
    make_client,
    multipart,
    parse_multipart,
    problem,
    running_server,
    staging_files,
    stored_files,
    values,
)

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


@pytest.fixture(scope="module", params=DEFAULT_BACKENDS)
def srv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with running_server(request.param, tmp_path_factory) as server:
        yield server


@pytest.fixture(scope="module")
def ct(srv: Any) -> Dataset:
    client, _ = make_client(srv)
    study = make_study(StudySpec(slices=1, patient_id="E-CT"))
    client.store_instances(study)
    return study[0]


def _url(server: Any, ds: Dataset, suffix: str = "") -> str:
    return (
        f"{base_url(server)}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}{suffix}"
    )


# -- content negotiation ------------------------------------------------------------------------
def test_accept_negotiation_for_instances(srv: Any, ct: Dataset) -> None:
    url = _url(srv, ct)
    dicom = 'multipart/related; type="application/dicom"'
    # The best acceptable that can be produced: JPEG baseline cannot hold 16-bit CT, so the
    # explicitly acceptable (lower q) explicit VR little endian is sent instead of a 406.
    accept = f"{dicom}; transfer-syntax={JPEG_BASELINE}, {dicom}; transfer-syntax={EXPLICIT_LE}; q=0.5"
    response = httpx.get(url, headers={"Accept": accept}, timeout=30)
    assert response.status_code == 200, response.text
    ((headers, _),) = parse_multipart(response)
    assert headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
    # Only JPEG baseline acceptable: 406.
    problem(httpx.get(url, headers={"Accept": f"{dicom}; transfer-syntax={JPEG_BASELINE}"}), 406)
    # Media types that are not DICOM.
    for accept in ("image/jpeg", "application/dicom+json", 'multipart/related; type="image/jpeg"'):
        problem(httpx.get(url, headers={"Accept": accept}), 406)
    problem(httpx.get(url, headers={"Accept": "application/dicom; q=high"}), 400)
    # No Accept header at all: multipart DICOM, explicit VR little endian.
    response = httpx.get(url, headers={"Accept": ""}, timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith('multipart/related; type="application/dicom"')


def test_accept_negotiation_for_metadata_and_frames(srv: Any, ct: Dataset) -> None:
    problem(httpx.get(_url(srv, ct, "/metadata"), headers={"Accept": "application/dicom"}), 406)
    response = httpx.get(_url(srv, ct, "/metadata"), headers={"Accept": "application/json"})
    assert response.status_code == 200 and len(response.json()) == 1
    frames = _url(srv, ct, "/frames/1")
    problem(httpx.get(frames, headers={"Accept": 'multipart/related; type="image/jpeg"'}), 406)  # 16 bits
    # ... unless something else is acceptable too.
    accept = 'multipart/related; type="image/jpeg", multipart/related; type="application/octet-stream"; q=0.5'
    ((headers, frame),) = parse_multipart(httpx.get(frames, headers={"Accept": accept}))
    assert headers["content-type"] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    assert frame == ct.PixelData
    problem(httpx.get(frames, headers={"Accept": "text/html"}), 406)
    response = httpx.get(frames, headers={"Accept": "application/octet-stream"})  # single part
    assert response.status_code == 200 and response.content == ct.PixelData
    several = _url(srv, ct, "/frames/1,1")
    problem(httpx.get(several, headers={"Accept": "application/octet-stream"}), 406)  # needs multipart
    rendered = _url(srv, ct, "/rendered")
    response = httpx.get(rendered, params={"accept": "image/png"}, headers={"Accept": "image/jpeg"})
    assert response.headers["content-type"] == "image/png"  # the query parameter wins (PS3.18 8.3.3.1)


# -- hostile and odd query values ---------------------------------------------------------------
@pytest.fixture(scope="module")
def odd(srv: Any) -> dict[str, Dataset]:
    client, _ = make_client(srv)
    out: dict[str, Dataset] = {}
    for key, description, name in (
        ("underscore", "A_B", "ODD^ONE"),
        ("letter", "AXB", "ODD^TWO"),
        ("percent", "A%B", "ODD^THREE"),
        ("quote", "O'Brien; DROP TABLE studies", "O'BRIEN^PAT"),
        ("unicode", "Röntgen Thorax", "Müller^Jürgen"),
    ):
        (ds,) = make_study(StudySpec(slices=1, patient_id=f"ODD-{key}", description=description, size=4))
        ds.PatientName = name
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.InstitutionAddress = description
        client.store_instances([ds])
        out[key] = ds
    return out


def test_like_and_regex_characters_are_literal(srv: Any, odd: dict[str, Dataset]) -> None:
    client, _ = make_client(srv)

    def ids(**filters: str) -> set[str]:
        return {values(r, "00100020")[0] for r in client.search_for_studies(search_filters=filters)}

    assert ids(StudyDescription="A_B") == {"ODD-underscore"}
    assert ids(StudyDescription="A_*") == {"ODD-underscore"}
    assert ids(StudyDescription="A%*") == {"ODD-percent"}
    assert ids(StudyDescription="A?B") == {"ODD-underscore", "ODD-letter", "ODD-percent"}
    assert ids(StudyDescription="O'Brien; DROP TABLE studies") == {"ODD-quote"}
    assert ids(PatientName="O'BRIEN*") == {"ODD-quote"}
    # The same through the stored DICOM JSON (an attribute without an index column).
    assert ids(InstitutionAddress="A_*") == {"ODD-underscore"}
    assert ids(InstitutionAddress="A.B") == set()
    assert ids(InstitutionAddress="A%B") == {"ODD-percent"}
    assert len(client.search_for_studies()) >= 6  # nothing was dropped


def test_non_ascii_names(srv: Any, odd: dict[str, Dataset]) -> None:
    client, _ = make_client(srv)
    for name in ("Müller^Jürgen", "MÜLLER*", "müller^jürgen"):
        (found,) = client.search_for_studies(search_filters={"PatientName": name})
        assert values(found, "00100010") == [{"Alphabetic": "Müller^Jürgen"}]
        assert values(found, "00081030") == ["Röntgen Thorax"]
    (found,) = client.search_for_studies(fuzzymatching=True, search_filters={"PatientName": "jür"})
    assert values(found, "00100020") == ["ODD-unicode"]
    model = client.retrieve_study_metadata(odd["unicode"].StudyInstanceUID)[0]
    assert Dataset.from_json(model).PatientName == "Müller^Jürgen"


# -- requests cut off by the client -------------------------------------------------------------
def test_client_hanging_up_mid_upload_stores_nothing(srv: Any) -> None:
    study = make_study(StudySpec(slices=3, patient_id="E-HANGUP"))
    body = multipart([("application/dicom", encode(ds)) for ds in study])
    before = stored_files(srv)
    head = (
        f"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {STOW_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", srv.settings.http.port), timeout=10) as sock:
        sock.sendall(head + body[: len(body) // 2])
    deadline = time.monotonic() + 15
    while staging_files(srv) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert staging_files(srv) == []
    assert stored_files(srv) == before
    client, _ = make_client(srv)
    assert client.search_for_studies(search_filters={"PatientID": "E-HANGUP"}) == []
    assert httpx.get(f"{base_url(srv)}/studies", params={"limit": "1"}).status_code == 200  # still serving


# -- routes and methods -------------------------------------------------------------------------
def test_unknown_routes_and_methods(srv: Any, ct: Dataset) -> None:
    base = base_url(srv)
    problem(httpx.get(f"{base}/nothing-here"), 404)
    problem(httpx.get(f"{base}/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}/nothing"), 404)
    problem(httpx.delete(f"{base}/studies/{ct.StudyInstanceUID}"), 405)
    problem(httpx.put(f"{base}/studies", content=b"x"), 405)
    problem(httpx.post(f"{base}/studies/{ct.StudyInstanceUID}/metadata", content=b"x"), 405)


# -- instances indexed before their DICOM JSON was kept -----------------------------------------
def test_metadata_missing_from_the_index_is_built_from_the_file(srv: Any) -> None:
    client, _ = make_client(srv)
    (ds,) = make_study(StudySpec(slices=1, patient_id="E-BACKFILL"))
    ds.InstitutionAddress = "7 Backfill Lane"
    client.store_instances([ds])
    engine = sa.create_engine(srv.settings.index_url)
    instances = sa.table("instances", sa.column("sop_instance_uid"), sa.column("dicom_json"))
    where = instances.c.sop_instance_uid == ds.SOPInstanceUID
    try:
        with engine.begin() as conn:
            assert conn.execute(sa.update(instances).where(where).values(dicom_json=None)).rowcount == 1
        model = client.retrieve_instance_metadata(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        )
        assert values(model, "00080081") == ["7 Backfill Lane"]
        (found,) = client.search_for_studies(search_filters={"InstitutionAddress": "7 Backfill*"})
        assert values(found, "00100020") == ["E-BACKFILL"]
        with engine.connect() as conn:  # and kept for next time
            assert conn.execute(sa.select(instances.c.dicom_json).where(where)).scalar_one() is not None
    finally:
        engine.dispose()
