"""Authentication on by default, roles, per-study access: the authorization matrix.

A real `hilum serve` with authentication on (as a new install has it). Every
endpoint of the served OpenAPI schema is called by every role, on a study the
caller may see and on one it may not, and the answer must be allowed or denied
exactly as the policy says.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from auth_util import AUTH_ON, PASSWORD, hilum_cli, start_secure_server, token
from conftest import RunningServer, hilum_env, stop_server
from factory import StudySpec, stow_study
from hilum.auth.policy import ROLE_PERMISSIONS, Perm, Role, required_permission

ON = AUTH_ON
REFERRING_NAME = "HOUSE^GREGORY"


_hilum = hilum_cli
_token = token


class Site:
    def __init__(self, server: RunningServer, admin_password: str) -> None:
        self.server = server
        self.base = f"http://127.0.0.1:{server.settings.http.port}"
        self.tokens: dict[str, str] = {"administrator": _token(self.base, "admin", admin_password)}
        self.own: list[Any] = []
        self.other: list[Any] = []


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:

    tmp = tmp_path_factory.mktemp("auth")
    server, admin_password = start_secure_server(tmp)
    settings = server.settings
    try:
        log = server.log.read_text()
        found = re.search(r"password: (\S+)", log)
        assert found, log
        password_file = settings.data_dir / "initial-admin-password.txt"
        assert password_file.stat().st_mode & 0o777 == 0o600
        assert admin_password in password_file.read_text()
        site = Site(server, admin_password)
        for role in ("radiologist", "technologist", "auditor"):
            _hilum(settings, "user", "add", role, "--role", role, "--password-stdin", stdin=PASSWORD + "\n")
        _hilum(
            settings,
            "user",
            "add",
            "referring",
            "--role",
            "referring",
            "--person-name",
            REFERRING_NAME,
            "--password-stdin",
            stdin=PASSWORD + "\n",
        )
        for role in ("radiologist", "technologist", "auditor", "referring"):
            site.tokens[role] = _token(site.base, role)
        admin = site.tokens["administrator"]
        site.own = stow_study(
            site.base, StudySpec(patient_id="OWN", referring=REFERRING_NAME, slices=2), admin
        )
        site.other = stow_study(
            site.base, StudySpec(patient_id="OTHER", referring="WILSON^JAMES", slices=2), admin
        )
        yield site
    finally:
        stop_server(server)


def test_nothing_is_reachable_without_credentials(site: Site) -> None:
    with httpx.Client(base_url=site.base) as client:
        assert client.get("/api/v1/health").status_code == 200  # monitoring stays open
        for path in (
            "/dicomweb/studies",
            "/api/v1/studies",
            "/api/v1/statistics",
            "/api/v1/remote-aes",
            f"/dicomweb/studies/{site.own[0].StudyInstanceUID}/metadata",
            "/api/v1/changes",
        ):
            reply = client.get(path)
            assert reply.status_code == 401, path
            assert reply.headers["content-type"].startswith("application/problem+json")
            assert "Bearer" in reply.headers["www-authenticate"]


def test_forged_expired_and_revoked_tokens_are_refused(site: Site) -> None:
    url = f"{site.base}/dicomweb/studies"
    assert httpx.get(url, headers={"Authorization": "Bearer hlt_forged"}).status_code == 401
    token = _token(site.base, "radiologist")
    assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    logout = httpx.post(f"{site.base}/api/v1/auth/logout", headers={"Authorization": f"Bearer {token}"})
    assert logout.status_code == 204
    assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 401
    basic = httpx.get(url, auth=("radiologist", PASSWORD))  # HTTP Basic is off by default
    assert basic.status_code == 401


def test_api_keys_work_and_can_be_revoked(site: Site) -> None:
    headers = {"Authorization": f"Bearer {site.tokens['technologist']}"}
    created = httpx.post(
        f"{site.base}/api/v1/auth/api-keys", json={"name": "modality bridge", "password": PASSWORD},
        headers=headers,
    )
    assert created.status_code == 201
    key = created.json()["key"]
    as_key = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{site.base}/api/v1/auth/me", headers=as_key).json()["via"] == "apikey"
    listed = httpx.get(f"{site.base}/api/v1/auth/api-keys", headers=headers).json()
    assert [k["name"] for k in listed] == ["modality bridge"] and all(k["key"] is None for k in listed)
    revoked = httpx.delete(f"{site.base}/api/v1/auth/api-keys/{created.json()['id']}", headers=headers)
    assert revoked.status_code == 204
    assert httpx.get(f"{site.base}/api/v1/auth/me", headers=as_key).status_code == 401


def test_session_cookie_needs_the_csrf_token_for_changes(site: Site) -> None:
    with httpx.Client(base_url=site.base) as client:
        login = client.post("/api/v1/auth/login", json={"username": "radiologist", "password": PASSWORD})
        assert login.status_code == 200
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        csrf = login.json()["csrf_token"]
        assert client.get("/dicomweb/studies").status_code == 200  # reads need no CSRF token
        body = {"name": "from the browser", "password": PASSWORD}
        assert client.post("/api/v1/auth/api-keys", json=body).status_code == 403
        wrong = client.post("/api/v1/auth/api-keys", json=body, headers={"X-CSRF-Token": "guess"})
        assert wrong.status_code == 403
        right = client.post("/api/v1/auth/api-keys", json=body, headers={"X-CSRF-Token": csrf})
        assert right.status_code == 201
        assert client.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
        assert client.get("/dicomweb/studies").status_code == 401


def test_lockout_after_repeated_failures(site: Site) -> None:
    _hilum(
        site.server.settings,
        "user",
        "add",
        "clumsy",
        "--role",
        "radiologist",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    url = f"{site.base}/api/v1/auth/token"
    for _ in range(5):
        assert httpx.post(url, json={"username": "clumsy", "password": "wrong"}).status_code == 401
    # Locked for this address, with the same answer as a wrong password (tests/test_lockout.py).
    locked = httpx.post(url, json={"username": "clumsy", "password": PASSWORD})
    assert locked.status_code == 401 and locked.json()["detail"] == "wrong user name or password"
    # Every failed login is in the audit trail (DICOM User Authentication, outcome 4).
    admin = {"Authorization": f"Bearer {site.tokens['administrator']}"}
    deadline = time.monotonic() + 20
    while True:
        records = httpx.get(f"{site.base}/api/v1/audit", params={"user": "clumsy"}, headers=admin).json()
        items = records["records"]
        if len(items) >= 6 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(items) >= 6 and all(r["outcome"] != 0 for r in items)


# Path parameters that name a study or something in it (access to them is per study).
STUDY_PARAMS = (
    "study_uid",
    "study_instance_uid",
    "series_uid",
    "series_instance_uid",
    "sop_uid",
    "sop_instance_uid",
    "patient",
)


def concrete_path(path: str, study: Any) -> str:
    """``path`` of the OpenAPI schema with its parameters filled in: UIDs of ``study`` (an
    instance of it), and names and ids that exist nowhere for the rest."""
    values = {
        "study_uid": study.StudyInstanceUID,
        "study_instance_uid": study.StudyInstanceUID,
        "series_uid": study.SeriesInstanceUID,
        "series_instance_uid": study.SeriesInstanceUID,
        "sop_uid": study.SOPInstanceUID,
        "sop_instance_uid": study.SOPInstanceUID,
        "frame_list": "1",
        "frame": "1",
        "tag": "7FE00010",
        "patient": str(study.PatientID),
        "name": "nobody",
        "job_id": "999999",
        "key_id": "999999",
        "share_id": "999999",
        "username": "nobody",
        "principal_kind": "user",
        "principal": "nobody",
    }
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)


def _concrete(path: str, site: Site, own: bool) -> str:
    return concrete_path(path, site.own[0] if own else site.other[0])


# UIDs nothing is stored under, shaped like the real ones: "does not exist".
MISSING = SimpleNamespace(
    StudyInstanceUID="1.2.826.0.1.3680043.8.498.1", SeriesInstanceUID="1.2.826.0.1.3680043.8.498.2",
    SOPInstanceUID="1.2.826.0.1.3680043.8.498.3", PatientID="NOBODY",
)


def _hidden_variants(study: Any, hidden: Any) -> list[tuple[Any, Any]]:
    """(exists but hidden, does not exist) pairs of UID sets: the whole hidden study, and a
    visible study with the hidden study's series and instance in it."""
    inside = SimpleNamespace(StudyInstanceUID=study.StudyInstanceUID, PatientID=study.PatientID)
    return [
        (hidden, MISSING),
        (SimpleNamespace(**vars(inside), SeriesInstanceUID=hidden.SeriesInstanceUID,
                         SOPInstanceUID=hidden.SOPInstanceUID),
         SimpleNamespace(**vars(inside), SeriesInstanceUID=MISSING.SeriesInstanceUID,
                         SOPInstanceUID=MISSING.SOPInstanceUID)),
    ]


