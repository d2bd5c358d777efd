"""Study browser benchmark: the web app's study list on 100,000 studies.

The browser (web/src/pages/browser.ts) pages, sorts and filters on the server with
``GET /api/v1/studies?...&sort=&limit=&offset=`` and shows the total count. This
measures every request it sends, as it sends them, on an index of 100,000 one-instance
studies, and checks them against a target of p95 < 300 ms.

Data: ``gen_many.study_meta`` (the QIDO-RS benchmark's distributions: 4 studies per
patient, so 25,000 patients and ~1,000 distinct names; study dates uniform over
2015-01-01..2024-12-28; modalities CT 30 %, MR 20 %, CR 15 %, DX/US 10 %, MG/PT/NM 5 %).
The files are the same 8x8 instances ``gen_many.py`` writes, encoded here straight
into memory (a byte template checked against pydicom's writer) and stored through
Hilum's own ingest path in process (``IngestService.stage_bytes`` + ``ingest_staged``,
what ``hilum import`` calls, with several threads so the index writer commits in
batches): no files on disk, no network. Reading statuses (when the index has the
column) are set by one UPDATE, deterministic per study: 85 % read, 3 % in progress,
12 % unread.

The loaded data directory is cached (``/tmp/hilum-bench-cache/browse-<N>-s<seed>``, and
``...-pg`` plus database ``hilum_browse_<N>_s<seed>`` for PostgreSQL) and reused while
its ``loaded.json`` exists; delete the directory (and drop the database) to reload.

Then ``hilum serve`` runs on it (authentication off, as in the other benchmarks; default
HTTP processes; one DICOM process), and an httpx client (keep-alive, like a browser)
sends each request kind round-robin: ``--rounds`` measured requests of every kind after
``--warmup`` unmeasured ones; p50 / p95 / max latency and response size are reported.
For every kind the two SQL statements the server runs (the total count and the page)
are also timed directly on the index, and the query plans of the slow ones are printed
(EXPLAIN QUERY PLAN on SQLite, EXPLAIN ANALYZE on PostgreSQL). ``--browser`` also times
the page itself in headless Chromium: navigation to rows shown, and typing a name to
the filtered rows (which includes the page's 250 ms typing debounce).

    .venv/bin/python bench/browse.py                          # SQLite, 100,000 studies
    .venv/bin/python bench/browse.py --db sqlite,postgres --browser
    .venv/bin/python bench/browse.py --studies 2000 --rounds 5  # smoke run

"today" and "last N days" in the browser are relative to the real date, after the data's
last study (2024-12-28): those literal requests match nothing, so the kinds marked
"(data's today)" send the same ranges anchored at 2024-12-28 for realistic result sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pydicom.uid import UID

import gen_ct
import gen_many

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path("/tmp/hilum-bench-cache")
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
HOST = "127.0.0.1"
TARGET_MS = 300.0
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu"]
DATA_END = dt.date(2015, 1, 1) + dt.timedelta(days=3649)  # newest possible StudyDate
log = logging.getLogger("browse")


# --------------------------------------------------------------------------- data


def dataset(index: int, seed: int):  # type: ignore[no-untyped-def]
    """Study ``index`` exactly as ``gen_many.generate`` builds it (a pydicom Dataset)."""
    meta = gen_many.study_meta(index, seed)
    ds = gen_ct._base_dataset(meta, 8, 8)
    ds.Modality = meta["modality"]
    ds.SOPClassUID = UID(meta["sop_class"])
    ds.SeriesDescription = f"{meta['modality']} SERIES"
    ds.file_meta = gen_ct._file_meta(ds.SOPClassUID, UID(meta["sop_uid"]))
    ds.SOPInstanceUID = meta["sop_uid"]
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = [0, 0, 0]
    ds.PixelSpacing = [40.0, 40.0]
    ds.PixelData = (np.arange(64, dtype=np.int16).reshape(8, 8) * 16).tobytes()
    return ds


def _pydicom_bytes(index: int, seed: int) -> bytes:
    import io

    from pydicom.filewriter import dcmwrite

    out = io.BytesIO()
    dcmwrite(out, dataset(index, seed), enforce_file_format=True)
    return out.getvalue()


class Encoder:
    """Part 10 bytes of study ``index`` from a template: pydicom costs ~10 ms per file on
    this machine, this ~0.1 ms. The elements that differ between studies are all short
    strings (explicit VR little endian, 2-byte length); the rest is copied. Checked
    byte for byte against pydicom's writer for the first studies."""

    # keyword -> meta key (or a function of the meta)
    VARYING: dict[str, Any] = {
        "SOPClassUID": "sop_class",
        "SOPInstanceUID": "sop_uid",
        "StudyDate": "date",
        "SeriesDate": "date",
        "ContentDate": "date",
        "StudyTime": "time",
        "SeriesTime": "time",
        "ContentTime": "time",
        "AccessionNumber": "accession",
        "Modality": "modality",
        "ReferringPhysicianName": "referring",
        "StudyDescription": "description",
        "SeriesDescription": lambda m: f"{m['modality']} SERIES",
        "PatientName": "name",
        "PatientID": "patient_id",
        "PatientBirthDate": "birth_date",
        "PatientSex": "sex",
        "StudyInstanceUID": "study_uid",
        "SeriesInstanceUID": "series_uid",
        "StudyID": "study_id",
        "FrameOfReferenceUID": "for_uid",
    }
    META_VARYING = {"MediaStorageSOPClassUID": "sop_class", "MediaStorageSOPInstanceUID": "sop_uid"}

    def __init__(self, seed: int, check: int = 50) -> None:
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import correct_ambiguous_vr, write_data_element

        self.seed = seed
        ds = correct_ambiguous_vr(dataset(0, seed), is_little_endian=True)

        def parts(items: Any, varying: dict[str, Any]) -> list[Any]:
            out: list[Any] = []
            for elem in items:
                if elem.keyword in varying:
                    out.append((elem.tag, elem.VR.encode(), varying[elem.keyword]))
                else:
                    fp = DicomBytesIO()
                    fp.is_little_endian, fp.is_implicit_VR = True, False
                    write_data_element(fp, elem)
                    out.append(fp.getvalue())
            return out

        meta = ds.file_meta
        meta.FileMetaInformationVersion = b"\x00\x01"
        self.meta_parts = parts(sorted(meta.values(), key=lambda e: e.tag), self.META_VARYING)
        self.body_parts = parts(ds, self.VARYING)
        for i in range(check):
            if self.encode(i) != _pydicom_bytes(i, seed):
                raise SystemExit(f"byte template differs from pydicom's writer for study {i}")

    @staticmethod
    def _string(tag: int, vr: bytes, value: str) -> bytes:
        raw = value.encode("ascii")
        if len(raw) % 2:
            raw += b"\x00" if vr == b"UI" else b" "
        return (
            (tag >> 16).to_bytes(2, "little")
            + (tag & 0xFFFF).to_bytes(2, "little")
            + vr
            + len(raw).to_bytes(2, "little")
            + raw
        )

    def _join(self, parts: list[Any], meta: dict[str, str]) -> bytes:
        out = []
        for p in parts:
            if isinstance(p, bytes):
                out.append(p)
            else:
                tag, vr, source = p
                value = source(meta) if callable(source) else meta[source]
                out.append(self._string(tag, vr, value))
        return b"".join(out)

    def encode(self, index: int) -> bytes:
        meta = gen_many.study_meta(index, self.seed)
        group = self._join(self.meta_parts, meta)
        length = b"\x02\x00\x00\x00UL\x04\x00" + len(group).to_bytes(4, "little")
        return b"\x00" * 128 + b"DICM" + length + group + self._join(self.body_parts, meta)


