"""Durable jobs (/api/v1/jobs) against real peers.

Store jobs send to DCMTK storescp (bit-preserving, so the received files hold
the bytes that came over the wire) or to a deliberately slow pynetdicom SCP
(to stop Hilum in the middle of a job); move jobs pull from a second real
Hilum server. Every `hilum serve` is a separate process, stopped with SIGTERM
(graceful) or SIGKILL (crash) to prove that jobs survive restarts.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from pydicom import dcmread
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from conftest import (
    RunningServer,
    free_port,
    require_tool,
    run_hilum,
    start_server,
    stop_server,
)
from dimse_util import dataset_bytes, query_rows, stored_path, wait_for, wait_listening
from factory import StudySpec, write_study
from hilum.app import Services
from hilum.config import Settings, load_settings
from hilum.jobs.repository import JobStore, utcnow
from hilum.web.problems import PROBLEM

JOBS = "/api/v1/jobs"
AES = "/api/v1/remote-aes"


# -- helpers ------------------------------------------------------------------------
def client_for(server: RunningServer) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{server.settings.http.port}", timeout=30)


def add_ae(client: httpx.Client, name: str, ae_title: str, port: int) -> None:
    response = client.post(AES, json={"name": name, "ae_title": ae_title, "host": "127.0.0.1", "port": port})
    assert response.status_code == 201, response.text


def post_job(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post(JOBS, json=body)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    assert response.headers["location"] == f"{JOBS}/{job['id']}"
    return job


# Long enough for one lost C-STORE response (the SCU waits dimse_timeout = 60 s) and the
# job's automatic retry: seen in CI, where Hilum's SCU once took the first C-STORE-RSP for an
# unexpected request (pynetdicom warning) and the retry then delivered the instance.
def wait_job(
    client: httpx.Client, job_id: int, *states: str, timeout: float = 150, **where: Any
) -> dict[str, Any]:
    last: dict[str, Any] = {}

    def _job() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"{JOBS}/{job_id}").json()
        last.update(job)
        matches = job["state"] in states and all(
            predicate(job) for predicate in where.values()
        )
        return job if matches else None

    try:
        job: dict[str, Any] = wait_for(_job, timeout, f"job {job_id} to be {'/'.join(states)}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: {last}") from None
    return job


def import_study(server_settings: Settings, folder: Path, **spec: Any) -> tuple[str, dict[str, Path]]:
    """Write a study with the factory, `hilum import` it; (Study UID, SOP UID -> file)."""
    study = StudySpec(**spec)
    paths = write_study(study, folder)
    run_hilum(server_settings, "import", str(folder))
    return study.study_uid, {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in paths}


def received_by_uid(folder: Path) -> dict[str, Path]:
    return {
        str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
        for p in folder.iterdir()
        if p.is_file()
    }


def job_row(settings: Settings, job_id: int) -> Any:
    rows = query_rows(settings, "SELECT state, done, total, attempts FROM jobs WHERE id = :id", id=job_id)
    return rows[0]


@contextmanager
def storescp(port: int, folder: Path, ae_title: str = "DEST") -> Iterator[Path]:
    """DCMTK storescp on ``port`` (every transfer syntax, bit-preserving)."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder.parent / f"storescp-{port}.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [require_tool("storescp"), "-aet", ae_title, "-od", str(folder), "+xa", "-B", str(port)],
            stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, "TCP_NODELAY": "1"},
        )
        try:
            wait_listening(port)
            yield folder
        finally:
            process.terminate()
            process.wait(timeout=10)


class SlowStoreScp:
    """A pynetdicom storage SCP that takes ``delay`` s per instance and logs every C-STORE.

    While ``gate`` is clear, received instances wait (unanswered) before being logged.
    """

    def __init__(self, ae_title: str = "SLOW", delay: float = 0.3) -> None:
        self.ae_title = ae_title
        self.port = free_port()
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()
        self.received: list[str] = []  # SOP Instance UIDs in arrival order, repeats included
        self.wire: dict[str, bytes] = {}
        self._lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )

    def _on_store(self, event: Any) -> int:
        self.gate.wait()
        time.sleep(self.delay)
        uid = str(event.request.AffectedSOPInstanceUID)
        with self._lock:
            self.received.append(uid)
            self.wire[uid] = event.encoded_dataset(include_meta=False)
        return 0x0000

    def count(self) -> int:
        with self._lock:
            return len(self.received)

    def close(self) -> None:
        self.gate.set()
        self._server.shutdown()


