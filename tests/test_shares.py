"""Share links: create, list, revoke; open with and without PIN; expiry; what a share sees.

One real `hilum serve` with authentication on (as a new install has it). The
recipient of a link is driven the way the web app and API clients drive it:
POST /api/v1/shares/open, then DICOMweb and the management API with the
session cookie (+ CSRF token) or the bearer token it answers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from sqlalchemy import create_engine, update

from auth_util import PASSWORD, hilum_cli, start_secure_server
from auth_util import token as bearer_token
from conftest import RunningServer, stop_server
from factory import StudySpec, stow_study
from hilum.auth.policy import SHARE_PERMISSIONS, Perm, required_permission, share_route_allowed
from hilum.config import RemoteAE
from hilum.dimse.scu import Scu
from hilum.domain.clock import utcnow
from hilum.shares.models import share_links_t

ON = {
    "HILUM_AUTH__ENABLED": "true",
    "HILUM_SHARES__PIN_ATTEMPTS": "3",
    "HILUM_JOBS__POLL_INTERVAL": "0.5",
    "HILUM_JOBS__HOUSEKEEPING_INTERVAL": "1",
}
REFERRING = "HOUSE^GREGORY"
# The shared patient's identifying values: none may reach the recipient of a de-identified link.
PATIENT = StudySpec(
    patient_id="PID-7731",
    patient_name="QUIMBY^ALICE",
    birth_date="19651123",
    accession="ACC-99123",
    description="CT CHEST QUIMBY",
    referring=REFERRING,
    slices=2,
)


_hilum = hilum_cli


class Site:
    def __init__(self, server: RunningServer, admin_password: str) -> None:
        self.server = server
        self.base = f"http://127.0.0.1:{server.settings.http.port}"
        self.tokens = {"administrator": self.login("admin", admin_password)}
        self.own: list[Any] = []
        self.other: list[Any] = []

    def login(self, username: str, password: str = PASSWORD) -> str:
        return bearer_token(self.base, username, password)

    def as_(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def share(self, role: str = "radiologist", **body: Any) -> dict[str, Any]:
        body.setdefault("study_uids", [self.own[0].StudyInstanceUID])
        reply = httpx.post(f"{self.base}/api/v1/shares", json=body, headers=self.as_(role))
        assert reply.status_code == 201, reply.text
        return dict(reply.json())

    def open_token(self, token: str, pin: str | None = None) -> dict[str, str]:
        reply = httpx.post(
            f"{self.base}/api/v1/shares/open", json={"token": token, "pin": pin, "as_token": True}
        )
        assert reply.status_code == 200, reply.text
        return {"Authorization": f"Bearer {reply.json()['access_token']}"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("shares")
    server, admin_password = start_secure_server(tmp, env=ON)
    settings = server.settings
    try:
        site = Site(server, admin_password)
        for role in ("radiologist", "technologist"):
            _hilum(settings, "user", "add", role, "--role", role, "--password-stdin", stdin=PASSWORD + "\n")
        _hilum(
            settings,
            "user",
            "add",
            "referring",
            "--role",
            "referring",
            "--person-name",
            REFERRING,
            "--password-stdin",
            stdin=PASSWORD + "\n",
        )
        for role in ("radiologist", "technologist", "referring"):
            site.tokens[role] = site.login(role)
        admin = site.tokens["administrator"]
        site.own = stow_study(site.base, PATIENT, admin)
        site.other = stow_study(
            site.base, StudySpec(patient_id="OTHER", referring="WILSON^JAMES", slices=2), admin
        )
        yield site
    finally:
        stop_server(server)


def _paths(study: Any) -> dict[str, str]:
    s, se, i = study.StudyInstanceUID, study.SeriesInstanceUID, study.SOPInstanceUID
    instance = f"/dicomweb/studies/{s}/series/{se}/instances/{i}"
    return {
        "metadata": f"/dicomweb/studies/{s}/metadata",
        "series": f"/dicomweb/studies/{s}/series",
        "instance": instance,
        "rendered": f"{instance}/rendered",
        "thumbnail": f"{instance}/thumbnail",
        "frame": f"{instance}/frames/1",
        "wado-uri": f"/dicomweb/wado?requestType=WADO&studyUID={s}&seriesUID={se}&objectUID={i}",
        "study": f"/api/v1/studies/{s}",
        "series-detail": f"/api/v1/series/{se}",
        "instance-detail": f"/api/v1/instances/{i}",
    }


# -- the sharer's side -----------------------------------------------------------------------


def test_create_list_get_and_revoke(site: Site) -> None:
    own = site.own[0].StudyInstanceUID
    created = site.share(expires_in_hours=2, note="second opinion, Dr Who")
    assert created["token"].startswith("hsl_") and created["url"] == f"/s/{created['token']}"
    assert created["study_uids"] == [own] and created["created_by"] == "radiologist"
    assert created["status"] == "active" and created["ready"] and not created["has_pin"]
    assert not created["deidentified"] and not created["allow_download"]
    share_id = created["id"]
    mine = httpx.get(f"{site.base}/api/v1/shares", headers=site.as_("radiologist")).json()
    assert share_id in [s["id"] for s in mine] and all(s["token"] is None for s in mine)
    naming = httpx.get(
        f"{site.base}/api/v1/shares", params={"study_uid": own}, headers=site.as_("radiologist")
    ).json()
    assert naming[0]["id"] == share_id  # newest first
    filtered = httpx.get(
        f"{site.base}/api/v1/shares",
        params={"study_uid": site.other[0].StudyInstanceUID},
        headers=site.as_("radiologist"),
    ).json()
    assert share_id not in [s["id"] for s in filtered]
    # Others do not see it; administrators see everyone's.
    theirs = httpx.get(f"{site.base}/api/v1/shares", headers=site.as_("technologist")).json()
    assert share_id not in [s["id"] for s in theirs]
    assert (
        httpx.get(f"{site.base}/api/v1/shares/{share_id}", headers=site.as_("technologist")).status_code
        == 404
    )
    assert (
        httpx.delete(f"{site.base}/api/v1/shares/{share_id}", headers=site.as_("technologist")).status_code
        == 404
    )
    everyone = httpx.get(f"{site.base}/api/v1/shares", headers=site.as_("administrator")).json()
    assert share_id in [s["id"] for s in everyone]
    one = httpx.get(f"{site.base}/api/v1/shares/{share_id}", headers=site.as_("radiologist")).json()
    assert one["note"] == "second opinion, Dr Who" and one["token"] is None
    # Revoked by its creator.
    assert (
        httpx.delete(f"{site.base}/api/v1/shares/{share_id}", headers=site.as_("radiologist")).status_code
        == 204
    )
    one = httpx.get(f"{site.base}/api/v1/shares/{share_id}", headers=site.as_("radiologist")).json()
    assert one["status"] == "revoked" and one["revoked_by"] == "radiologist"


def test_what_may_be_shared(site: Site) -> None:
    own, other = site.own[0].StudyInstanceUID, site.other[0].StudyInstanceUID
    url = f"{site.base}/api/v1/shares"
    # A referring physician may share the studies they see, not others.
    assert httpx.post(url, json={"study_uids": [own]}, headers=site.as_("referring")).status_code == 201
    refused = httpx.post(url, json={"study_uids": [own, other]}, headers=site.as_("referring"))
    missing = httpx.post(url, json={"study_uids": [own, "1.2.3.999"]}, headers=site.as_("referring"))
    assert refused.status_code == 404 and other in refused.json()["detail"]
    # The same answer as for a study that is not stored: its existence is not disclosed.
    assert missing.status_code == 404
    assert missing.json()["detail"] == refused.json()["detail"].replace(other, "1.2.3.999")
    unknown = httpx.post(url, json={"study_uids": ["1.2.3.999"]}, headers=site.as_("radiologist"))
    assert unknown.status_code == 404
    for body in (
        {"study_uids": []},
        {"study_uids": [own] * 51},
        {"study_uids": [own], "expires_in_hours": 24 * 31},
        {"study_uids": [own], "expires_in_hours": 0},
        {"study_uids": [own], "pin": "12"},
        {"study_uids": [own], "pin": "12ab"},
        {"study_uids": ["not a uid"]},
    ):
        reply = httpx.post(url, json=body, headers=site.as_("radiologist"))
        assert reply.status_code == 400, (body, reply.text)


# -- the recipient's side --------------------------------------------------------------------


def test_opened_link_sees_only_the_shared_study(site: Site) -> None:
    created = site.share()
    own, other = site.own[0], site.other[0]
    with httpx.Client(base_url=site.base, timeout=60) as browser:
        opened = browser.post("/api/v1/shares/open", json={"token": created["token"]})
        assert opened.status_code == 200, opened.text
        body = opened.json()
        assert body["study_uids"] == [own.StudyInstanceUID] and body["csrf_token"]
        assert not body["deidentified"] and not body["allow_download"] and body["ready"]
        cookie = opened.headers["set-cookie"].lower()
        assert "hilum_session=hss_" in cookie and "httponly" in cookie and "samesite=strict" in cookie
        csrf = {"X-CSRF-Token": body["csrf_token"]}
        me = browser.get("/api/v1/auth/me").json()
        assert me["via"] == "share" and me["username"] == f"share:{created['id']} (created by radiologist)"
        session = browser.get("/api/v1/shares/session").json()
        assert session["study_uids"] == [own.StudyInstanceUID] and session["share_id"] == created["id"]
        # Searches return the shared study only.
        studies = browser.get("/dicomweb/studies").json()
        assert [s["0020000D"]["Value"][0] for s in studies] == [own.StudyInstanceUID]
        instances = browser.get("/dicomweb/instances").json()
        assert {i["0020000D"]["Value"][0] for i in instances} == {own.StudyInstanceUID}
        listed = browser.get("/api/v1/studies").json()
        assert [s["StudyInstanceUID"] for s in listed["items"]] == [own.StudyInstanceUID]
        # Everything the viewer needs on the shared study; nothing on the other.
        for name, path in _paths(own).items():
            headers = {"Accept": "image/jpeg"} if name in ("rendered", "thumbnail") else {}
            if name == "frame":
                headers = {"Accept": 'multipart/related; type="application/octet-stream"'}
            assert browser.get(path, headers=headers).status_code == 200, name
        for name, path in _paths(other).items():
            assert browser.get(path).status_code == 404, name  # as if it did not exist
        # No patients, no writes, no downloads, no management.
        for path in (
            "/api/v1/patients",
            f"/api/v1/patients/{own.PatientID}",
            "/api/v1/shares",
            "/api/v1/jobs",
            "/api/v1/statistics",
            "/api/v1/remote-aes",
            "/api/v1/changes",
            f"/api/v1/studies/{own.StudyInstanceUID}/archive",
            f"/api/v1/studies/{own.StudyInstanceUID}/grants",
        ):
            assert browser.get(path).status_code == 403, path
        stow = browser.post(
            "/dicomweb/studies",
            content=b"--B--\r\n",
            headers={**csrf, "Content-Type": 'multipart/related; type="application/dicom"; boundary=B'},
        )
        assert stow.status_code == 403
        assert browser.delete(f"/api/v1/studies/{own.StudyInstanceUID}", headers=csrf).status_code == 403
        assert browser.post("/api/v1/auth/api-keys", json={"name": "x"}, headers=csrf).status_code == 403
        assert (
            browser.post(
                "/api/v1/shares", json={"study_uids": [own.StudyInstanceUID]}, headers=csrf
            ).status_code
            == 403
        )
        # The session ends on logout like any other.
        assert browser.post("/api/v1/auth/logout", headers=csrf).status_code == 204
        assert browser.get("/dicomweb/studies").status_code == 401


def test_download_only_when_the_link_allows_it(site: Site) -> None:
    study = site.own[0].StudyInstanceUID
    archive = f"{site.base}/api/v1/studies/{study}/archive"
    without = site.open_token(site.share()["token"])
    assert httpx.get(archive, headers=without).status_code == 403
    allowed = site.open_token(site.share(allow_download=True)["token"])
    reply = httpx.get(archive, headers=allowed, timeout=60)
    assert reply.status_code == 200 and reply.content[:2] == b"PK"
    other = f"{site.base}/api/v1/studies/{site.other[0].StudyInstanceUID}/archive"
    assert httpx.get(other, headers=allowed).status_code == 404


def test_forged_and_unknown_tokens(site: Site) -> None:
    url = f"{site.base}/api/v1/shares/open"
    for token in ("hsl_forged", "not-a-link", "hsl_" + "A" * 43):
        reply = httpx.post(url, json={"token": token})
        assert reply.status_code == 404 and reply.json()["reason"] == "unknown", token
    assert httpx.post(url, json={}).status_code == 400
    for bearer in ("hss_forged", "hst_forged"):
        denied = httpx.get(f"{site.base}/dicomweb/studies", headers={"Authorization": f"Bearer {bearer}"})
        assert denied.status_code == 401
    # The bearer form of opening: the link's token in the Authorization header.
    created = site.share()
    opened = httpx.post(url, headers={"Authorization": f"Bearer {created['token']}"}, json={})
    assert opened.status_code == 200 and opened.json()["access_token"].startswith("hst_")
    assert opened.json()["csrf_token"] is None and "set-cookie" not in opened.headers


def test_pin_and_lockout(site: Site) -> None:
    created = site.share(pin="2468")
    assert created["has_pin"]
    url = f"{site.base}/api/v1/shares/open"
    needed = httpx.post(url, json={"token": created["token"]})
    assert needed.status_code == 403 and needed.json()["reason"] == "pin_required"
    wrong = httpx.post(url, json={"token": created["token"], "pin": "1111"})
    assert wrong.status_code == 403 and wrong.json()["reason"] == "wrong_pin"
    right = httpx.post(url, json={"token": created["token"], "pin": "2468", "as_token": True})
    assert right.status_code == 200
    session = {"Authorization": f"Bearer {right.json()['access_token']}"}
    assert httpx.get(f"{site.base}/dicomweb/studies", headers=session).status_code == 200
    # pin_attempts = 3 wrong PINs in a row lock the link for good, even for the right PIN.
    for _ in range(3):
        wrong = httpx.post(url, json={"token": created["token"], "pin": "0000"})
        assert wrong.status_code == 403
    assert wrong.json()["reason"] == "locked" and "locked" in wrong.json()["detail"]
    locked = httpx.post(url, json={"token": created["token"], "pin": "2468"})
    assert locked.status_code == 403 and locked.json()["reason"] == "locked"
    described = httpx.get(
        f"{site.base}/api/v1/shares/{created['id']}", headers=site.as_("radiologist")
    ).json()
    assert described["status"] == "locked" and described["locked_at"]


def test_expired_link_is_gone_and_its_sessions_end(site: Site) -> None:
    created = site.share(expires_in_hours=0.003)  # 10.8 s: room for a loaded machine
    session = site.open_token(created["token"])
    metadata = f"{site.base}/dicomweb/studies/{site.own[0].StudyInstanceUID}/metadata"
    assert httpx.get(metadata, headers=session).status_code == 200
    expires = datetime.fromisoformat(created["expires_at"].replace("Z", "+00:00"))
    time.sleep(max((expires - datetime.now(UTC)).total_seconds(), 0) + 0.5)
    gone = httpx.post(f"{site.base}/api/v1/shares/open", json={"token": created["token"]})
    assert gone.status_code == 410 and gone.json()["reason"] == "expired"
    assert gone.headers["content-type"].startswith("application/problem+json")
    assert httpx.get(metadata, headers=session).status_code == 401
    described = httpx.get(
        f"{site.base}/api/v1/shares/{created['id']}", headers=site.as_("radiologist")
    ).json()
    assert described["status"] == "expired"


def test_revocation_ends_open_sessions_at_once(site: Site) -> None:
    created = site.share()
    metadata = f"/dicomweb/studies/{site.own[0].StudyInstanceUID}/metadata"
    bearer = site.open_token(created["token"])
    with httpx.Client(base_url=site.base) as browser:
        assert browser.post("/api/v1/shares/open", json={"token": created["token"]}).status_code == 200
        assert browser.get(metadata).status_code == 200
        assert httpx.get(site.base + metadata, headers=bearer).status_code == 200
        revoked = httpx.delete(
            f"{site.base}/api/v1/shares/{created['id']}", headers=site.as_("administrator")
        )
        assert revoked.status_code == 204
        assert browser.get(metadata).status_code == 401
        assert httpx.get(site.base + metadata, headers=bearer).status_code == 401
    again = httpx.post(f"{site.base}/api/v1/shares/open", json={"token": created["token"]})
    assert again.status_code == 410 and again.json()["reason"] == "revoked"


def test_share_session_authorization_matrix(site: Site) -> None:
    """Every endpoint of the schema, called with a share session, on the shared study and another."""
    from test_auth import _SKIP, STUDY_PARAMS, assert_hidden_answers_as_missing, concrete_path

    schema = httpx.get(f"{site.base}/api/v1/openapi.json").json()
    calls = [
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method in operations
        if method.upper() in ("GET", "POST", "PUT", "DELETE")
        and (method.upper(), path) not in _SKIP
        and (method.upper(), path) != ("DELETE", "/api/v1/shares/session")  # would end the session
    ]
    checked = 0
    for download in (False, True):
        headers = site.open_token(site.share(allow_download=download)["token"])
        held = SHARE_PERMISSIONS | ({Perm.STUDY_EXPORT} if download else set())
        with httpx.Client(base_url=site.base, headers=headers, timeout=60) as client:
            for method, path in calls:
                needed = required_permission(method, path)
                for shared in (True, False):
                    study = site.own[0] if shared else site.other[0]
                    url = concrete_path(path, study)
                    body: Any = {} if method in ("POST", "PUT") else None
                    reply = (
                        client.request(method, url, json=body)
                        if body is not None
                        else client.request(method, url)
                    )
                    names_study = any(f"{{{p}}}" in path for p in STUDY_PARAMS)
                    allowed = needed is Perm.PUBLIC or (share_route_allowed(method, path) and needed in held)
                    what = f"share {method} {url} ({needed.value}, {'shared' if shared else 'other'} study)"
                    if allowed and names_study and not shared:
                        assert_hidden_answers_as_missing(client, method, path, site.own[0], study, what)
                    elif allowed:
                        assert reply.status_code not in (401, 403), (
                            f"{what}: {reply.status_code} {reply.text[:200]}"
                        )
                    else:
                        assert reply.status_code == 403, f"{what}: {reply.status_code} {reply.text[:200]}"
                    checked += 1
    assert checked > 100


def test_every_use_is_audited(site: Site) -> None:
    created = site.share(pin="97531")
    share_id, study = created["id"], site.own[0].StudyInstanceUID
    url = f"{site.base}/api/v1/shares/open"
    assert httpx.post(url, json={"token": created["token"], "pin": "00000"}).status_code == 403
    session = site.open_token(created["token"], pin="97531")
    assert httpx.get(f"{site.base}/dicomweb/studies/{study}/metadata", headers=session).status_code == 200
    assert (
        httpx.delete(f"{site.base}/api/v1/shares/{share_id}", headers=site.as_("radiologist")).status_code
        == 204
    )
    actor = f"share:{share_id} (created by radiologist)"
    admin = site.as_("administrator")

    def records(**params: str) -> list[dict[str, Any]]:
        reply = httpx.get(f"{site.base}/api/v1/audit", params={**params, "limit": "1000"}, headers=admin)
        assert reply.status_code == 200, reply.text
        return list(reply.json()["records"])

    deadline = time.monotonic() + 30
    while True:
        by_share = records(user=actor)
        by_creator = [
            r for r in records(user="radiologist", study=study) if f"hilum:share/{share_id}" in r["xml"]
        ]
        events = {(r["event"], r["outcome"]) for r in by_share}
        done = (
            ("User Authentication", 0) in events
            and ("User Authentication", 4) in events
            and any(
                r["study_instance_uids"] == [study] and r["event"] != "User Authentication" for r in by_share
            )
            and len(by_creator) >= 2
        )
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert ("User Authentication", 0) in events, by_share  # opened
    assert ("User Authentication", 4) in events, by_share  # a wrong PIN
    viewed = [
        r for r in by_share if r["study_instance_uids"] == [study] and r["event"] != "User Authentication"
    ]
    assert viewed, by_share  # the study viewed through the link, the link as the requestor
    texts = " ".join(r["xml"] for r in by_creator)
    assert "created" in texts and "revoked" in texts  # created and revoked, naming the study
    assert all(r["event"] == "Security Alert" for r in by_creator)


# -- de-identified links ----------------------------------------------------------------------

IDENTIFYING = ("PID-7731", "QUIMBY", "ALICE", "19651123", "ACC-99123", "HOUSE", "GREGORY")


def _ready(site: Site, share_id: int) -> dict[str, Any]:
    deadline = time.monotonic() + 90
    while True:
        described = httpx.get(f"{site.base}/api/v1/shares/{share_id}", headers=site.as_("radiologist")).json()
        if described["status"] != "preparing" or time.monotonic() > deadline:
            return dict(described)
        time.sleep(0.3)


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)
    elif isinstance(value, str):
        yield value


def test_deidentified_link_serves_no_identifying_value(site: Site) -> None:
    original = site.own[0]
    created = site.share(deidentified=True, allow_download=True)
    assert created["deidentified"] and created["state"] == "preparing" and not created["ready"]
    described = _ready(site, created["id"])
    assert described["status"] == "active" and described["ready"], described
    [pair] = described["copies"]
    job = httpx.get(
        f"{site.base}/api/v1/jobs/{described['job_id']}", headers=site.as_("administrator")
    ).json()
    assert (
        job["kind"] == "share-copy"
        and job["state"] == "succeeded"
        and job["progress"]["done"] == len(site.own)
    )
    listed = httpx.get(
        f"{site.base}/api/v1/jobs", params={"kind": "share-copy"}, headers=site.as_("technologist")
    )
    assert listed.status_code == 200 and described["job_id"] in [j["id"] for j in listed.json()]
    copy = pair["copy"]
    assert pair["source"] == original.StudyInstanceUID and copy != original.StudyInstanceUID
    with httpx.Client(base_url=site.base, timeout=60) as browser:
        opened = browser.post("/api/v1/shares/open", json={"token": created["token"]}).json()
        assert opened["study_uids"] == [copy] and opened["deidentified"]
        assert original.StudyInstanceUID not in str(opened)
        answers: list[Any] = [
            browser.get("/dicomweb/studies").json(),
            browser.get("/dicomweb/instances").json(),
            browser.get(f"/dicomweb/studies/{copy}/metadata").json(),
            browser.get("/api/v1/studies").json(),
            browser.get(f"/api/v1/studies/{copy}").json(),
            browser.get("/api/v1/shares/session").json(),
        ]
        for answer in answers:
            texts = " ".join(_texts(answer)).upper()
            for value in (*IDENTIFYING, original.StudyInstanceUID, original.SOPInstanceUID):
                assert value.upper() not in texts, (value, answer)
        [found] = answers[0]
        assert found["0020000D"]["Value"][0] == copy
        assert found["00100020"]["Value"][0].startswith(f"SHARE{created['id']}-")
        # The instances themselves (WADO-RS) and the zip: no identifying value in any text attribute.
        retrieved = browser.get(
            f"/dicomweb/studies/{copy}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
        assert retrieved.status_code == 200
        boundary = retrieved.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
        parts = [p for p in retrieved.content.split(b"--" + boundary.encode()) if b"\r\n\r\n" in p]
        datasets = [dcmread(DicomBytesIO(p.split(b"\r\n\r\n", 1)[1].rstrip(b"\r\n"))) for p in parts]
        assert len(datasets) == len(site.own)
        for ds in datasets:
            assert ds.StudyInstanceUID == copy and ds.PatientIdentityRemoved == "YES"
            for element in ds.iterall():
                if element.VR in ("PN", "LO", "SH", "DA", "UI", "LT", "ST", "UT", "CS", "DT"):
                    text = str(element.value).upper()
                    for value in (*IDENTIFYING, original.StudyInstanceUID):
                        assert value.upper() not in text, (element, value)
        assert browser.get(f"/api/v1/studies/{copy}/archive").status_code == 200
        assert (
            browser.get(
                f"/dicomweb/studies/{copy}/series/{datasets[0].SeriesInstanceUID}/instances/"
                f"{datasets[0].SOPInstanceUID}/rendered"
            ).status_code
            == 200
        )
        # The original is not reachable through the link.
        for path in _paths(original).values():
            assert browser.get(path).status_code == 404, path
    # The copy is left out of other users' searches, but administrators see it.
    radiologist = httpx.get(f"{site.base}/dicomweb/studies", headers=site.as_("radiologist")).json()
    assert copy not in [s["0020000D"]["Value"][0] for s in radiologist]
    admin = httpx.get(f"{site.base}/dicomweb/studies", headers=site.as_("administrator")).json()
    assert copy in [s["0020000D"]["Value"][0] for s in admin]
    # Revoking the link deletes its copy.
    assert (
        httpx.delete(
            f"{site.base}/api/v1/shares/{created['id']}", headers=site.as_("radiologist")
        ).status_code
        == 204
    )
    gone = httpx.get(f"{site.base}/api/v1/studies/{copy}", headers=site.as_("administrator"))
    assert gone.status_code == 404
    assert (
        httpx.get(
            f"{site.base}/api/v1/studies/{original.StudyInstanceUID}", headers=site.as_("administrator")
        ).status_code
        == 200
    )


def test_expired_deidentified_link_loses_its_copy_by_itself(site: Site) -> None:
    """The job runner's housekeeping deletes the copies of links that expired, without
    waiting for anyone to create or revoke a link; until then C-FIND does not show them."""
    created = site.share(deidentified=True)
    described = _ready(site, created["id"])
    assert described["ready"], described
    [pair] = described["copies"]
    admin = site.as_("administrator")
    assert httpx.get(f"{site.base}/api/v1/studies/{pair['copy']}", headers=admin).status_code == 200
    # Other DICOM systems do not find the copy (it belongs to its link), only the original.
    hilum = RemoteAE(name="hilum", ae_title="HILUM", host="127.0.0.1", port=site.server.settings.dicom.port)
    for uid, expected in ((pair["copy"], 0), (pair["source"], 1)):
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = uid
        query.PatientID = ""
        assert len(list(Scu("FINDER").find(hilum, query))) == expected, uid
    # Expired a minute ago (moved in the index: waiting out a real expiry takes too long).
    engine = create_engine(site.server.settings.index_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                update(share_links_t)
                .where(share_links_t.c.id == created["id"])
                .values(expires_at=utcnow() - timedelta(minutes=1))
            )
    finally:
        engine.dispose()
    deadline = time.monotonic() + 60
    while httpx.get(f"{site.base}/api/v1/studies/{pair['copy']}", headers=admin).status_code != 404:
        assert time.monotonic() < deadline, "the expired link's copy is still there after 60 s"
        time.sleep(0.5)
    original = f"{site.base}/api/v1/studies/{pair['source']}"
    assert httpx.get(original, headers=admin).status_code == 200
    described = httpx.get(
        f"{site.base}/api/v1/shares/{created['id']}", headers=site.as_("radiologist")
    ).json()
    assert described["status"] == "expired"