def reading_status_of(index: int) -> str:
    r = random.Random(f"read-{index}").random()
    return "read" if r < 0.85 else "in_progress" if r < 0.88 else "unread"


def _settings(data_dir: Path, url: str):  # type: ignore[no-untyped-def]
    from hilum.config import load_settings

    overrides: dict[str, Any] = {"data_dir": data_dir, "log_level": "WARNING"}
    if url:
        overrides["database_url"] = url
    return load_settings(None, **overrides)


def _load_part(data_dir: Path, url: str, seed: int, indices: list[int], threads: int) -> int:
    """Store studies ``indices`` through the ingest service of this process."""
    from hilum.app import build_services

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    services = build_services(_settings(data_dir, url))
    ingest = services.ingest
    encoder = Encoder(seed, check=0)
    done = 0
    lock = threading.Lock()
    failed: list[str] = []
    started = time.perf_counter()

    def one(i: int) -> None:
        nonlocal done
        result = ingest.ingest_staged(ingest.stage_bytes(encoder.encode(i)), source="import")
        with lock:
            done += 1
            if not result.ok:
                failed.append(f"{i}: {result.status}")
            if done % 5000 == 0:
                rate = done / (time.perf_counter() - started)
                log.info("pid %d: %d/%d stored, %.0f studies/s", os.getpid(), done, len(indices), rate)

    try:
        with ThreadPoolExecutor(threads) as pool:
            for _ in pool.map(one, indices, chunksize=64):
                pass
    finally:
        services.close()
    if failed:
        raise RuntimeError(f"{len(failed)} studies failed to store, e.g. {failed[:3]}")
    return done


