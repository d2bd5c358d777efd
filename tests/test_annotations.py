"""The viewer's measurements as DICOM SR (POST/GET /api/v1/studies/{study}/annotations) and its
key images as Key Object Selection documents (POST /api/v1/studies/{study}/key-images).

Every kind of measurement goes in, a TID 1500 Comprehensive 3D SR is stored through
ingest (a real archived instance, valid for dciodvfy), and the same list comes back.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import httpx
from pydicom import dcmread

from conftest import RunningServer, require_tool
from webdata import CtSpec, ct_series, stow


def _measurements(series: str, sops: list[str]) -> list[dict[str, Any]]:
    hu = "[hnsf'U]"
    return [
        {
            "kind": "length",
            "series_instance_uid": series,
            "sop_instance_uid": sops[0],
            "points": [[10.5, 20.5], [110.5, 20.5]],
            "values": [{"name": "Length", "value": 50.0, "unit": "mm"}],
        },
        {
            "kind": "angle",
            "series_instance_uid": series,
            "sop_instance_uid": sops[0],
            "points": [[10, 10], [20, 20], [30, 10]],
            "values": [{"name": "Angle", "value": 90.0, "unit": "deg"}],
        },
        {
            "kind": "ellipse",
            "series_instance_uid": series,
            "sop_instance_uid": sops[1],
            "label": "cyst",
            "points": [[10, 20], [30, 20], [20, 15], [20, 25]],
            "values": [
                {"name": "Area", "value": 78.5, "unit": "mm2"},
                {"name": "Mean", "value": 12.5, "unit": hu},
                {"name": "Standard deviation", "value": 3.1, "unit": hu},
            ],
        },
        {
            "kind": "rectangle",
            "series_instance_uid": series,
            "sop_instance_uid": sops[1],
            "points": [[5, 5], [15, 5], [15, 10], [5, 10], [5, 5]],
            "values": [
                {"name": "Area", "value": 12.5, "unit": "mm2"},
                {"name": "Mean", "value": -820.0, "unit": hu},
            ],
        },
        {
            "kind": "probe",
            "series_instance_uid": series,
            "sop_instance_uid": sops[2],
            "points": [[40, 40]],
            "values": [{"name": "Mean", "value": 200.0, "unit": hu}],
        },
        {
            "kind": "arrow",
            "series_instance_uid": series,
            "sop_instance_uid": sops[2],
            "label": "nodule",
            "points": [[40, 40], [60, 60]],
            "values": [],
        },
        {
            "kind": "text",
            "series_instance_uid": series,
            "sop_instance_uid": sops[2],
            "label": "compare with prior",
            "points": [[70, 70]],
            "values": [],
        },
    ]


def test_measurements_round_trip_as_a_valid_sr(server: RunningServer, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{server.settings.http.port}"
    spec = CtSpec(slices=3, size=64)
    images = ct_series(spec)
    stow(base, images)
    url = f"{base}/api/v1/studies/{spec.study_uid}/annotations"
    empty = httpx.get(url)
    assert empty.status_code == 200 and empty.json()["measurements"] == []
    sent = _measurements(spec.series_uid, [str(ds.SOPInstanceUID) for ds in images])
    saved = httpx.post(url, json={"measurements": sent})
    assert saved.status_code == 201, saved.text
    answer = saved.json()
    assert answer["saved_by"] == "anonymous" and answer["saved_at"]
    back = httpx.get(url).json()
    assert back == answer
    for want, got in zip(sent, back["measurements"], strict=True):
        assert got["kind"] == want["kind"]
        assert got["sop_instance_uid"] == want["sop_instance_uid"]
        assert got["series_instance_uid"] == spec.series_uid
        assert got["points"] == [[float(x), float(y)] for x, y in want["points"]]
        assert got["label"] == want.get("label")
        assert [(v["name"], v["value"], v["unit"]) for v in got["values"]] == [
            (v["name"], v["value"], v["unit"]) for v in want["values"]
        ]
    # A real instance of the study, in the "Hilum measurements" series, valid DICOM.
    sr_url = (
        f"{base}/dicomweb/studies/{spec.study_uid}/series/{answer['series_instance_uid']}"
        f"/instances/{answer['sop_instance_uid']}"
    )
    reply = httpx.get(sr_url, headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert reply.status_code == 200
    boundary = reply.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
    body = reply.content.split(f"--{boundary}".encode())[1].split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
    path = tmp_path / "sr.dcm"
    path.write_bytes(body)
    ds = dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert ds.SeriesDescription == "Hilum measurements"
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert ds.PatientID == spec.patient_id and ds.StudyInstanceUID == spec.study_uid
    result = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert not [line for line in output.splitlines() if line.startswith("Error")], output
    # A second save is a new snapshot in the same series; the newest is answered.
    again = httpx.post(url, json={"measurements": sent[:1]}).json()
    assert again["series_instance_uid"] == answer["series_instance_uid"]
    assert again["sop_instance_uid"] != answer["sop_instance_uid"]
    assert len(httpx.get(url).json()["measurements"]) == 1


BAD = [
    ({"points": [[1, 1]]}, "needs 2 points"),
    ({"sop_instance_uid": "1.2.3.4"}, "is not in study"),
    ({"kind": "circle"}, "kind"),
    ({"values": [{"name": "Volume", "value": 1, "unit": "mm3"}]}, "name"),
]


def test_bad_measurements_are_refused(server: RunningServer) -> None:
    base = f"http://127.0.0.1:{server.settings.http.port}"
    spec = CtSpec(slices=1, size=32)
    images = ct_series(spec)
    stow(base, images)
    url = f"{base}/api/v1/studies/{spec.study_uid}/annotations"
    for change, words in BAD:
        record = {**_measurements(spec.series_uid, [str(images[0].SOPInstanceUID)] * 3)[0], **change}
        reply = httpx.post(url, json={"measurements": [record]})
        assert reply.status_code == 400, reply.text
        assert words in reply.json()["detail"], (change, reply.text)
    assert httpx.get(url).json()["measurements"] == []  # nothing stored
    assert httpx.get(f"{base}/api/v1/studies/1.2.3.999/annotations").status_code == 404
    assert httpx.get(f"{base}/api/v1/studies/not-a-uid/annotations").status_code == 400


def test_key_images_are_stored_as_a_valid_key_object_selection(server: RunningServer, tmp_path: Path) -> None:
    """POST /studies/{study}/key-images: a Key Object Selection document (TID 2010) of the
    marked images, in order, stored in the study through ingest and valid for dciodvfy;
    bad input is refused with a problem and stores nothing."""
    base = f"http://127.0.0.1:{server.settings.http.port}"
    spec = CtSpec(slices=4, size=32)
    images = ct_series(spec)
    stow(base, images)
    url = f"{base}/api/v1/studies/{spec.study_uid}/key-images"
    sops = [str(images[i].SOPInstanceUID) for i in (2, 0)]
    for body, status in (
        ({"sop_instance_uids": []}, 400),
        ({"sop_instance_uids": ["1.2.3.4"]}, 400),  # not in the study
        ({"sop_instance_uids": ["not a uid"]}, 400),
        ({"sop_instance_uids": sops, "title": "Of No Interest"}, 400),
        ({"sop_instance_uids": sops, "extra": 1}, 400),
    ):
        reply = httpx.post(url, json=body)
        assert reply.status_code == status, (body, reply.text)
        assert reply.headers["content-type"].startswith("application/problem+json"), reply.text
    missing = httpx.post(f"{base}/api/v1/studies/1.2.3.999/key-images", json={"sop_instance_uids": sops})
    assert missing.status_code == 404
    series = httpx.get(f"{base}/dicomweb/studies/{spec.study_uid}/series").json()
    assert [s["00080060"]["Value"][0] for s in series] == ["CT"]  # nothing stored
    saved = httpx.post(url, json={"sop_instance_uids": sops, "title": "For Teaching", "description": "two"})
    assert saved.status_code == 201, saved.text
    answer = saved.json()
    assert answer["images"] == 2 and answer["title"] == "For Teaching" and answer["saved_by"] == "anonymous"
    reply = httpx.get(
        f"{base}/dicomweb/studies/{spec.study_uid}/series/{answer['series_instance_uid']}"
        f"/instances/{answer['sop_instance_uid']}",
        headers={"Accept": 'multipart/related; type="application/dicom"'},
    )
    assert reply.status_code == 200
    boundary = reply.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
    body = reply.content.split(f"--{boundary}".encode())[1].split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
    path = tmp_path / "ko.dcm"
    path.write_bytes(body)
    ds = dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.59" and ds.Modality == "KO"
    assert ds.ConceptNameCodeSequence[0].CodeMeaning == "For Teaching"
    referenced = [
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in ds.ContentSequence
        if item.ValueType == "IMAGE"
    ]
    assert referenced == sops  # in the order marked
    result = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert not [line for line in output.splitlines() if line.startswith("Error")], output
