"""Reading status of studies: unread, in progress (who, since when), read (by whom, when).

A real `hilum serve` with authentication on, per index backend: the status in
lists and details, the ``reading_status`` filter and sort, ``PUT
/studies/{uid}/reading`` with its 409 (another radiologist is reading) and
``force``, who may change it, the audit record of every change, and claims
made at the same moment.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import pytest

from auth_util import add_user, base_url, start_secure_server, token
from conftest import BACKENDS, backend_url, stop_server
from factory import StudySpec, stow_study

REFERRING = "HOUSE^GREGORY"
PROBLEM = "application/problem+json"


@dataclass
class Site:
    base: str
    tokens: dict[str, str] = field(default_factory=dict)
    own: str = ""  # a study of the referring physician
    other: str = ""  # a study they may not see

    def client(self, user: str) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"}
        return httpx.Client(base_url=f"{self.base}/api/v1", headers=headers, timeout=60)

    def put(self, user: str, uid: str, status: str, force: bool = False) -> httpx.Response:
        with self.client(user) as client:
            return client.put(f"/studies/{uid}/reading", json={"status": status, "force": force})

    def study(self, patient_id: str, **kw: Any) -> str:
        spec = StudySpec(patient_id=patient_id, slices=1, **{"referring": "WILSON^JAMES", **kw})
        stow_study(self.base, spec, self.tokens["admin"])
        return spec.study_uid


@pytest.fixture(scope="module", params=BACKENDS)
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with backend_url(request.param) as url:
        server, password = start_secure_server(tmp_path_factory.mktemp("reading"), database_url=url)
        try:
            site = Site(base_url(server))
            site.tokens["admin"] = token(site.base, "admin", password)
            for user, role in (("rad1", "radiologist"), ("rad2", "radiologist"), ("tech", "technologist"),
                               ("auditor", "auditor")):
                add_user(server.settings, user, role)
            add_user(server.settings, "house", "referring", person_name=REFERRING)
            for user in ("rad1", "rad2", "tech", "auditor", "house"):
                site.tokens[user] = token(site.base, user)
            site.own = site.study("OWN", referring=REFERRING)
            site.other = site.study("OTHER")
            yield site
        finally:
            stop_server(server)


def _items(site: Site, user: str = "admin", **params: str) -> list[dict[str, Any]]:
    with site.client(user) as client:
        reply = client.get("/studies", params=params)
    assert reply.status_code == 200, reply.text
    items: list[dict[str, Any]] = reply.json()["items"]
    return items


def test_new_studies_are_unread_in_lists_and_details(site: Site) -> None:
    uid = site.study("NEW1")
    (item,) = _items(site, PatientID="NEW1")
    assert item["reading_status"] == "unread" and item["changed_after_read"] is False
    assert item["reading_user"] is None and item["reading_changed_at"] is None
    with site.client("tech") as client:
        detail = client.get(f"/studies/{uid}").json()
        assert detail["reading_status"] == "unread"
        state = client.get(f"/studies/{uid}/reading").json()
    assert state == {"study_instance_uid": uid, "reading_status": "unread", "reading_user": None,
                     "reading_changed_at": None, "changed_after_read": False}
    # Another route naming the patient's studies answers the status too.
    with site.client("admin") as client:
        patient = client.get("/patients/NEW1").json()
    assert patient["studies"][0]["reading_status"] == "unread"


def test_claim_conflict_takeover_and_finish(site: Site) -> None:
    uid = site.study("CLAIM")
    started = site.put("rad1", uid, "in_progress")
    assert started.status_code == 200, started.text
    body = started.json()
    assert (body["reading_status"], body["reading_user"]) == ("in_progress", "rad1")
    since = datetime.fromisoformat(body["reading_changed_at"])
    assert since.utcoffset() is not None

    # Starting again changes nothing (the same "since").
    again = site.put("rad1", uid, "in_progress").json()
    assert again["reading_changed_at"] == body["reading_changed_at"]

    # Another radiologist: refused whatever they ask, with who and since when.
    for status in ("in_progress", "read", "unread"):
        refused = site.put("rad2", uid, status)
        assert refused.status_code == 409, refused.text
        assert refused.headers["content-type"].startswith(PROBLEM)
        problem = refused.json()
        assert "rad1" in problem["detail"] and "force" in problem["detail"]
        assert (problem["reading_user"], problem["reading_status"]) == ("rad1", "in_progress")
    (item,) = _items(site, PatientID="CLAIM")
    assert (item["reading_status"], item["reading_user"]) == ("in_progress", "rad1")

    # force: taking it over.
    taken = site.put("rad2", uid, "in_progress", force=True)
    assert taken.status_code == 200 and taken.json()["reading_user"] == "rad2"
    assert site.put("rad1", uid, "read").status_code == 409
    done = site.put("rad2", uid, "read").json()
    assert (done["reading_status"], done["reading_user"]) == ("read", "rad2")
    assert done["changed_after_read"] is False

    # A read study may be opened again (an addendum) and set unread (a mistake).
    assert site.put("rad1", uid, "in_progress").json()["reading_user"] == "rad1"
    unread = site.put("rad1", uid, "unread").json()
    assert (unread["reading_status"], unread["reading_user"]) == ("unread", None)
    assert unread["reading_changed_at"] is not None
    # Administrators may set it too.
    assert site.put("admin", uid, "read").json()["reading_user"] == "admin"


def test_filter_and_sort_by_reading_status(site: Site) -> None:
    unread = site.study("SORT1", study_date="20240103")
    reading = site.study("SORT2", study_date="20240101")
    read = site.study("SORT3", study_date="20240102")
    assert site.put("rad1", reading, "in_progress").status_code == 200
    assert site.put("rad1", read, "read").status_code == 200

    def uids(**params: str) -> list[str]:
        return [i["StudyInstanceUID"] for i in _items(site, PatientID="SORT*", **params)]

    assert set(uids(reading_status="unread,in_progress")) == {unread, reading}
    assert uids(reading_status="read") == [read]
    assert uids(reading_status="in_progress") == [reading]
    assert set(uids(reading_status="")) == {unread, reading, read}  # empty: every study
    assert set(uids(reading_status="unread,in_progress,read")) == {unread, reading, read}
    # With the other filters, paging counts what matches.
    with site.client("admin") as client:
        page = client.get("/studies", params={"PatientID": "SORT*", "reading_status": "unread,read",
                                               "limit": 1}).json()
    assert page["total"] == 2 and page["has_more"]
    # Workflow order: unread, in progress, read; ties by the next key.
    assert uids(sort="reading_status") == [unread, reading, read]
    assert uids(sort="-reading_status") == [read, reading, unread]
    assert uids(sort="reading_status,StudyDate") == [unread, reading, read]
    assert uids(sort="-reading_changed_at", reading_status="in_progress,read")[0] in (reading, read)
    assert uids(sort="-StudyDate", reading_status="unread,read") == [unread, read]


def test_bad_values_are_problems(site: Site) -> None:
    with site.client("rad1") as client:
        checks = [
            (client.get("/studies", params={"reading_status": "done"}), 400, "'done'"),
            (client.get("/studies", params={"reading_status": "unread,final"}), 400, "'final'"),
            (client.get("/studies", params=[("reading_status", "unread"), ("reading_status", "read")]), 400,
             "twice"),
            (client.get("/series", params={"reading_status": "unread"}), 400, "series lists"),
            (client.get("/studies", params={"sort": "reading"}), 400, "reading_status"),
            (client.put(f"/studies/{site.own}/reading", json={"status": "final"}), 400, "body.status"),
            (client.put(f"/studies/{site.own}/reading", json={}), 400, "body.status"),
            (client.put(f"/studies/{site.own}/reading", json={"status": "read", "by": "x"}), 400, "body.by"),
            (client.put("/studies/not-a-uid/reading", json={"status": "read"}), 400, "not a UID"),
            (client.put("/studies/1.2.3.999/reading", json={"status": "read"}), 404, "1.2.3.999"),
            (client.get("/studies/1.2.3.999/reading"), 404, "1.2.3.999"),
        ]
    for reply, status, text in checks:
        assert reply.status_code == status, (reply.request.url, reply.text)
        assert reply.headers["content-type"].startswith(PROBLEM)
        assert text in reply.json()["detail"], reply.text


def test_who_may_change_the_status(site: Site) -> None:
    uid = site.study("ROLES")
    for user in ("tech", "auditor"):
        refused = site.put(user, uid, "read")
        assert refused.status_code == 403 and "study.reading" in refused.json()["detail"], refused.text
    # A referring physician sees the status of their own studies, but cannot change it;
    # other studies answer as every other study route does.
    assert site.put("house", site.own, "read").status_code == 403
    assert site.put("house", site.other, "read").status_code == 403
    with site.client("house") as client:
        assert client.get(f"/studies/{site.own}/reading").status_code == 200
        denied = client.get(f"/studies/{site.other}/reading")
        assert denied.status_code == 404 and "not open to you" in denied.json()["detail"]
        assert client.get(f"/studies/{site.other}").status_code == 404
        listed = client.get("/studies", params={"reading_status": "unread,in_progress,read"}).json()
    assert {i["StudyInstanceUID"] for i in listed["items"]} == {site.own}
    assert "reading_status" in listed["items"][0]
    (item,) = _items(site, PatientID="ROLES")
    assert item["reading_status"] == "unread"  # nothing changed
    assert site.put("rad2", uid, "read").status_code == 200


def _audit_records(site: Site, uid: str, expected: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while True:
        with site.client("auditor") as client:
            reply = client.get("/audit", params={"study": uid, "event": "110103", "order": "asc"})
        assert reply.status_code == 200, reply.text
        records = [r for r in reply.json()["records"] if r["action"] == "U"]
        if len(records) >= expected or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def test_changes_and_refusals_are_audited(site: Site) -> None:
    uid = site.study("AUDIT")
    assert site.put("rad1", uid, "in_progress").status_code == 200
    assert site.put("rad2", uid, "read").status_code == 409
    assert site.put("rad2", uid, "read", force=True).status_code == 200
    records = _audit_records(site, uid, 3)
    assert [(r["user"], r["outcome"]) for r in records] == [("rad1", 0), ("rad2", 4), ("rad2", 0)]
    assert "reading status unread -&gt; in_progress" in records[0]["xml"] or (
        "reading status unread -> in_progress" in records[0]["xml"])
    assert "in progress by rad1" in records[1]["xml"]
    assert "taken over from rad1" in records[2]["xml"]
    assert all(r["patient_ids"] == ["AUDIT"] for r in records)


def test_new_instances_after_read_are_flagged(site: Site) -> None:
    uid = site.study("LATE")
    assert site.put("rad1", uid, "read").json()["changed_after_read"] is False
    time.sleep(1.1)  # the timestamps are compared to the second
    stow_study(site.base, StudySpec(patient_id="LATE", slices=1, study_uid=uid), site.tokens["admin"])
    (item,) = _items(site, PatientID="LATE")
    assert (item["reading_status"], item["reading_user"]) == ("read", "rad1")
    assert item["changed_after_read"] is True
    # Marking it read again acknowledges them.
    assert site.put("rad1", uid, "read").json()["changed_after_read"] is False


def test_simultaneous_claims_one_wins(site: Site) -> None:
    uids = [site.study(f"RACE{i}") for i in range(3)]

    def claim(user: str, uid: str, barrier: threading.Barrier, answers: list[int]) -> None:
        barrier.wait()
        answers.append(site.put(user, uid, "in_progress").status_code)

    for uid in uids:
        answers: list[int] = []
        barrier = threading.Barrier(4)
        threads = [threading.Thread(target=claim, args=(u, uid, barrier, answers))
                   for u in ("rad1", "rad2", "rad1", "rad2")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        (item,) = _items(site, StudyInstanceUID=uid)
        winner = item["reading_user"]
        assert sorted(answers) == [200, 200, 409, 409], answers  # the winner's two, the other's two
        assert winner in ("rad1", "rad2")


def test_schema_documents_the_filter(site: Site) -> None:
    schema = httpx.get(f"{site.base}/api/v1/openapi.json").json()
    params = {p["name"] for p in schema["paths"]["/api/v1/studies"]["get"]["parameters"]}
    assert "reading_status" in params
    assert "put" in schema["paths"]["/api/v1/studies/{study_uid}/reading"]