def load(data_dir: Path, url: str, count: int, seed: int, threads: int, procs: int) -> dict[str, Any]:
    """Store ``count`` studies through the ingest service: ``procs`` processes (each with its
    own index writer, as ``hilum serve``'s receiving processes) of ``threads`` threads."""
    import multiprocessing

    from sqlalchemy import inspect, select, text, update

    from hilum.app import prepare
    from hilum.index.database import make_engine
    from hilum.index.models import studies_t

    settings = _settings(data_dir, url)
    prepare(settings)
    t0 = time.perf_counter()
    Encoder(seed)  # the byte-for-byte check against pydicom, once
    engine = make_engine(settings.index_url, pool_size=1)
    with engine.connect() as conn:
        have = set(conn.execute(select(studies_t.c.study_instance_uid)).scalars())
    todo = [i for i in range(count) if gen_many.study_meta(i, seed)["study_uid"] not in have]
    log.info(
        "loading %d studies (%d already stored): %d processes x %d threads",
        len(todo),
        len(have),
        procs,
        threads,
    )
    started = time.perf_counter()
    loading = threading.Event()
    if engine.dialect.name != "sqlite":
        # As autovacuum would (the server here has it off): without statistics PostgreSQL
        # plans the writer's per-new-study SOP class query as a sequential scan of all
        # instances, and the load slows down quadratically (31 studies/s at 44,000 studies).
        def analyze_now_and_then() -> None:
            while not loading.wait(60):
                with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    conn.exec_driver_sql("ANALYZE")

        threading.Thread(target=analyze_now_and_then, daemon=True).start()
    try:
        if procs <= 1:
            _load_part(data_dir, url, seed, todo, threads)
        else:
            with multiprocessing.get_context("spawn").Pool(procs) as pool:
                parts = [(data_dir, url, seed, todo[k::procs], threads) for k in range(procs)]
                pool.starmap(_load_part, parts)
    finally:
        loading.set()
    took = time.perf_counter() - started
    # Reading statuses: one UPDATE per status (what PUT /studies/{uid}/reading sets, minus the
    # audit and the per-request transaction), when the feature's column exists.
    statuses = False
    try:
        if "reading_status" in {c["name"] for c in inspect(engine).get_columns("studies")}:
            statuses = True
            by_status: dict[str, list[str]] = {"read": [], "in_progress": []}
            for i in range(count):
                s = reading_status_of(i)
                if s in by_status:
                    by_status[s].append(gen_many.study_meta(i, seed)["study_uid"])
            with engine.begin() as conn:
                for status, uids in by_status.items():
                    for k in range(0, len(uids), 5000):
                        conn.execute(
                            update(studies_t)
                            .where(studies_t.c.study_instance_uid.in_(uids[k : k + 5000]))
                            .values(
                                reading_status=status,
                                reading_user="BENCH^READER",
                                reading_changed_at=dt.datetime.now(dt.UTC),
                            )
                        )
        # Hilum never runs ANALYZE on SQLite (no sqlite_stat1: the planner's defaults), so
        # neither does this. PostgreSQL's autovacuum (on by default) vacuums and analyzes a
        # freshly loaded table by itself; done here at once, so that the plans do not depend
        # on its timing, nor on whether the server has it on (127.0.0.1:5432 here has it off).
        if engine.dialect.name != "sqlite":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE")
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT count(*) FROM studies")).scalar_one()
    finally:
        engine.dispose()
    info = {
        "studies": stored,
        "loaded_now": len(todo),
        "load_seconds": round(took, 1),
        "per_second": round(len(todo) / took, 1) if todo else None,
        "total_seconds": round(time.perf_counter() - t0, 1),
        "processes": procs,
        "threads": threads,
        "reading_statuses": statuses,
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    log.info("loaded: %s", info)
    return info


def ensure_pg_database(name: str) -> str:
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        admin.dispose()
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


def drop_pg_database(name: str) -> None:
    from sqlalchemy import create_engine

    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        admin.dispose()


def prepared(
    db: str, cache: Path, count: int, seed: int, threads: int, procs: int
) -> tuple[Path, str, dict[str, Any]]:
    """The cached data directory (and index URL) for ``db``, loading it first if needed."""
    name = f"browse-{count}-s{seed}"
    if db == "postgres":
        data_dir = cache / f"{name}-pg"
        dbname = f"hilum_browse_{count}_s{seed}"
        marker = data_dir / "loaded.json"
        if not marker.exists():  # start clean: a half-loaded database is dropped
            drop_pg_database(dbname)
            shutil.rmtree(data_dir, ignore_errors=True)
        url = ensure_pg_database(dbname)
    else:
        data_dir, url = cache / name, ""
        marker = data_dir / "loaded.json"
    if marker.exists():
        return data_dir, url, json.loads(marker.read_text())
    data_dir.mkdir(parents=True, exist_ok=True)
    info = load(data_dir, url, count, seed, threads, procs)
    marker.write_text(json.dumps(info, indent=2))
    return data_dir, url, info


# --------------------------------------------------------------------------- requests


def dicom_date(d: dt.date) -> str:
    return d.strftime("%Y%m%d")


def cases(seed: int, reading: bool) -> list[tuple[str, dict[str, str]]]:
    """(kind, query parameters) of the requests the browser sends; limit 50 unless given."""
    today = dt.date.today()
    end = DATA_END
    some = gen_many.study_meta(12_345, seed)  # an existing study: its patient, accession
    base = {"sort": "-StudyDate", "limit": "50", "offset": "0"}

    def q(**params: str) -> dict[str, str]:
        return {**base, **params}

    out: list[tuple[str, dict[str, str]]] = [
        ("first page (default sort -StudyDate)", q()),
        ("page 2", q(offset="50")),
        ("deep page, offset 50,000", q(offset="50000")),
        ("last page, offset 99,950", q(offset="99950")),
        ("200 per page", q(limit="200")),
        ("PatientName smi* (typed 'smi')", q(PatientName="smi*")),
        ("PatientName s* (one letter)", q(PatientName="s*")),
        ("PatientName smith^james*", q(PatientName="smith^james*")),
        ("PatientName *son* (wildcard inside)", q(PatientName="*son*")),
        ("PatientID exact-ish BP0003086*", q(PatientID=f"{some['patient_id']}*")),
        ("PatientID BP001* (40,000 match)", q(PatientID="BP001*")),
        ("AccessionNumber A123*", q(AccessionNumber=f"{some['accession']}*")),
        ("ReferringPhysicianName mueller*", q(ReferringPhysicianName="mueller*")),
        ("StudyDate today (real date: none)", q(StudyDate=dicom_date(today))),
        (
            "StudyDate last 7 days (real date: none)",
            q(StudyDate=f"{dicom_date(today - dt.timedelta(days=6))}-{dicom_date(today)}"),
        ),
        ("StudyDate today (data's today)", q(StudyDate=dicom_date(end))),
        (
            "StudyDate last 7 days (data's today)",
            q(StudyDate=f"{dicom_date(end - dt.timedelta(days=6))}-{dicom_date(end)}"),
        ),
        (
            "StudyDate last 30 days (data's today)",
            q(StudyDate=f"{dicom_date(end - dt.timedelta(days=29))}-{dicom_date(end)}"),
        ),
        ("StudyDate custom: 2023", q(StudyDate="20230101-20231231")),
        ("ModalitiesInStudy CT (30 %)", q(ModalitiesInStudy="CT")),
        ("ModalitiesInStudy MG (5 %)", q(ModalitiesInStudy="MG")),
        ("ModalitiesInStudy XA (none)", q(ModalitiesInStudy="XA")),
    ]
    for key in ("PatientName", "PatientID", "StudyDate", "AccessionNumber"):
        out.append((f"sort {key} ascending", q(sort=key)))
        out.append((f"sort -{key} descending", q(sort=f"-{key}")))
    out += [
        (
            "smi* + last 30 days + CT",
            q(
                PatientName="smi*",
                ModalitiesInStudy="CT",
                StudyDate=f"{dicom_date(end - dt.timedelta(days=29))}-{dicom_date(end)}",
            ),
        ),
        ("smi* + 2023 + CT", q(PatientName="smi*", StudyDate="20230101-20231231", ModalitiesInStudy="CT")),
        (
            "s* + 2023 + MR, sort PatientName",
            q(PatientName="s*", StudyDate="20230101-20231231", ModalitiesInStudy="MR", sort="PatientName"),
        ),
        (
            "timeline: PatientID exact, limit 200",
            {"PatientID": some["patient_id"], "sort": "-StudyDate", "limit": "200"},
        ),
    ]
    if reading:
        out += [
            ("reading_status unread (12 %)", q(reading_status="unread")),
            ("reading_status unread,in_progress", q(reading_status="unread,in_progress")),
            ("reading_status read (85 %)", q(reading_status="read")),
            ("reading_status in_progress (3 %)", q(reading_status="in_progress")),
            # The Status column: by status, newest first within each (browser.ts adds -StudyDate).
            ("sort reading_status,-StudyDate (Status column)", q(sort="reading_status,-StudyDate")),
            ("sort -reading_status,-StudyDate (Status column)", q(sort="-reading_status,-StudyDate")),
            (
                "unread + CT + last 30 days",
                q(
                    reading_status="unread",
                    ModalitiesInStudy="CT",
                    StudyDate=f"{dicom_date(end - dt.timedelta(days=29))}-{dicom_date(end)}",
                ),
            ),
        ]
    return out


def query_string(params: dict[str, str]) -> str:
    # '*' and '^' as the browser's URLSearchParams sends them ('*' literal, '^' encoded)
    return urllib.parse.urlencode(params, safe="*,")


# --------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(data_dir: Path, url: str) -> Iterator[str]:
    http, dicom = free_port(), free_port()
    env = {**os.environ, "HILUM_AUTH__ENABLED": "false", "TCP_NODELAY": "1"}
    if url:
        env["HILUM_DATABASE_URL"] = url
    logfile = (data_dir / "server.log").open("ab")
    cmd = [
        sys.executable,
        "-m",
        "hilum.cli",
        "serve",
        "--data-dir",
        str(data_dir),
        "--host",
        HOST,
        "--http-port",
        str(http),
        "--dicom-port",
        str(dicom),
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=logfile,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    base = f"http://{HOST}:{http}"
    try:
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/api/v1/health", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (data_dir / "server.log").read_text(errors="replace")[-3000:]
                raise SystemExit(f"hilum serve did not start:\n{tail}")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        logfile.close()


def measure(
    base: str, kinds: list[tuple[str, dict[str, str]]], rounds: int, warmup: int
) -> list[dict[str, Any]]:
    """Round-robin over the kinds (noise hits all alike); latency = request to whole body."""
    times: dict[str, list[float]] = {k: [] for k, _ in kinds}
    info: dict[str, dict[str, Any]] = {}
    with httpx.Client(timeout=120) as client:
        for r in range(warmup + rounds):
            order = kinds if r % 2 == 0 else kinds[::-1]
            for kind, params in order:
                url = f"{base}/api/v1/studies?{query_string(params)}"
                t = time.perf_counter()
                resp = client.get(url)
                body = resp.content
                took = time.perf_counter() - t
                if resp.status_code != 200:
                    raise SystemExit(f"{kind}: HTTP {resp.status_code} {body[:300]!r}")
                if r >= warmup:
                    times[kind].append(took)
                if kind not in info:
                    page = json.loads(body)
                    info[kind] = {
                        "bytes": len(body),
                        "total": page["total"],
                        "items": len(page["items"]),
                        "url": f"/api/v1/studies?{query_string(params)}",
                    }
    out = []
    for kind, _ in kinds:
        a = np.asarray(times[kind]) * 1000
        out.append(
            {
                "kind": kind,
                **info[kind],
                "n": len(a),
                "p50": float(np.percentile(a, 50)),
                "p95": float(np.percentile(a, 95)),
                "max": float(a.max()),
            }
        )
    return out


# --------------------------------------------------------------------------- SQL


def sql_analysis(
    url: str, data_dir: Path, kinds: list[tuple[str, dict[str, str]]], runs: int, plans_for: set[str]
) -> dict[str, dict[str, Any]]:
    """Time the server's two statements per kind (count, page) on the index, and their plans.

    Built as ``hilum.web.api.resources._page`` builds them (private helpers, imported)."""
    from sqlalchemy import func, select

    from hilum.domain.attributes import Level
    from hilum.domain.query import Query as MatchQuery
    from hilum.domain.query import constraint_for
    from hilum.index.database import make_engine
    from hilum.index.search import TABLE, build_select
    from hilum.web.api import resources as R

    try:
        from hilum.index.reading import parse_statuses, status_condition
    except ImportError:  # before the reading status feature
        parse_statuses = status_condition = None  # type: ignore[assignment]

    engine = make_engine(url or _settings(data_dir, "").index_url, pool_size=1)
    level = Level.STUDY
    out: dict[str, dict[str, Any]] = {}
    try:
        for kind, params in kinds:
            constraints = [constraint_for(k, v) for k, v in params.items() if k not in R._RESERVED]
            matched = build_select(MatchQuery(level=level, constraints=constraints))
            if "reading_status" in params and status_condition is not None:
                cond = status_condition(parse_statuses(params["reading_status"]))
                if cond is not None:
                    matched = matched.where(cond)
            count = select(func.count()).select_from(matched.order_by(None).subquery())
            page = matched.add_columns(*(c.label(f"_{n}") for n, c in R.EXTRA[level].items()))
            page = page.order_by(None).order_by(*R._ordering(level, params.get("sort")), TABLE[level].c.id)
            page = page.limit(int(params.get("limit", 100))).offset(int(params.get("offset", 0)))
            timing: dict[str, Any] = {}
            with engine.connect() as conn:
                for name, stmt in (("count", count), ("page", page)):
                    conn.execute(stmt).all()  # warm
                    ts = []
                    for _ in range(runs):
                        t = time.perf_counter()
                        conn.execute(stmt).all()
                        ts.append(time.perf_counter() - t)
                    timing[f"{name}_ms"] = statistics.median(ts) * 1000
                if kind in plans_for:
                    timing["plans"] = {
                        name: explain(conn, stmt) for name, stmt in (("count", count), ("page", page))
                    }
            out[kind] = timing
    finally:
        engine.dispose()
    return out


def explain(conn: Any, stmt: Any) -> str:
    sql = str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    if conn.dialect.name == "sqlite":
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql).all()
        depth: dict[int, int] = {0: -1}
        lines = []
        for node, parent, _, detail in rows:
            depth[node] = depth.get(parent, -1) + 1
            lines.append("  " * depth[node] + detail)
        return "\n".join(lines)
    rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, COSTS OFF, TIMING ON) " + sql).all()
    return "\n".join(r[0] for r in rows)