def assert_hidden_answers_as_missing(
    client: httpx.Client, method: str, path: str, seen: Any, hidden: Any, what: str
) -> None:
    """The existence oracle: a path naming what exists but is hidden from the caller answers
    exactly (status and body) as one naming nothing stored: a 404 problem."""
    names_study = "{study_uid}" in path or "{study_instance_uid}" in path
    names_below = any(f"{{{p}}}" in path for p in ("series_uid", "series_instance_uid", "sop_uid",
                                                   "sop_instance_uid"))
    for exists, missing in _hidden_variants(seen, hidden):
        if exists is not hidden and not (names_study and names_below):
            continue  # a visible study with hidden things in it: paths that name both only
        body: Any = {} if method in ("POST", "PUT") else None
        replies = [client.request(method, concrete_path(path, uids), json=body) for uids in (exists, missing)]
        assert replies[0].status_code == 404, f"{what}: {replies[0].status_code} {replies[0].text[:200]}"
        assert replies[0].headers["content-type"].startswith("application/problem+json"), what
        assert (replies[0].status_code, replies[0].json()) == (replies[1].status_code, replies[1].json()), (
            f"{what}: {concrete_path(path, exists)} and {concrete_path(path, missing)} answer differently"
        )


# Calls that change or destroy things are made with arguments that cannot succeed (unknown
# names, empty bodies), so the matrix only decides allowed (not 401/403) vs denied (403), and
# for a study the caller may not see, 404 alike whether it exists or not.
_SKIP = {("POST", "/api/v1/auth/logout"), ("POST", "/api/v1/auth/login"), ("POST", "/api/v1/auth/token")}


