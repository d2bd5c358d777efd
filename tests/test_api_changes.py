"""The change feed (/api/v1/changes): every entry exactly once, in order, under concurrent
writers in several processes and across a restart."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread

from conftest import RunningServer, require_tool, run_hilum, start_server, stop_server
from factory import StudySpec, write_study

pytestmark = pytest.mark.postgres  # SQL matters here: both back-ends


def feed(port: int, since: int, limit: int) -> dict[str, Any]:
    response = httpx.get(f"http://127.0.0.1:{port}/api/v1/changes",
                         params={"since": since, "limit": limit}, timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def drain(port: int, since: int, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Page until done; return the entries and the last seq."""
    entries: list[dict[str, Any]] = []
    while True:
        page = feed(port, since, limit)
        entries += page["changes"]
        assert page["last"] == (page["changes"][-1]["seq"] if page["changes"] else since)
        since = page["last"]
        if page["done"]:
            return entries, since


def storescu(server: RunningServer, files: list[Path]) -> None:
    subprocess.run(
        [require_tool("storescu"), "-aec", server.ae_title, "127.0.0.1", str(server.port),
         *map(str, files)],
        check=True, capture_output=True,
    )


def sop_uids(files: list[Path]) -> set[str]:
    return {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}


def test_feed_pages_every_change_once_under_concurrent_writers(
    server: RunningServer, tmp_path: Path
) -> None:
    """Four C-STORE associations (spread over the server's two receiving processes, each
    with its own index writer) and a `hilum import` process write at once while a reader
    follows the feed in small pages: it must see exactly what a full read sees afterwards."""
    port = server.settings.http.port
    batches = [write_study(StudySpec(patient_id=f"P{n}", slices=30, size=16), tmp_path / f"s{n}")
               for n in range(5)]
    followed: list[dict[str, Any]] = []
    stop = threading.Event()

    def follow() -> None:
        since = 0
        while not stop.is_set():
            page = feed(port, since, 7)
            followed.extend(page["changes"])
            since = page["last"]
            if page["done"]:
                time.sleep(0.01)
        followed.extend(drain(port, since, 7)[0])

    reader = threading.Thread(target=follow)
    reader.start()
    writers = [threading.Thread(target=storescu, args=(server, files)) for files in batches[:4]]
    writers.append(threading.Thread(target=server.hilum, args=("import", str(tmp_path / "s4"))))
    try:
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
    finally:
        stop.set()
        reader.join()

    seqs = [c["seq"] for c in followed]
    assert seqs == sorted(set(seqs)), "an entry was repeated or came out of order"
    full, _ = drain(port, 0, 1000)
    assert followed == full, "the reader skipped entries committed after it had passed them"
    expected = set().union(*(sop_uids(files) for files in batches))
    assert [c["kind"] for c in full] == ["stored"] * 150
    assert {c["resource_uid"] for c in full} == expected and all(c["level"] == "IMAGE" for c in full)


def test_feed_continues_across_restart(settings: Any, tmp_path: Path) -> None:
    first = write_study(StudySpec(patient_id="A", slices=3), tmp_path / "a")
    second_spec = StudySpec(patient_id="B", slices=2)
    second = write_study(second_spec, tmp_path / "b")

    server = start_server(settings, tmp_path)
    try:
        port = settings.http.port
        assert feed(port, 0, 10) == {"changes": [], "last": 0, "done": True}
        storescu(server, first)
        entries, last = drain(port, 0, 2)
        assert {c["resource_uid"] for c in entries} == sop_uids(first)
        assert feed(port, last, 10) == {"changes": [], "last": last, "done": True}
    finally:
        stop_server(server)

    run_hilum(settings, "import", str(tmp_path / "b"))  # while the server is down
    server = start_server(settings, tmp_path)
    try:
        deleted = httpx.delete(f"http://127.0.0.1:{port}/api/v1/studies/{second_spec.study_uid}",
                               timeout=30)
        assert deleted.status_code == 200
        storescu(server, first[:1])  # already stored: no new entry
        entries, newest = drain(port, last, 2)
        assert all(c["seq"] > last for c in entries) and newest == entries[-1]["seq"]
        assert [(c["kind"], c["level"]) for c in entries] == (
            [("stored", "IMAGE")] * 2 + [("deleted", "IMAGE")] * 2
            + [("deleted", "SERIES"), ("deleted", "STUDY")]
        )
        assert {c["resource_uid"] for c in entries[:2]} == sop_uids(second)
        assert all(c["study_instance_uid"] == second_spec.study_uid for c in entries)
        assert entries[-1]["resource_uid"] == second_spec.study_uid
        for bad in ({"since": -1}, {"limit": 0}, {"limit": 5000}, {"since": "x"}):
            response = httpx.get(f"http://127.0.0.1:{port}/api/v1/changes", params=bad, timeout=10)
            assert response.status_code == 400
    finally:
        stop_server(server)