# --------------------------------------------------------------------------- browser


# Set at document start: when the study table first has rows (performance.now(), i.e. ms
# since the navigation started), from a MutationObserver rather than polling.
ROWS_PROBE = """
window.__rowsAt = null;
new MutationObserver((_, o) => {
  if (document.querySelector('table.studies tbody tr')) {
    window.__rowsAt = performance.now();
    o.disconnect();
  }
}).observe(document, { childList: true, subtree: true });
"""
LIST_TIMING = """() => performance.getEntriesByType('resource')
  .filter(e => e.name.includes('/api/v1/studies?'))
  .map(e => [e.startTime, e.responseEnd])"""


def browser_times(base: str, runs: int) -> dict[str, float]:
    """In headless Chromium: navigation to the table showing rows (new profile, then reload with
    the app's code cached), with the list request's share; typing a name to filtered rows."""
    from playwright.sync_api import sync_playwright

    got: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        got.setdefault(key, []).append(float(value))

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for _ in range(runs):
                context = browser.new_context(viewport={"width": 1400, "height": 900})
                context.add_init_script(ROWS_PROBE)
                page = context.new_page()
                for label in ("new profile", "reload, code cached"):
                    page.goto(f"{base}/studies", wait_until="commit")
                    page.wait_for_function("() => window.__rowsAt !== null", timeout=60_000)
                    rows_at = page.evaluate("() => window.__rowsAt")
                    start, end = page.evaluate(LIST_TIMING)[0]
                    add(f"navigation to rows, {label}", rows_at)
                    add(f"  of which the list request ({label})", end - start)
                    add(f"  app start to list request sent ({label})", start)
                page.wait_for_timeout(1000)  # the page preloads the viewer's code meanwhile
                page.evaluate(
                    "() => { window.__done = null; performance.clearResourceTimings();"
                    " const tb = document.querySelector('table.studies tbody');"
                    " new MutationObserver((_, o) => { const a = tb.querySelector('tr a');"
                    "   if (a && a.textContent.toUpperCase().startsWith('SMITH')) {"
                    "     window.__done = performance.now(); o.disconnect(); } })"
                    "   .observe(tb, { childList: true, subtree: true }); }"
                )
                box = page.locator("input[name=PatientName]")
                box.click()
                page.evaluate("() => { window.__t0 = performance.now() }")
                box.press_sequentially("smi", delay=60)
                page.wait_for_function("() => window.__done !== null", timeout=60_000)
                add(
                    "first key of 'smi' to filtered rows (120 ms of typing + 250 ms debounce)",
                    page.evaluate("() => window.__done - window.__t0"),
                )
                timings = page.evaluate(LIST_TIMING)
                add("  of which the list request (typed)", timings[-1][1] - timings[-1][0])
                context.close()
        finally:
            browser.close()
    return {key: statistics.median(values) for key, values in got.items()}