def _matrix_calls(site: Site) -> list[tuple[str, str]]:
    schema = httpx.get(f"{site.base}/api/v1/openapi.json").json()
    calls = []
    for path, operations in schema["paths"].items():
        for method in operations:
            if method.upper() in ("GET", "POST", "PUT", "DELETE") and (method.upper(), path) not in _SKIP:
                calls.append((method.upper(), path))
    return calls


@pytest.mark.parametrize("role", [r.value for r in Role])
def test_authorization_matrix(site: Site, role: str) -> None:
    headers = {"Authorization": f"Bearer {site.tokens[role]}"}
    permissions = ROLE_PERMISSIONS[Role(role)]
    sees_all = role in ("administrator", "radiologist", "technologist")
    checked = hidden = 0
    with httpx.Client(base_url=site.base, headers=headers, timeout=60) as client:
        for method, path in _matrix_calls(site):
            needed = required_permission(method, path)
            for own in (True, False):
                if method == "DELETE" and role == "administrator" and "{" in path:
                    continue  # the administrator would really delete the test data
                url = _concrete(path, site, own)
                body: Any = {} if method in ("POST", "PUT") else None
                reply = (
                    client.request(method, url, json=body)
                    if body is not None
                    else client.request(method, url)
                )
                names_study = any(f"{{{p}}}" in path for p in STUDY_PARAMS if p != "patient")
                allowed = needed in permissions
                if path.startswith("/api/v1/patients") and not sees_all:
                    allowed = False  # patient records: roles that see every study only
                if needed is Perm.PUBLIC:
                    allowed = True
                what = f"{role} {method} {url} ({needed.value}, {'own' if own else 'other'} study)"
                if allowed and names_study and not sees_all and not own:
                    assert_hidden_answers_as_missing(client, method, path, site.own[0], site.other[0], what)
                    hidden += 1
                elif allowed:
                    assert reply.status_code not in (401, 403), (
                        f"{what}: {reply.status_code} {reply.text[:200]}"
                    )
                else:
                    assert reply.status_code == 403, f"{what}: {reply.status_code} {reply.text[:200]}"
                checked += 1
    assert checked > 60
    assert hidden > 15 or sees_all or Perm.STUDY_READ not in permissions