def assert_problem(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status
    for word in words:
        assert word in body["detail"], body


# -- store jobs ------------------------------------------------------------------------
def test_store_job_sends_every_instance_as_stored(server: RunningServer, tmp_path: Path) -> None:
    study_uid, originals = import_study(server.settings, tmp_path / "study", series=2, slices=3)
    import_study(server.settings, tmp_path / "other", patient_id="OTHER")  # not sent
    port = free_port()
    with client_for(server) as client, storescp(port, tmp_path / "received") as folder:
        add_ae(client, "dest", "DEST", port)
        job = post_job(client, kind="store", study_instance_uid=study_uid, destination="dest")
        assert job["state"] in ("queued", "running")
        assert job["study_instance_uids"] == [study_uid]
        assert (job["kind"], job["destination"], job["source"]) == ("store", "dest", None)
        done = wait_job(client, job["id"], "succeeded")

        received = received_by_uid(folder)
        assert set(received) == set(originals)
        for uid, original in originals.items():
            assert dataset_bytes(received[uid]) == dataset_bytes(original), uid
        stored_bytes = sum(
            r.size_bytes for r in query_rows(
                server.settings,
                "SELECT i.size_bytes FROM instances i JOIN series s ON i.series_pk = s.id "
                "JOIN studies st ON s.study_pk = st.id WHERE st.study_instance_uid = :uid",
                uid=study_uid,
            )
        )
        assert done["progress"] == {
            "total": 6, "done": 6, "failed": 0, "remaining": 0, "bytes": stored_bytes,
        }
        assert done["attempts"] == 1 and done["last_error"] is None
        assert done["created_at"] <= done["started_at"] <= done["finished_at"]

        # One series only, and the list filters.
        series_uid = dcmread(next(iter(originals.values()))).SeriesInstanceUID
        one_series = post_job(
            client, kind="store", study_instance_uid=[study_uid], series_instance_uid=series_uid,
            destination="dest",
        )
        assert wait_job(client, one_series["id"], "succeeded")["progress"]["total"] == 3
        ids = [j["id"] for j in client.get(JOBS, params={"state": "succeeded"}).json()]
        assert ids == [one_series["id"], job["id"]]  # newest first
        assert client.get(JOBS, params={"state": "failed"}).json() == []
        assert len(client.get(JOBS, params={"kind": "store", "limit": 1}).json()) == 1
        assert_problem(client.get(JOBS, params={"state": "bogus"}), 400, "state")
        # Finished jobs can be neither cancelled nor retried.
        assert_problem(client.post(f"{JOBS}/{job['id']}/cancel"), 409, "succeeded")
        assert_problem(client.post(f"{JOBS}/{job['id']}/retry"), 409, "succeeded")


def test_job_to_a_down_peer_fails_after_its_retries_then_retry_succeeds(
    server: RunningServer, tmp_path: Path
) -> None:
    study_uid, originals = import_study(server.settings, tmp_path / "study", slices=4)
    port = free_port()  # nothing listens here yet
    with client_for(server) as client:
        add_ae(client, "later", "LATER", port)
        job = post_job(
            client, kind="store", study_instance_uid=study_uid, destination="later",
            max_attempts=3, retry_delay=0.2,
        )
        failed = wait_job(client, job["id"], "failed", timeout=60)
        assert failed["attempts"] == 3 and failed["max_attempts"] == 3
        assert f"LATER@127.0.0.1:{port}" in failed["last_error"]
        assert "Connection refused" in failed["last_error"]
        assert failed["progress"]["done"] == 0 and failed["progress"]["total"] == 4
        assert failed["finished_at"] is not None

        with storescp(port, tmp_path / "received", "LATER") as folder:
            retried = client.post(f"{JOBS}/{job['id']}/retry")
            assert retried.status_code == 202, retried.text
            assert retried.json()["attempts"] == 0
            done = wait_job(client, job["id"], "succeeded")
            assert done["attempts"] == 1 and done["last_error"] is None
            assert done["progress"]["done"] == 4
            received = received_by_uid(folder)
        assert set(received) == set(originals)
        for uid, original in originals.items():
            assert dataset_bytes(received[uid]) == dataset_bytes(original)


def test_cancel_a_waiting_job_and_queue_it_again(server: RunningServer, tmp_path: Path) -> None:
    study_uid, _ = import_study(server.settings, tmp_path / "study", slices=1)
    with client_for(server) as client:
        add_ae(client, "down", "DOWN", free_port())
        job = post_job(
            client, kind="store", study_instance_uid=study_uid, destination="down",
            max_attempts=10, retry_delay=3600,
        )
        waiting = wait_job(
            client, job["id"], "queued", attempts=lambda j: j["attempts"] == 1
        )
        assert waiting["next_attempt_at"] is not None and "refused" in waiting["last_error"]
        cancelled = client.post(f"{JOBS}/{job['id']}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        assert_problem(client.post(f"{JOBS}/{job['id']}/cancel"), 409, "cancelled")
        queued = client.post(f"{JOBS}/{job['id']}/retry").json()
        assert queued["state"] in ("queued", "running") and queued["attempts"] == 0
        wait_job(client, job["id"], "queued", attempts=lambda j: j["attempts"] == 1)
        assert client.post(f"{JOBS}/{job['id']}/cancel").json()["state"] == "cancelled"


def test_cancel_a_running_job_then_finish_it_with_retry(server: RunningServer, tmp_path: Path) -> None:
    total = 12
    study_uid, originals = import_study(server.settings, tmp_path / "study", slices=total)
    scp = SlowStoreScp(delay=0.25)
    try:
        with client_for(server) as client:
            add_ae(client, "slow", scp.ae_title, scp.port)
            job = post_job(client, kind="store", study_instance_uid=study_uid, destination="slow")
            wait_job(client, job["id"], "running", done=lambda j: j["progress"]["done"] >= 2)
            cancelled = client.post(f"{JOBS}/{job['id']}/cancel").json()
            assert cancelled["state"] == "cancelled" and cancelled["finished_at"] is not None
            time.sleep(1)  # the instance in flight is answered, then the job stops
            stopped_at = scp.count()
            time.sleep(1)
            assert scp.count() == stopped_at < total
            assert client.get(f"{JOBS}/{job['id']}").json()["state"] == "cancelled"

            assert client.post(f"{JOBS}/{job['id']}/retry").status_code == 202
            done = wait_job(client, job["id"], "succeeded")
            assert done["progress"]["done"] == total
            assert set(scp.received) == set(originals)
            assert len(scp.received) < 2 * total  # what was sent before the cancel mostly stays sent
    finally:
        scp.close()


def test_a_queued_job_survives_a_restart(settings: Settings, tmp_path: Path) -> None:
    study_uid, originals = import_study(settings, tmp_path / "study", slices=3)
    server = start_server(settings, tmp_path)
    port = free_port()
    try:
        with client_for(server) as client:
            add_ae(client, "later", "LATER", port)
            job = post_job(
                client, kind="store", study_instance_uid=study_uid, destination="later",
                max_attempts=50, retry_delay=1,
            )
            wait_job(client, job["id"], "queued", attempts=lambda j: j["attempts"] >= 1)
        stop_server(server)
        assert job_row(settings, job["id"]).state == "queued"
        with storescp(port, tmp_path / "received", "LATER") as folder:
            server = start_server(settings, tmp_path)
            with client_for(server) as client:
                wait_job(client, job["id"], "succeeded")
            assert set(received_by_uid(folder)) == set(originals)
    finally:
        stop_server(server)


@pytest.mark.postgres  # the job's progress is committed with each step: both back-ends
def test_a_job_resumes_after_a_stop_and_a_crash_without_resending(
    settings: Settings, tmp_path: Path
) -> None:
    total = 30
    study_uid, originals = import_study(settings, tmp_path / "study", slices=total)
    scp = SlowStoreScp(delay=0.3)  # 9 s for the whole study
    server = start_server(settings, tmp_path)
    try:
        with client_for(server) as client:
            add_ae(client, "slow", scp.ae_title, scp.port)
            job = post_job(client, kind="store", study_instance_uid=study_uid, destination="slow")
            wait_job(client, job["id"], "running", done=lambda j: j["progress"]["done"] >= 4)

        # A graceful stop saves the progress exactly and queues the job again.
        stop_server(server)
        row = job_row(settings, job["id"])
        assert row.state == "queued" and 4 <= row.done < total
        assert scp.count() == row.done  # nothing unaccounted for
        assert row.attempts == 0  # an interrupted run does not use up an attempt

        scp.gate.clear()  # the restarted job waits for the test, however slow the start
        server = start_server(settings, tmp_path)
        with client_for(server) as client:
            scp.gate.set()
            wait_job(
                client, job["id"], "running", done=lambda j: j["progress"]["done"] >= row.done + 4
            )
        # A crash: the job is left "running"; the restart queues it again. The job runner
        # lives in an HTTP worker process: kill the whole process tree at once.
        # The parent first: its supervisor would restart a killed worker.
        tree = psutil.Process(server.process.pid)
        children = tree.children(recursive=True)
        tree.kill()
        for proc in children:
            proc.kill()
        server.process.wait(timeout=30)
        psutil.wait_procs(children, timeout=30)
        time.sleep(1)  # the instance in flight is still logged by the SCP
        crashed = job_row(settings, job["id"])
        assert crashed.state == "running" and row.done + 4 <= crashed.done < total
        sent_before_crash = scp.count()

        server = start_server(settings, tmp_path)
        with client_for(server) as client:
            done = wait_job(client, job["id"], "succeeded", timeout=120)
        assert done["progress"]["done"] == total and done["progress"]["total"] == total
        assert done["attempts"] == 1
        assert set(scp.received) == set(originals)
        # Sent again after the crash: only what was sent since the last progress save.
        assert len(scp.received) == sent_before_crash + (total - crashed.done)
        assert len(scp.received) - total <= 5  # progress is saved every second
        for uid, original in originals.items():
            assert scp.wire[uid] == dataset_bytes(original)
    finally:
        stop_server(server)
        scp.close()


# -- move jobs --------------------------------------------------------------------------
@pytest.fixture
def source_server(tmp_path: Path) -> Iterator[RunningServer]:
    """A second Hilum (SQLite) to pull studies from."""
    settings = load_settings(
        None,
        data_dir=tmp_path / "source",
        dicom={"ae_title": "SOURCE", "port": free_port(), "host": "127.0.0.1", "workers": 1},
        http={"port": free_port()},
    )
    running = start_server(settings, tmp_path)
    try:
        yield running
    finally:
        stop_server(running)


def test_move_job_pulls_a_study_from_another_hilum(
    server: RunningServer, source_server: RunningServer, tmp_path: Path
) -> None:
    study_uid, originals = import_study(source_server.settings, tmp_path / "remote-study", series=2)
    with client_for(server) as client, client_for(source_server) as source:
        # The source must know where Hilum's AE title is, Hilum where the source is.
        add_ae(source, "hilum", server.ae_title, server.port)
        add_ae(client, "pacs-b", source_server.ae_title, source_server.port)
        job = post_job(client, kind="move", study_instance_uid=study_uid, source="pacs-b")
        assert (job["source"], job["destination"]) == ("pacs-b", server.ae_title)
        done = wait_job(client, job["id"], "succeeded")
        assert done["progress"]["done"] == 6 and done["progress"]["total"] == 6
        assert done["progress"]["failed"] == 0
        for uid, original in originals.items():
            assert dataset_bytes(stored_path(server.settings, uid)) == dataset_bytes(original)

        # A study the source does not have fails at once, saying so.
        missing = post_job(client, kind="move", study_instance_uid="1.2.3.4.5", source="pacs-b")
        failed = wait_job(client, missing["id"], "failed")
        assert failed["attempts"] == 1
        assert "SOURCE has no instances of study 1.2.3.4.5" in failed["last_error"]

        # A destination the source does not know: status 0xA801, recorded.
        unknown = post_job(
            client, kind="move", study_instance_uid=study_uid, source="pacs-b",
            destination="NOBODY", max_attempts=1,
        )
        failed = wait_job(client, unknown["id"], "failed")
        assert "0xA801" in failed["last_error"] and "destination unknown" in failed["last_error"]


# -- bad requests ------------------------------------------------------------------------
def test_bad_job_requests_are_problems(server: RunningServer, tmp_path: Path) -> None:
    study_uid, _ = import_study(server.settings, tmp_path / "study", slices=1)
    with client_for(server) as client:
        add_ae(client, "dest", "DEST", free_port())
        store = {"kind": "store", "study_instance_uid": study_uid, "destination": "dest"}
        cases: list[tuple[dict[str, Any], int, str]] = [
            ({**store, "destination": "nobody"}, 404, "nobody"),
            ({**store, "study_instance_uid": "1.2.3"}, 404, "1.2.3"),
            ({**store, "series_instance_uid": "1.2.3"}, 404, "series 1.2.3"),
            ({**store, "kind": "copy"}, 400, "kind"),
            ({**store, "study_instance_uid": "not-a-uid"}, 400, "study_instance_uid"),
            ({**store, "study_instance_uid": []}, 400, "no study_instance_uid"),
            ({**store, "study_instance_uid": [study_uid, "1.2"], "series_instance_uid": "1.2.3"},
             400, "exactly one study"),
            ({**store, "destination": None}, 400, "needs a destination"),
            ({**store, "source": "dest"}, 400, "'source' is for move jobs"),
            ({**store, "max_attempts": 0}, 400, "max_attempts"),
            ({**store, "priority": 1}, 400, "priority"),
            ({"kind": "move", "study_instance_uid": study_uid}, 400, "needs a source"),
            ({"kind": "move", "study_instance_uid": study_uid, "source": "nobody"}, 404, "nobody"),
            ({"kind": "move", "study_instance_uid": study_uid, "source": "dest",
              "destination": "BAD\\AET"}, 400, "not a valid AE title"),
        ]
        for body, status, words in cases:
            assert_problem(client.post(JOBS, json=body), status, words)
        assert client.get(JOBS).json() == []
        assert_problem(client.get(f"{JOBS}/999"), 404, "999")
        assert_problem(client.post(f"{JOBS}/999/cancel"), 404, "999")
        assert_problem(client.post(f"{JOBS}/999/retry"), 404, "999")
        assert_problem(client.get(f"{JOBS}/abc"), 400, "job_id")


# -- claiming, on a shared index ------------------------------------------------------------
@pytest.mark.postgres  # claims are one SQL statement: both back-ends
def test_each_queued_job_is_claimed_by_exactly_one_node(services: Services) -> None:
    store = JobStore(services.engine)
    created = {
        store.create(kind="store", destination="dest", source=None,
                     params={"study_instance_uids": ["1.2"]}, max_attempts=3, retry_delay=1).id
        for _ in range(20)
    }
    claims: dict[str, list[int]] = {f"node-{n}": [] for n in range(4)}

    def claim_all(owner: str) -> None:
        while (job := store.claim(owner)) is not None:
            assert job.state == "running" and job.owner == owner and job.attempts == 1
            claims[owner].append(job.id)

    threads = [threading.Thread(target=claim_all, args=(owner,)) for owner in claims]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    claimed = [job_id for ids in claims.values() for job_id in ids]
    assert sorted(claimed) == sorted(created)  # every job once, none twice
    assert store.claim("late-node") is None

    # A node's progress saves only count while it owns the job.
    owner, ids = next((owner, ids) for owner, ids in claims.items() if ids)
    job_id = ids[0]
    assert store.save(job_id, owner, {"done": 1})
    assert not store.save(job_id, "another-node", {"done": 2})
    # A crashed node: its jobs are queued again once its heartbeat is stale,
    # without using up an attempt.
    assert store.requeue_stale(utcnow() - timedelta(hours=1)) == 0
    requeued = store.requeue_stale(utcnow() + timedelta(seconds=1))
    assert requeued == len(created)
    job = store.get(job_id)
    assert (job.state, job.owner, job.attempts, job.done) == ("queued", None, 0, 1)
    # A restarted node takes back only its own jobs.
    mine = store.claim("node-0")
    assert mine is not None
    store.claim("node-1")
    assert store.requeue_owned("node-0") == 1
    assert store.get(mine.id).state == "queued"