# --------------------------------------------------------------------------- report


def fmt(v: float) -> str:
    return f"{v:.0f}" if v >= 10 else f"{v:.1f}"


def table(results: dict[str, list[dict[str, Any]]], sql: dict[str, dict[str, dict[str, Any]]]) -> str:
    dbs = list(results)
    head = "| request | matches | KB |"
    sep = "|---|---:|---:|"
    for db in dbs:
        head += f" {db} p50 / p95 / max (ms) | {db} SQL count + page (ms) |"
        sep += "---:|---:|"
    lines = [head, sep]
    first = results[dbs[0]]
    for i, row in enumerate(first):
        line = f"| {row['kind']} | {row['total']:,} | {row['bytes'] / 1000:.0f} |"
        for db in dbs:
            r = results[db][i]
            slow = " **>300**" if r["p95"] > TARGET_MS else ""
            s = sql.get(db, {}).get(r["kind"], {})
            sq = f"{fmt(s['count_ms'])} + {fmt(s['page_ms'])}" if s else "–"
            line += f" {fmt(r['p50'])} / {fmt(r['p95'])} / {fmt(r['max'])}{slow} | {sq} |"
        lines.append(line)
    return "\n".join(lines)


def git_state() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "src"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes in src/" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--db", default="sqlite", help="comma list: sqlite, postgres")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--load-threads", type=int, default=8, help="ingest threads per loading process")
    parser.add_argument("--load-procs", type=int, default=2, help="loading processes")
    parser.add_argument("--rounds", type=int, default=30, help="measured requests per kind")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--sql-runs", type=int, default=5, help="timed runs of each SQL statement")
    parser.add_argument("--only", default="", help="run only the kinds whose name contains this")
    parser.add_argument("--browser", action="store_true", help="also time the page in headless Chromium")
    parser.add_argument("--browser-runs", type=int, default=5)
    parser.add_argument("--load-only", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    results: dict[str, list[dict[str, Any]]] = {}
    sql: dict[str, dict[str, dict[str, Any]]] = {}
    loads: dict[str, dict[str, Any]] = {}
    browser: dict[str, dict[str, float]] = {}
    for db in [d.strip() for d in args.db.split(",") if d.strip()]:
        data_dir, url, info = prepared(
            db, args.cache_dir, args.studies, args.seed, args.load_threads, args.load_procs
        )
        loads[db] = info
        log.info("%s: %s (%s)", db, data_dir, info)
        if args.load_only:
            continue
        kinds = [k for k in cases(args.seed, bool(info.get("reading_statuses"))) if args.only in k[0]]
        with serving(data_dir, url) as base:
            log.info(
                "%s: server up at %s; %d kinds x (%d + %d)", db, base, len(kinds), args.warmup, args.rounds
            )
            results[db] = measure(base, kinds, args.rounds, args.warmup)
            sql[db] = sql_analysis(url, data_dir, kinds, args.sql_runs, {k for k, _ in kinds})
            if args.browser:
                browser[db] = browser_times(base, args.browser_runs)
        print(f"\n## {db}\n")
        print(table({db: results[db]}, {db: sql[db]}))
        slow = {r["kind"] for r in results[db] if r["p95"] > TARGET_MS * 0.5}
        for kind, s in sql[db].items():  # every plan is in the JSON; the slow ones here
            for name, plan in s.get("plans", {}).items():
                if kind in slow:
                    print(f"\n{db} plan, {kind}, {name}:\n{plan}")
        if browser.get(db):
            print(json.dumps(browser[db], indent=2))
    if not results:
        return
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    record = {
        "command": " ".join(["bench/browse.py", *sys.argv[1:]]),
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "hilum": git_state(),
        "cpus": os.cpu_count(),
        "loadavg_end": os.getloadavg(),
        "loads": loads,
        "results": results,
        "sql": sql,
        "browser": browser,
    }
    path = args.out / f"browse-{stamp}.json"
    path.write_text(json.dumps(record, indent=2, default=str))
    print(f"\n{table(results, sql)}\n\nJSON: {path}")


if __name__ == "__main__":
    main()
