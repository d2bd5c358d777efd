"""Group rules: sets of studies (a site, a department) opened to the users of a group.

``auth.group_rules`` match study-level attributes with the C-FIND matcher; a user
outside the roles that see every study sees the studies matching a rule of one of
their groups, through QIDO-RS, WADO-RS and the API alike.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from pydicom import dcmwrite
from pydicom.filebase import DicomBytesIO

from auth_util import add_user, base_url, start_secure_server, token
from conftest import stop_server
from factory import StudySpec, make_study
from hilum.config import GroupRule

RULES = [
    {"group": "site-a", "match": {"InstitutionName": "SITE A*"}},
    {"group": "cardio", "match": {"ModalitiesInStudy": "US", "StudyDate": "20240101-20241231"}},
]


def _stow(base: str, token: str, spec: StudySpec, institution: str, modality: str = "CT") -> str:
    parts = []
    for ds in make_study(spec):
        ds.InstitutionName = institution
        ds.Modality = modality
        buffer = DicomBytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        parts.append(b"--B\r\nContent-Type: application/dicom\r\n\r\n" + buffer.getvalue() + b"\r\n")
    headers = {"Content-Type": 'multipart/related; type="application/dicom"; boundary=B',
               "Authorization": f"Bearer {token}"}
    reply = httpx.post(f"{base}/dicomweb/studies", content=b"".join(parts) + b"--B--\r\n", timeout=60,
                       headers=headers)
    assert reply.status_code == 200, reply.text
    return spec.study_uid


@pytest.mark.postgres
def test_group_rules_open_sets_of_studies(tmp_path: Path, database_url: str) -> None:
    server, password = start_secure_server(
        tmp_path, database_url=database_url, env={"HILUM_AUTH__GROUP_RULES": json.dumps(RULES)}
    )
    settings = server.settings
    try:
        base = base_url(server)
        admin = token(base, "admin", password)
        for user, groups in (("north", "site-a"), ("echo", "cardio"), ("nobody", "")):
            add_user(settings, user, "referring", groups=groups)
        site_a = _stow(base, admin, StudySpec(patient_id="A1", slices=1), "SITE A NORTH")
        site_b = _stow(base, admin, StudySpec(patient_id="B1", slices=1), "SITE B")
        echo_2024 = _stow(base, admin, StudySpec(patient_id="U1", slices=1, study_date="20240310"),
                          "SITE B", modality="US")
        echo_2023 = _stow(base, admin, StudySpec(patient_id="U2", slices=1, study_date="20230310"),
                          "SITE B", modality="US")
        expected = {"north": {site_a}, "echo": {echo_2024}, "nobody": set()}
        for user, studies in expected.items():
            headers = {"Authorization": f"Bearer {token(base, user)}"}
            qido = httpx.get(f"{base}/dicomweb/studies", headers=headers)
            assert qido.status_code in (200, 204), qido.text
            seen = {s["0020000D"]["Value"][0] for s in (qido.json() if qido.status_code == 200 else [])}
            assert seen == studies, user
            listed = httpx.get(f"{base}/api/v1/studies", headers=headers).json()
            assert {s["StudyInstanceUID"] for s in listed["items"]} == studies, user
            for uid in (site_a, site_b, echo_2024, echo_2023):
                reply = httpx.get(f"{base}/dicomweb/studies/{uid}/metadata", headers=headers)
                assert reply.status_code == (200 if uid in studies else 404), (user, uid)
    finally:
        stop_server(server)


def test_group_rules_are_checked() -> None:
    assert GroupRule(group="site-a", match={"InstitutionName": "SITE A*"})
    with pytest.raises(ValidationError, match="not a study-level attribute"):
        GroupRule(group="x", match={"PatientID": "123"})
    with pytest.raises(ValidationError, match="not a study-level attribute"):
        GroupRule(group="x", match={"NoSuchKeyword": "1"})
    with pytest.raises(ValidationError):
        GroupRule(group="x", match={"StudyDate": "not-a-date"})
    with pytest.raises(ValidationError):
        GroupRule(group="x", match={})