def test_wado_uri_answers_hidden_as_missing(site: Site) -> None:
    """WADO-URI names its study, series and instance in the query: the same 404 for both."""
    headers = {"Authorization": f"Bearer {site.tokens['referring']}"}
    seen, other = site.own[0], site.other[0]

    def wado(study: str, series: str, sop: str) -> httpx.Response:
        params = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop,
                  "contentType": "application/dicom"}
        return httpx.get(f"{site.base}/dicomweb/wado", params=params, headers=headers)

    assert wado(seen.StudyInstanceUID, seen.SeriesInstanceUID, seen.SOPInstanceUID).status_code == 200
    for exists, missing in _hidden_variants(seen, other):
        answers = [wado(u.StudyInstanceUID, u.SeriesInstanceUID, u.SOPInstanceUID) for u in (exists, missing)]
        assert answers[0].status_code == 404
        assert answers[0].json() == answers[1].json()


def test_referring_physician_searches_see_only_their_studies(site: Site) -> None:
    headers = {"Authorization": f"Bearer {site.tokens['referring']}"}
    own, other = site.own[0].StudyInstanceUID, site.other[0].StudyInstanceUID
    found = httpx.get(f"{site.base}/dicomweb/studies", headers=headers).json()
    assert [s["0020000D"]["Value"][0] for s in found] == [own]
    listed = httpx.get(f"{site.base}/api/v1/studies", headers=headers).json()
    assert [s["StudyInstanceUID"] for s in listed["items"]] == [own]
    instances = httpx.get(f"{site.base}/dicomweb/instances", headers=headers).json()
    assert {i["0020000D"]["Value"][0] for i in instances} == {own}
    denied = httpx.get(f"{site.base}/dicomweb/studies/{other}/metadata", headers=headers)
    assert denied.status_code == 404 and "not open to you" in denied.json()["detail"]
    # An explicit grant opens the other study to them.
    admin = {"Authorization": f"Bearer {site.tokens['administrator']}"}
    grant = httpx.post(
        f"{site.base}/api/v1/studies/{other}/grants",
        headers=admin,
        json={"principal_kind": "user", "principal": "referring"},
    )
    assert grant.status_code == 201
    assert httpx.get(f"{site.base}/dicomweb/studies/{other}/metadata", headers=headers).status_code == 200
    closed = httpx.delete(f"{site.base}/api/v1/studies/{other}/grants/user/referring", headers=admin)
    assert closed.status_code == 204
    assert httpx.get(f"{site.base}/dicomweb/studies/{other}/metadata", headers=headers).status_code == 404


def test_every_route_is_listed_in_the_policy(site: Site) -> None:
    """A route missing from the policy falls to administrators only: list them all on purpose."""
    unlisted = [
        (m, p)
        for m, p in _matrix_calls(site)
        if required_permission(m, p) is Perm.USERS_ADMIN and not p.startswith("/api/v1/users")
    ]
    assert unlisted == []


def test_user_cli(site: Site, tmp_path: Path) -> None:
    settings = site.server.settings
    out = _hilum(settings, "user", "add", "tech2", "--role", "technologist")
    password = re.search(r"password: (\S+)", out)
    assert password
    assert _token(site.base, "tech2", password.group(1))
    _hilum(settings, "user", "disable", "tech2")
    refused = httpx.post(
        f"{site.base}/api/v1/auth/token", json={"username": "tech2", "password": password.group(1)}
    )
    assert refused.status_code == 401 and "disabled" in refused.json()["detail"]
    assert "tech2" in _hilum(settings, "user", "list")
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "hilum.cli",
            "user",
            "add",
            "x y",
            "--role",
            "radiologist",
            "--data-dir",
            str(settings.data_dir),
        ],
        capture_output=True,
        text=True,
        env={**hilum_env(settings), **ON},
        timeout=60,
    )
    assert bad.returncode != 0 and "user name" in bad.stderr + bad.stdout
