"""What callers who see only some studies are told, on SQLite and PostgreSQL.

* Counts: NumberOfPatientRelatedStudies/Series/Instances in QIDO-RS answers (and as
  matching keys) are taken over the studies the caller sees, so they never reveal a
  hidden study; administrators and radiologists get the stored aggregates. The patient
  lists are closed to those who see only some studies.
* Share links: a link never opens more than its creator sees. When the creator loses
  access (grant withdrawn, account disabled or deleted) the link, and every session
  already opened from it, answer exactly as a revoked link does.

One `hilum serve` with authentication on per back-end.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import delete

from auth_util import PASSWORD, base_url, start_secure_server
from auth_util import token as bearer_token
from conftest import BACKENDS, RunningServer, backend_url, stop_server
from factory import StudySpec, stow_study
from hilum.auth.models import users_t
from hilum.index.database import make_engine

REFERRING = "HOUSE^GREGORY"
# Patient PAT-A: one study the referring physician sees (1 series of 2 instances), one
# hidden from them (2 series of 3 instances). Patient PAT-B: a hidden study only.
SEEN = StudySpec(patient_id="PAT-A", referring=REFERRING, accession="SEEN", series=1, slices=2)
HIDDEN = StudySpec(patient_id="PAT-A", referring="WILSON^JAMES", accession="HIDDEN", series=2, slices=3)
ELSEWHERE = StudySpec(patient_id="PAT-B", patient_name="ROE^RICHARD", referring="WILSON^JAMES", slices=1)
COUNTS = {"studies": "00201200", "series": "00201202", "instances": "00201204"}


@dataclass
class Site:
    server: RunningServer
    base: str
    index_url: str
    tokens: dict[str, str] = field(default_factory=dict)

    def as_(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def add_user(self, username: str, role: str, person_name: str = "") -> None:
        reply = httpx.post(
            f"{self.base}/api/v1/users", headers=self.as_("administrator"),
            json={"username": username, "role": role, "password": PASSWORD, "person_name": person_name},
        )
        assert reply.status_code == 201, reply.text
        self.tokens[username] = bearer_token(self.base, username)


@pytest.fixture(scope="module", params=BACKENDS)
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp(f"access-{request.param}")
    with backend_url(request.param) as url:
        server, admin_password = start_secure_server(tmp, database_url=url)
        try:
            base = base_url(server)
            site = Site(server, base, server.settings.index_url)
            site.tokens["administrator"] = bearer_token(base, "admin", admin_password)
            site.add_user("radiologist", "radiologist")
            site.add_user("referring", "referring", REFERRING)
            for spec in (SEEN, HIDDEN, ELSEWHERE):
                stow_study(base, spec, site.tokens["administrator"])
            yield site
        finally:
            stop_server(server)


def _counts(answer: dict[str, Any]) -> dict[str, int]:
    return {name: answer[tag]["Value"][0] for name, tag in COUNTS.items()}


def _qido(site: Site, headers: dict[str, str], path: str = "/dicomweb/studies", **params: str) -> Any:
    reply = httpx.get(f"{site.base}{path}", params={"includefield": "all", **params}, headers=headers)
    assert reply.status_code == 200, reply.text
    return reply.json()


def _by_accession(answers: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    return {a["00080050"]["Value"][0]: _counts(a) for a in answers}


def test_patient_counts_cover_only_the_studies_the_caller_sees(site: Site) -> None:
    referring = site.as_("referring")
    seen = {"studies": 1, "series": 1, "instances": 2}
    assert _by_accession(_qido(site, referring)) == {"SEEN": seen}
    for path in ("/dicomweb/series", "/dicomweb/instances", f"/dicomweb/studies/{SEEN.study_uid}/series"):
        answers = _qido(site, referring, path)
        assert answers and all(_counts(a) == seen for a in answers), path
    # As a matching key too: the stored count (2 studies) would reveal the hidden one.
    assert _qido(site, referring, NumberOfPatientRelatedStudies="2") == []
    assert _qido(site, referring, NumberOfPatientRelatedInstances="8") == []
    assert len(_qido(site, referring, NumberOfPatientRelatedStudies="1")) == 1
    # Those who see every study keep the stored aggregates.
    everything = {"studies": 2, "series": 3, "instances": 8}
    for who in ("administrator", "radiologist"):
        answers = _by_accession(_qido(site, site.as_(who), PatientID="PAT-A"))
        assert answers == {"SEEN": everything, "HIDDEN": everything}, who
        assert len(_qido(site, site.as_(who), PatientID="PAT-A", NumberOfPatientRelatedStudies="2")) == 2
        patients = httpx.get(f"{site.base}/api/v1/patients", params={"PatientID": "PAT-A"},
                             headers=site.as_(who)).json()["items"]
        assert [(p["NumberOfPatientRelatedStudies"], p["NumberOfPatientRelatedSeries"],
                 p["NumberOfPatientRelatedInstances"]) for p in patients] == [(2, 3, 8)], who


def test_a_grant_counts_the_study_it_opens(site: Site) -> None:
    admin, referring = site.as_("administrator"), site.as_("referring")
    grants = f"{site.base}/api/v1/studies/{HIDDEN.study_uid}/grants"
    assert httpx.post(grants, json={"principal_kind": "user", "principal": "referring"},
                      headers=admin).status_code == 201
    try:
        both = {"studies": 2, "series": 3, "instances": 8}
        assert _by_accession(_qido(site, referring)) == {"SEEN": both, "HIDDEN": both}
    finally:
        assert httpx.delete(f"{grants}/user/referring", headers=admin).status_code == 204
    assert _by_accession(_qido(site, referring)) == {"SEEN": {"studies": 1, "series": 1, "instances": 2}}


def test_patient_lists_are_closed_to_those_who_see_some_studies(site: Site) -> None:
    link = httpx.post(f"{site.base}/api/v1/shares", json={"study_uids": [SEEN.study_uid]},
                      headers=site.as_("administrator")).json()
    opened = httpx.post(f"{site.base}/api/v1/shares/open", json={"token": link["token"], "as_token": True})
    share = {"Authorization": f"Bearer {opened.json()['access_token']}"}
    for headers, why in ((site.as_("referring"), "every study"), (share, "share link")):
        for path in ("/api/v1/patients", "/api/v1/patients/PAT-A", "/api/v1/patients/NOBODY"):
            reply = httpx.get(f"{site.base}{path}", headers=headers)
            assert reply.status_code == 403 and why in reply.json()["detail"], (path, reply.text)
    # A share session's QIDO-RS counts cover the link's study only.
    assert _by_accession(_qido(site, share)) == {"SEEN": {"studies": 1, "series": 1, "instances": 2}}


# -- share links whose creator loses access ------------------------------------------------


def _link(site: Site, creator: str) -> str:
    reply = httpx.post(f"{site.base}/api/v1/shares", json={"study_uids": [SEEN.study_uid]},
                       headers=site.as_(creator))
    assert reply.status_code == 201, reply.text
    return str(reply.json()["token"])


def _open(site: Site, link: str) -> httpx.Response:
    return httpx.post(f"{site.base}/api/v1/shares/open", json={"token": link, "as_token": True})


def _session(site: Site, link: str) -> dict[str, str]:
    opened = _open(site, link)
    assert opened.status_code == 200, opened.text
    return {"Authorization": f"Bearer {opened.json()['access_token']}"}


def _revoked_answers(site: Site) -> tuple[httpx.Response, httpx.Response]:
    """What a revoked link answers: to opening it, and to a session opened before."""
    link = _link(site, "administrator")
    session = _session(site, link)
    created = httpx.get(f"{site.base}/api/v1/shares", headers=site.as_("administrator")).json()[0]
    assert httpx.delete(f"{site.base}/api/v1/shares/{created['id']}",
                        headers=site.as_("administrator")).status_code == 204
    metadata = f"{site.base}/dicomweb/studies/{SEEN.study_uid}/metadata"
    return _open(site, link), httpx.get(metadata, headers=session)


def _assert_refused_like_revoked(site: Site, link: str, session: dict[str, str]) -> None:
    """The session opened before the creator lost access ends, and the link no longer opens:
    both answer exactly as for a revoked link."""
    revoked_open, revoked_session = _revoked_answers(site)
    metadata = f"{site.base}/dicomweb/studies/{SEEN.study_uid}/metadata"
    ended = httpx.get(metadata, headers=session)
    assert (ended.status_code, ended.json()) == (401, revoked_session.json())
    assert httpx.get(f"{site.base}/dicomweb/studies", headers=session).status_code == 401
    refused = _open(site, link)
    assert (refused.status_code, refused.json()) == (410, revoked_open.json())


def _disable(site: Site, username: str, disabled: bool) -> None:
    reply = httpx.put(f"{site.base}/api/v1/users/{username}", json={"disabled": disabled},
                      headers=site.as_("administrator"))
    assert reply.status_code == 200, reply.text


def test_link_ends_when_its_creators_grant_is_withdrawn(site: Site) -> None:
    site.add_user("granted", "referring", "NOBODY^ELSE")  # sees SEEN through a grant only
    grants = f"{site.base}/api/v1/studies/{SEEN.study_uid}/grants"
    admin = site.as_("administrator")
    assert httpx.post(grants, json={"principal_kind": "user", "principal": "granted"},
                      headers=admin).status_code == 201
    link = _link(site, "granted")
    before = _session(site, link)  # opened while the creator still sees the study
    assert httpx.get(f"{site.base}/dicomweb/studies", headers=before).status_code == 200
    assert httpx.delete(f"{grants}/user/granted", headers=admin).status_code == 204
    _assert_refused_like_revoked(site, link, before)
    # Granted again: the link opens again (it was never revoked).
    assert httpx.post(grants, json={"principal_kind": "user", "principal": "granted"},
                      headers=admin).status_code == 201
    again = _session(site, link)
    assert len(httpx.get(f"{site.base}/dicomweb/studies", headers=again).json()) == 1


def test_link_ends_when_its_creator_is_disabled(site: Site) -> None:
    site.add_user("sharer", "radiologist")
    link = _link(site, "sharer")
    before = _session(site, link)
    assert httpx.get(f"{site.base}/dicomweb/studies", headers=before).status_code == 200
    _disable(site, "sharer", True)
    try:
        _assert_refused_like_revoked(site, link, before)
    finally:
        _disable(site, "sharer", False)
    assert _open(site, link).status_code == 200


def test_link_ends_when_its_creators_account_is_deleted(site: Site) -> None:
    site.add_user("leaver", "referring", REFERRING)
    link = _link(site, "leaver")
    before = _session(site, link)
    assert httpx.get(f"{site.base}/dicomweb/studies", headers=before).status_code == 200
    engine = make_engine(site.index_url)
    try:
        with engine.begin() as conn:
            conn.execute(delete(users_t).where(users_t.c.username == "leaver"))
    finally:
        engine.dispose()
    _assert_refused_like_revoked(site, link, before)
