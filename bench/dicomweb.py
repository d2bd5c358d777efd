"""Side-by-side DICOMweb benchmark: Hilum vs Orthanc with its DICOMweb plugin.

One run starts fresh servers (Hilum: ``hilum serve``, same command line as
``bench/run.py``, DICOMweb under ``/dicomweb``; Orthanc: generated JSON config,
SQLite index, no storage compression, plugin ``libOrthancDicomWeb.so``, DICOMweb
under ``/dicom-web``), loads identical synthetic data into both and measures:

``stow``      STOW-RS ingest of a 500-instance CT study (512x512 16-bit) with 4
              parallel clients, 10 instances per multipart request, into a fresh
              server; Orthanc both through STOW-RS and through its native
              ``POST /instances`` (one file per request, 4 parallel clients).
``metadata``  WADO-RS ``GET /studies/{uid}/metadata`` (application/dicom+json) of
              that CT study: time per request.
``retrieve``  WADO-RS ``GET /studies/{uid}`` (multipart/related; application/dicom;
              transfer-syntax=*), read as a stream by the httpx client: MB/s, and
              the peak RSS of the server's process tree while it streams; each
              retrieval is followed by the same one with curl (secondary row: the
              httpx client costs CPU on a 2-core machine, and more so on a chunked
              response such as Hilum's than on Orthanc's read-until-close one).
``qido``      QIDO-RS study searches (limit=100) on an index of 10,000 one-instance
              studies (+ the CT study): PatientID exact, PatientName wildcard,
              StudyDate range, ModalitiesInStudy; p50/p95 latency.

For metadata/retrieve/qido both servers run at the same time, loaded beforehand
over DIMSE (4 ``storescu`` associations; unmeasured), and requests alternate
between them (A B, B A, ...) so machine noise hits both alike. Each STOW
measurement uses a fresh empty server; configurations are interleaved across
repetitions and the median is reported. Every server is stopped at the end, also
after Ctrl-C or an error.

    .venv/bin/python bench/dicomweb.py                    # full run (~10 min)
    .venv/bin/python bench/dicomweb.py --quick            # smoke run (~2 min)
    .venv/bin/python bench/dicomweb.py --only qido        # one measurement
    .venv/bin/python bench/dicomweb.py --servers orthanc  # one server

Results: a table on stdout, JSON + a Markdown fragment in ``bench/out/``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import queue
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

import gen_ct
import gen_many
import run  # bench/run.py: Server, Sampler, ingest, machine_info, render, ...

HOST = run.HOST
MEASUREMENTS = ("stow", "metadata", "retrieve", "qido")
SERVERS = ("hilum", "orthanc")
ORTHANC_PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")
DEFAULT_CACHE = Path("/tmp/hilum-bench-cache")
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
ACCEPT_STUDY = f"{MULTIPART_DICOM}; transfer-syntax=*"
log = logging.getLogger("dicomweb")
ORTHANC_EXTRA: dict[str, Any] = {}  # --orthanc-set: merged into Orthanc's generated config


# --------------------------------------------------------------------------- servers


def orthanc_plugin() -> str:
    for d in ORTHANC_PLUGIN_DIRS:
        p = Path(d) / "libOrthancDicomWeb.so"
        if p.exists():
            return str(p)
    raise SystemExit("libOrthancDicomWeb.so not found (apt-get install orthanc-dicomweb)")


def orthanc_cmd(srv: run.Server) -> list[str]:
    config: dict[str, Any] = {
        "Name": "hilum-bench",
        "StorageDirectory": str(srv.workdir / "storage"),
        "IndexDirectory": str(srv.workdir / "index"),  # default SQLite index
        "StorageCompression": False,
        "DicomAet": srv.aet,
        "DicomPort": srv.dicom_port,
        "HttpPort": srv.http_port,
        "MaximumPduLength": 131072,
        "DicomThreadsCount": 4,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowFind": True,
        "AuthenticationEnabled": False,
        "RemoteAccessAllowed": True,
        "Plugins": [orthanc_plugin()],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    for key, value in ORTHANC_EXTRA.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path = srv.workdir / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return ["Orthanc", str(path)]


# name -> (called AE title, command builder, DICOMweb root, HTTP readiness path)
KINDS: dict[str, tuple[str, Callable[[run.Server], list[str]], str, str]] = {
    "hilum": ("HILUM", run.hilum_cmd, "/dicomweb", "/api/v1/health"),
    "orthanc": ("ORTHANC", orthanc_cmd, "/dicom-web", "/system"),
}


class Live:
    """A running server with an HTTP client bound to its DICOMweb root."""

    def __init__(self, srv: run.Server, root: str) -> None:
        self.srv = srv
        self.name = srv.name
        self.base = f"http://{HOST}:{srv.http_port}{root}"
        self.http = httpx.Client(timeout=httpx.Timeout(600.0, connect=10.0))

    @property
    def pid(self) -> int:
        assert self.srv.proc is not None
        return self.srv.proc.pid


@contextlib.contextmanager
def running(name: str, tmp_root: Path, keep: bool, timeout: float = 120) -> Iterator[Live]:
    """Start a fresh, empty ``name`` server; wait for C-ECHO and HTTP; always stop it."""
    aet, build, root, ready = KINDS[name]
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=tmp_root))
    srv = run.Server(name, aet, workdir, run.free_port(), run.free_port())
    cmd = build(srv)
    live: Live | None = None
    logfile = (workdir / "server.log").open("wb")
    try:
        t0 = time.perf_counter()
        srv.proc = subprocess.Popen(
            cmd,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **run.SERVER_ENV},
            start_new_session=True,
        )
        ok = False
        while not ok:
            if srv.proc.poll() is not None or time.perf_counter() - t0 > timeout:
                tail = (workdir / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} did not start ({shlex.join(cmd)}):\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                url = f"http://{HOST}:{srv.http_port}{ready}"
                ok = httpx.get(url, timeout=5).status_code == 200 and run.echo(srv)
            if not ok:
                time.sleep(0.2)
        srv.startup_s = time.perf_counter() - t0
        log.info("%s up (DICOM %d, HTTP %d) after %.1fs", name, srv.dicom_port, srv.http_port, srv.startup_s)
        live = Live(srv, root)
        yield live
    finally:
        if live is not None:
            live.http.close()
        run.stop_server(srv)
        logfile.close()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def alternate(items: list[Any], i: int) -> list[Any]:
    """``items`` in order for even ``i``, reversed for odd ``i`` (A B, B A, ...)."""
    return items if i % 2 == 0 else items[::-1]


def ms(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1000
    p50, p95 = np.percentile(a, [50, 95])
    out = {"p50": p50, "p95": p95, "mean": a.mean(), "min": a.min(), "max": a.max()}
    return {k: round(float(v), 2) for k, v in out.items()}


def error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 300 else text[:300] + "..."


def check_status(r: httpx.Response, what: str) -> None:
    if r.status_code >= 300:
        raise RuntimeError(f"{what}: HTTP {r.status_code} {r.text[:200]!r}")


# --------------------------------------------------------------------------- STOW-RS


def multipart_bodies(root: Path, files: list[str], per_request: int) -> tuple[list[bytes], str]:
    boundary = "hilum-bench-" + "b7d3c1e0f9a24c5e8a6d"
    bodies = []
    for i in range(0, len(files), per_request):
        parts = []
        for rel in files[i : i + per_request]:
            parts.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            parts.append((root / rel).read_bytes())
            parts.append(b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        bodies.append(b"".join(parts))
    return bodies, f'{MULTIPART_DICOM}; boundary="{boundary}"'


def stow_failures(r: httpx.Response) -> int:
    """Instances reported failed in a STOW-RS response (FailedSOPSequence items)."""
    with contextlib.suppress(ValueError):
        body = r.json()
        if isinstance(body, list):  # some servers answer [ {...} ]
            body = body[0] if body else {}
        failed = body.get("00081198", {}).get("Value", [])
        return len(failed)
    return 0


def send_parallel(
    live: Live, bodies: list[bytes], url: str, content_type: str, parallel: int, count_failures: bool
) -> dict[str, Any]:
    """Send every body with ``parallel`` threads (one keep-alive connection each)."""
    work: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    for b in bodies:
        work.put(b)
    errors: list[str] = []
    failed = [0]
    lock = threading.Lock()

    def worker() -> None:
        with httpx.Client(timeout=httpx.Timeout(600.0, connect=10.0)) as client:
            while True:
                try:
                    body = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    r = client.post(
                        url,
                        content=body,
                        headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
                    )
                    n = stow_failures(r) if count_failures else 0
                    with lock:
                        failed[0] += n
                        if r.status_code not in (200, 202):
                            errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(error_text(exc))

    threads = [threading.Thread(target=worker) for _ in range(parallel)]
    with run.Sampler(live.pid) as sampler:
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
    return {
        "seconds": round(elapsed, 3),
        "requests": len(bodies),
        "http_errors": len(errors),
        "first_errors": errors[:3],
        "failed_instances": failed[0],
        "peak_rss_mb": round(sampler.peak_rss / 2**20, 1),
        "server_cpu_s": round(sampler.cpu_s, 2),
    }


STOW_CONFIGS = {
    # label: (server, one file per request to Orthanc's POST /instances instead of STOW-RS)
    "hilum_stow": ("hilum", False),
    "orthanc_stow": ("orthanc", False),
    "orthanc_instances": ("orthanc", True),
}


def bench_stow(args: argparse.Namespace, data: dict) -> dict[str, Any]:
    root, manifest = data["ct"]
    files, nbytes = manifest["files"], manifest["bytes"]
    multi, ctype = multipart_bodies(root, files, args.stow_batch)
    single = [(root / rel).read_bytes() for rel in files]
    configs = [c for c in STOW_CONFIGS if STOW_CONFIGS[c][0] in args.servers]
    runs: dict[str, list[dict]] = {c: [] for c in configs}
    for rep in range(args.repeat):
        order = configs[rep % len(configs) :] + configs[: rep % len(configs)]  # rotate
        for label in order:
            name, one_file = STOW_CONFIGS[label]
            try:
                with running(name, args.tmp, args.keep) as live:
                    if one_file:
                        url = f"http://{HOST}:{live.srv.http_port}/instances"
                        res = send_parallel(live, single, url, "application/dicom", args.parallel, False)
                    else:
                        res = send_parallel(live, multi, f"{live.base}/studies", ctype, args.parallel, True)
                    res["verify"] = run.verify(live.srv, manifest["studies"], len(files))
            except Exception as exc:  # a broken server must not stop the run
                log.warning("stow %s run %d: %s", label, rep + 1, error_text(exc))
                res = {"error": error_text(exc), "seconds": float("inf"), "verify": {"ok": False}}
            if res["seconds"] != float("inf"):
                res["instances_per_s"] = round(len(files) / res["seconds"], 1)
                res["mb_per_s"] = round(nbytes / res["seconds"] / 1e6, 1)
            log.info(
                "stow %-17s run %d: %s",
                label,
                rep + 1,
                {
                    k: res.get(k)
                    for k in ("instances_per_s", "mb_per_s", "http_errors", "failed_instances", "error")
                },
            )
            runs[label].append(res)
    out: dict[str, Any] = {
        "instances": len(files),
        "bytes": nbytes,
        "parallel": args.parallel,
        "instances_per_request": args.stow_batch,
    }
    for label, rs in runs.items():
        good = [r for r in rs if "instances_per_s" in r]
        if not good:
            out[label] = {"error": rs[0].get("error", "failed"), "runs": rs}
            continue
        med = dict(sorted(good, key=lambda r: r["instances_per_s"])[len(good) // 2])
        med["runs_instances_per_s"] = [r.get("instances_per_s") for r in rs]
        med["verify"] = next((r["verify"] for r in rs if not r["verify"].get("ok")), med["verify"])
        out[label] = med
    return out


# --------------------------------------------------------------------------- WADO-RS


def get_metadata(live: Live, study: str) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    r = live.http.get(f"{live.base}/studies/{study}/metadata", headers={"Accept": "application/dicom+json"})
    elapsed = time.perf_counter() - t0
    check_status(r, f"{live.name} metadata")
    return elapsed, r.content


def describe_metadata(body: bytes) -> dict[str, Any]:
    items = json.loads(body)
    tags = [len(it) for it in items] or [0]
    pixel = items[0].get("7FE00010", {}) if items else {}
    return {
        "instances": len(items),
        "bytes": len(body),
        "attributes_per_instance": {"min": min(tags), "max": max(tags)},
        "pixel_data": "BulkDataURI"
        if "BulkDataURI" in pixel
        else ("InlineBinary" if "InlineBinary" in pixel else "absent"),
    }


def bench_metadata(lives: list[Live], study: str, reps: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {lv.name: [] for lv in lives}
    res: dict[str, Any] = {}
    broken: set[str] = set()
    for lv in lives:  # one warm-up each, also a correctness check
        try:
            _, body = get_metadata(lv, study)
            res[lv.name] = {"check": describe_metadata(body)}
        except Exception as exc:
            res[lv.name] = {"error": error_text(exc)}
            broken.add(lv.name)
    for i in range(reps):
        for lv in alternate(lives, i):
            if lv.name not in broken:
                times[lv.name].append(get_metadata(lv, study)[0])
    for name, t in times.items():
        if t:
            res[name] |= {"requests": len(t), **ms(t)}
    return res


class BoundaryCounter:
    """Counts multipart delimiters in a stream (delimiters may straddle chunks)."""

    def __init__(self, content_type: str) -> None:
        params = dict(p.strip().split("=", 1) for p in content_type.split(";")[1:] if "=" in p)
        boundary = params.get("boundary", "").strip('"')
        self.delim = b"--" + boundary.encode() if boundary else b""
        self.tail = b""
        self.count = 0

    def feed(self, chunk: bytes) -> None:
        if not self.delim:
            return
        buf = self.tail + chunk
        self.count += buf.count(self.delim)
        # keep enough bytes to catch a delimiter split across chunks, but never re-count one
        keep = len(self.delim) - 1
        last = buf.rfind(self.delim)
        start = max(len(buf) - keep, last + len(self.delim) if last >= 0 else 0)
        self.tail = buf[start:]

    @property
    def parts(self) -> int:
        return max(0, self.count - 1)  # the close delimiter "--b--" is counted too


def get_study(live: Live, study: str) -> dict[str, Any]:
    with run.Sampler(live.pid, interval=0.02) as sampler:
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        with live.http.stream("GET", f"{live.base}/studies/{study}", headers={"Accept": ACCEPT_STUDY}) as r:
            if r.status_code != 200:
                r.read()
                check_status(r, f"{live.name} retrieve")
            first = None
            counter = BoundaryCounter(r.headers.get("content-type", ""))
            received = 0
            for chunk in r.iter_raw():  # no re-chunking: 2x faster than iter_raw(1 MiB)
                if first is None:
                    first = time.perf_counter() - t0
                received += len(chunk)
                counter.feed(chunk)
        elapsed = time.perf_counter() - t0
        client_cpu = time.process_time() - cpu0
    return {
        "seconds": elapsed,
        "client_cpu_s": client_cpu,
        "first_byte_s": first or elapsed,
        "bytes": received,
        "parts": counter.parts,
        "content_type": r.headers.get("content-type", ""),
        "peak_rss_mb": sampler.peak_rss / 2**20,
        "server_cpu_s": sampler.cpu_s,
    }


def curl_study(live: Live, study: str) -> float:
    """MB/s of the same retrieval by curl (C client, less client CPU than httpx)."""
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} %{time_total}",
            "-H",
            f"Accept: {ACCEPT_STUDY}",
            f"{live.base}/studies/{study}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout.split()
    return int(out[0]) / float(out[1]) / 1e6


def bench_retrieve(lives: list[Live], study: str, reps: int, expected: int) -> dict[str, Any]:
    runs: dict[str, list[dict]] = {lv.name: [] for lv in lives}
    res: dict[str, Any] = {}
    for lv in lives:
        res[lv.name] = {"idle_rss_mb": round(run.tree_usage(lv.pid)[0] / 2**20, 1)}
    broken: set[str] = set()
    for i in range(reps):
        for lv in alternate(lives, i):
            if lv.name in broken:
                continue
            try:
                runs[lv.name].append(get_study(lv, study))
                if shutil.which("curl"):
                    runs[lv.name][-1]["curl_mb_per_s"] = curl_study(lv, study)
            except Exception as exc:
                res[lv.name]["error"] = error_text(exc)
                broken.add(lv.name)
    for name, rs in runs.items():
        if not rs:
            continue
        rates = [r["bytes"] / r["seconds"] / 1e6 for r in rs]
        med = sorted(rs, key=lambda r: r["bytes"] / r["seconds"])[len(rs) // 2]
        res[name] |= {
            "requests": len(rs),
            "mb_per_s": round(statistics.median(rates), 1),
            "runs_mb_per_s": [round(x, 1) for x in rates],
            "curl_mb_per_s": round(statistics.median(r.get("curl_mb_per_s", 0) for r in rs), 1),
            "seconds": round(med["seconds"], 3),
            "first_byte_ms": round(statistics.median(r["first_byte_s"] for r in rs) * 1000, 1),
            "bytes": med["bytes"],
            "parts": med["parts"],
            "parts_ok": all(r["parts"] == expected for r in rs),
            "content_type": med["content_type"],
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in rs), 1),
            "server_cpu_s": round(statistics.median(r["server_cpu_s"] for r in rs), 2),
            "client_cpu_s": round(statistics.median(r["client_cpu_s"] for r in rs), 2),
        }
    return res


# --------------------------------------------------------------------------- QIDO-RS


QIDO_KINDS = ("patient_id", "patient_name", "date_range", "modality")
QIDO_MODALITIES = ("MR", "CR", "US", "PT", "DX", "MG", "NM", "CT")


def make_queries(count: int, studies: int, seed: int) -> list[tuple[str, dict[str, str]]]:
    """Deterministic mix of the four study-level searches, each with limit=100."""
    rnd = random.Random(seed)
    out = []
    for i in range(count):
        kind = QIDO_KINDS[i % len(QIDO_KINDS)]
        meta = gen_many.study_meta(rnd.randrange(studies), seed)
        if kind == "patient_id":
            params = {"PatientID": meta["patient_id"]}
        elif kind == "patient_name":
            params = {"PatientName": meta["name"][:3] + "*"}
        elif kind == "date_range":
            start = dt.datetime.strptime(meta["date"], "%Y%m%d")
            params = {"StudyDate": f"{meta['date']}-{start + dt.timedelta(days=29):%Y%m%d}"}
        else:
            params = {"ModalitiesInStudy": QIDO_MODALITIES[(i // 4) % len(QIDO_MODALITIES)]}
        out.append((kind, {**params, "limit": "100"}))
    return out


def query_string(params: dict[str, str]) -> str:
    """``*`` is left as is: Orthanc 1.10 does not match ``SMI%2A`` (httpx's encoding) as a
    wildcard, and RFC 3986 allows a literal ``*`` in a query."""
    return urllib.parse.urlencode(params, safe="*")


def qido(live: Live, params: dict[str, str]) -> tuple[float, bytes]:
    url = f"{live.base}/studies?{query_string(params)}"
    t0 = time.perf_counter()
    r = live.http.get(url, headers={"Accept": "application/dicom+json"})
    elapsed = time.perf_counter() - t0
    if r.status_code == 204:  # no matches
        return elapsed, b"[]"
    check_status(r, f"{live.name} QIDO {params}")
    return elapsed, r.content


def bench_qido(
    lives: list[Live], queries: list[tuple[str, dict[str, str]]], warmup: int = 8
) -> dict[str, Any]:
    res: dict[str, Any] = {}
    broken: set[str] = set()
    for lv in lives:
        try:
            for _, q in queries[:warmup]:
                qido(lv, q)
            res[lv.name] = {}
        except Exception as exc:
            res[lv.name] = {"error": error_text(exc)}
            broken.add(lv.name)
    lat: dict[str, dict[str, list[float]]] = {lv.name: {} for lv in lives}
    matches: dict[str, dict[str, int]] = {lv.name: {} for lv in lives}
    sizes: dict[str, int] = {lv.name: 0 for lv in lives}
    attrs: dict[str, int] = {}
    for i, (kind, q) in enumerate(queries):
        for lv in alternate(lives, i):
            if lv.name in broken:
                continue
            try:
                t, body = qido(lv, q)
            except Exception as exc:
                res[lv.name]["error"] = error_text(exc)
                broken.add(lv.name)
                continue
            found = json.loads(body)
            lat[lv.name].setdefault(kind, []).append(t)
            matches[lv.name][kind] = matches[lv.name].get(kind, 0) + len(found)
            sizes[lv.name] += len(body)
            if found and lv.name not in attrs:
                attrs[lv.name] = len(found[0])
    for name, by_kind in lat.items():
        every = [v for vs in by_kind.values() for v in vs]
        if not every:
            continue
        res[name] |= {
            "requests": len(every),
            "all": ms(every),
            "attributes_per_study": attrs.get(name),
            "mean_response_bytes": round(sizes[name] / len(every)),
        }
        for kind, vs in by_kind.items():
            res[name][kind] = {**ms(vs), "matches": matches[name][kind]}
    return res


# --------------------------------------------------------------------------- loading


def load(live: Live, sets: list[tuple[Path, dict]], parallel: int) -> dict[str, Any]:
    """Unmeasured bulk load over DIMSE (4 storescu associations), then a count check."""
    out = {}
    for root, manifest in sets:
        t0 = time.perf_counter()
        r = run.ingest(live.srv, root, manifest, parallel, timeout=1800)
        out[manifest["kind"]] = {
            "seconds": round(time.perf_counter() - t0, 1),
            "instances_per_s": r["instances_per_s"],
            "failures": r["storescu_failures"],
        }
        log.info(
            "%s: loaded %d %s instances in %.1fs (%.0f/s)",
            live.name,
            len(manifest["files"]),
            manifest["kind"],
            r["seconds"],
            r["instances_per_s"],
        )
    studies = sum(m["studies"] for _, m in sets)
    instances = sum(len(m["files"]) for _, m in sets)
    out["verify"] = run.verify(live.srv, studies, instances)
    if not out["verify"]["ok"]:
        log.warning("%s: load verification failed: %s", live.name, out["verify"])
    return out


# --------------------------------------------------------------------------- report


def val(res: dict[str, Any], path: str) -> Any:
    cur: Any = res
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def rows(results: dict[str, Any]) -> list[list[str]]:
    ph = results["phases"]
    out = [["metric", "hilum", "orthanc", "orthanc POST /instances", "hilum/orthanc"]]

    def add(label: str, h: Any, o: Any, inst: Any = None, ratio: bool = True) -> None:
        r = (
            f"{h / o:.2f}"
            if ratio and isinstance(h, int | float) and isinstance(o, int | float) and o
            else "-"
        )
        out.append([label, fmt(h), fmt(o), fmt(inst), r])

    def err(section: dict, name: str) -> str | None:
        e = val(section, f"{name}.error")
        return "error" if e else None

    if "stow" in ph:
        s = ph["stow"]
        for key, label in (
            ("instances_per_s", "instances/s ↑"),
            ("mb_per_s", "MB/s ↑"),
            ("server_cpu_s", "server CPU (s)"),
            ("peak_rss_mb", "peak RSS (MiB)"),
        ):
            h = val(s, f"hilum_stow.{key}") or err(s, "hilum_stow")
            o = val(s, f"orthanc_stow.{key}") or err(s, "orthanc_stow")
            i = val(s, f"orthanc_instances.{key}") or err(s, "orthanc_instances")
            add(f"STOW-RS {s['parallel']}x{s['instances_per_request']}/req: {label}", h, o, i)
        h = val(s, "hilum_stow.instances_per_s")
        i = val(s, "orthanc_instances.instances_per_s")
        out.append(
            ["STOW-RS hilum / orthanc POST /instances", "", "", "", f"{h / i:.2f}" if h and i else "-"]
        )
    if "metadata" in ph:
        m = ph["metadata"]
        for key in ("p50", "p95", "min"):
            add(
                f"WADO-RS metadata {key} (ms)",
                val(m, f"hilum.{key}") or err(m, "hilum"),
                val(m, f"orthanc.{key}") or err(m, "orthanc"),
            )
        add(
            "WADO-RS metadata response (KB)",
            round(val(m, "hilum.check.bytes") / 1e3) if val(m, "hilum.check.bytes") else None,
            round(val(m, "orthanc.check.bytes") / 1e3) if val(m, "orthanc.check.bytes") else None,
        )
    if "retrieve" in ph:
        w = ph["retrieve"]
        for key, label in (
            ("mb_per_s", "MB/s ↑"),
            ("curl_mb_per_s", "MB/s with curl ↑"),
            ("first_byte_ms", "first byte (ms)"),
            ("server_cpu_s", "server CPU (s)"),
            ("client_cpu_s", "httpx client CPU (s)"),
            ("idle_rss_mb", "RSS before (MiB)"),
            ("peak_rss_mb", "peak RSS (MiB)"),
        ):
            add(
                f"WADO-RS study retrieve: {label}",
                val(w, f"hilum.{key}") or err(w, "hilum"),
                val(w, f"orthanc.{key}") or err(w, "orthanc"),
            )
    if "qido" in ph:
        q = ph["qido"]
        for kind in ("all", *QIDO_KINDS):
            for p in ("p50", "p95"):
                add(
                    f"QIDO-RS {kind} {p} (ms)",
                    val(q, f"hilum.{kind}.{p}") or err(q, "hilum"),
                    val(q, f"orthanc.{kind}.{p}") or err(q, "orthanc"),
                )
    return out


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    ph, out = results["phases"], []

    def target(name: str, measured: str, ok: bool | None) -> None:
        out.append(
            {
                "target": name,
                "measured": measured,
                "status": "n/a" if ok is None else ("met" if ok else "NOT met"),
            }
        )

    if "metadata" in ph:
        h, o = val(ph["metadata"], "hilum.p50"), val(ph["metadata"], "orthanc.p50")
        target(
            f"WADO-RS metadata ({results['params']['slices']}-instance study): "
            "Hilum ≥ 10× faster than Orthanc",
            f"{fmt(h)} vs {fmt(o)} ms p50 = {o / h:.1f}× faster" if h and o else "-",
            o / h >= 10 if h and o else None,
        )
    if "qido" in ph:
        q = ph["qido"]
        h50, o50 = val(q, "hilum.all.p50"), val(q, "orthanc.all.p50")
        h95, o95 = val(q, "hilum.all.p95"), val(q, "orthanc.all.p95")
        target("QIDO-RS p50 ≤ Orthanc", f"{fmt(h50)} vs {fmt(o50)} ms", h50 <= o50 if h50 and o50 else None)
        target("QIDO-RS p95 ≤ Orthanc", f"{fmt(h95)} vs {fmt(o95)} ms", h95 <= o95 if h95 and o95 else None)
        target("QIDO-RS p50 ≤ 20 ms", f"{fmt(h50)} ms", h50 <= 20 if h50 else None)
    if "retrieve" in ph:
        h, o = val(ph["retrieve"], "hilum.mb_per_s"), val(ph["retrieve"], "orthanc.mb_per_s")
        target(
            "WADO-RS study retrieve MB/s (httpx client) ≥ Orthanc",
            f"{fmt(h)} vs {fmt(o)} MB/s = {h / o:.2f}×" if h and o else "-",
            h >= o if h and o else None,
        )
    if "stow" in ph:
        s = ph["stow"]
        h = val(s, "hilum_stow.instances_per_s")
        for label, key in (
            ("Orthanc STOW-RS", "orthanc_stow"),
            ("Orthanc POST /instances", "orthanc_instances"),
        ):
            o = val(s, f"{key}.instances_per_s")
            target(
                f"STOW-RS ingest (4 clients) ≥ 1.5× {label}",
                f"{fmt(h)} vs {fmt(o)} inst/s = {h / o:.2f}×" if h and o else "-",
                h >= 1.5 * o if h and o else None,
            )
    return out


def problems(results: dict[str, Any]) -> list[str]:
    """Errors and correctness differences that make numbers incomparable."""
    ph, out = results["phases"], []
    for phase, section in ph.items():
        if not isinstance(section, dict):
            continue
        for name, res in section.items():
            if isinstance(res, dict) and res.get("error"):
                out.append(f"{phase} {name}: {res['error']}")
    if "stow" in ph:
        for label in STOW_CONFIGS:
            r = ph["stow"].get(label)
            if isinstance(r, dict) and "verify" in r and not r["verify"].get("ok"):
                out.append(f"stow {label}: not everything stored: {r['verify']}")
            if isinstance(r, dict) and (r.get("http_errors") or r.get("failed_instances")):
                out.append(
                    f"stow {label}: {r.get('http_errors')} HTTP errors, "
                    f"{r.get('failed_instances')} failed instances {r.get('first_errors')}"
                )
    for name, ld in results.get("load", {}).items():
        if not ld.get("verify", {}).get("ok", True):
            out.append(f"load {name}: verification failed {ld['verify']}")
    if "metadata" in ph:
        for name, res in ph["metadata"].items():
            n = val(res, "check.instances")
            if n is not None and n != results["params"]["slices"]:
                out.append(f"metadata {name}: {n} instances, expected {results['params']['slices']}")
    if "retrieve" in ph:
        for name, res in ph["retrieve"].items():
            if "parts_ok" in res and not res["parts_ok"]:
                out.append(f"retrieve {name}: {res['parts']} parts, expected {results['params']['slices']}")
    if "qido" in ph and all("all" in ph["qido"].get(n, {}) for n in SERVERS):
        for kind in QIDO_KINDS:
            h, o = (ph["qido"][n][kind]["matches"] for n in SERVERS)
            if h != o:
                out.append(f"QIDO {kind}: Hilum returned {h} matches in total, Orthanc {o}")
    return out


def markdown(results: dict[str, Any], table: list[list[str]]) -> str:
    p, m = results["params"], results["machine"]
    lines = [
        f"### {results['started']} — DICOMweb: {p['slices']}-instance CT study, "
        f"{p['many']} small studies, {p['queries']} QIDO, {p['reps']} metadata / "
        f"{p['retrieve_reps']} retrieve requests per server, STOW median of {p['repeat']}",
        "",
        f"Command: `{results['command']}`",
        "",
        f"- Machine: {m['cpu']}, {m['nproc']} CPUs, {m['memory_gb']} GiB RAM, "
        f"kernel {m['kernel']}, {m['os']}",
        f"- Versions: {m['orthanc']} + DICOMweb plugin {results.get('orthanc_dicomweb', '?')}; "
        f"Hilum {m['hilum']} ({results.get('hilum_commit', '?')}); Python {m['python']}, "
        f"httpx {httpx.__version__}",
        "",
        "| target | measured | status |",
        "|---|---|---|",
        *(f"| {t['target']} | {t['measured']} | {t['status']} |" for t in results["targets"]),
        "",
        run.render(table, markdown=True),
        "",
        "MB = 10^6 bytes; RSS summed over the server process tree; "
        "ratio = Hilum/Orthanc; ↑ = higher is better, otherwise lower is better.",
    ]
    lines += [f"\n**Warning:** {w}" for w in results["problems"]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = ap.add_argument
    add(
        "--only",
        default=",".join(MEASUREMENTS),
        help=f"comma list of measurements: {','.join(MEASUREMENTS)} (default: all)",
    )
    add("--servers", default=",".join(SERVERS), help="comma list of: hilum,orthanc")
    add(
        "--quick",
        action="store_true",
        help="smoke run: 100-instance CT study, 1000 small studies, fewer repetitions",
    )
    add("--slices", type=int, default=500, help="instances in the CT study (default 500)")
    add("--many", type=int, default=10_000, help="small studies for QIDO (default 10000)")
    add("--queries", type=int, default=200, help="QIDO requests per server (default 200)")
    add("--reps", type=int, default=15, help="metadata requests per server (default 15)")
    add("--retrieve-reps", type=int, default=15, help="study retrievals per server (default 15)")
    add("--repeat", type=int, default=3, help="STOW runs per configuration (median; default 3)")
    add("--parallel", type=int, default=4, help="parallel STOW clients (default 4)")
    add("--stow-batch", type=int, default=10, help="instances per STOW request (default 10)")
    add("--seed", type=int, default=1)
    add("--cache-dir", type=Path, default=DEFAULT_CACHE, help=f"generated data ({DEFAULT_CACHE})")
    add("--out-dir", type=Path, default=Path(__file__).parent / "out", help="JSON/MD output")
    add("--keep", action="store_true", help="keep server temp dirs (logs, storage)")
    add(
        "--orthanc-set",
        type=json.loads,
        default={},
        metavar="JSON",
        help='extra Orthanc configuration, e.g. \'{"StorageAccessOnFind": "Never"}\'',
    )
    args = ap.parse_args()
    ORTHANC_EXTRA.update(args.orthanc_set)
    if args.quick:
        args.slices, args.many, args.queries = 100, 1000, 80
        args.reps, args.retrieve_reps, args.repeat = 5, 3, 1
    args.measure = [m.strip() for m in args.only.split(",") if m.strip()]
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if bad := set(args.measure) - set(MEASUREMENTS):
        ap.error(f"unknown measurement(s): {', '.join(sorted(bad))}")
    if bad := set(args.servers) - set(SERVERS):
        ap.error(f"unknown server(s): {', '.join(sorted(bad))}")
    needed = {"hilum": run.HILUM_BIN, "orthanc": "Orthanc"}
    for tool in [needed[s] for s in args.servers] + ["storescu", "echoscu"]:
        if shutil.which(tool) is None:
            ap.error(f"{tool} not found (use --servers to skip a server)")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def prepare_data(args: argparse.Namespace) -> dict[str, tuple[Path, dict]]:
    data = {}
    need_ct = {"stow", "metadata", "retrieve"} & set(args.measure)
    need_many = "qido" in args.measure
    sets = []
    if need_ct:
        sets.append(
            (
                "ct",
                args.cache_dir / f"ct-1x{args.slices}-s{args.seed}",
                lambda d: gen_ct.load_or_generate(d, "ct", 1, args.slices, args.seed),
            )
        )
    if need_many:
        sets.append(
            (
                "many",
                args.cache_dir / f"many-{args.many}-s{args.seed}",
                lambda d: gen_many.load_or_generate(d, args.many, args.seed),
            )
        )
    for kind, d, make in sets:
        t0 = time.perf_counter()
        manifest = make(d)
        manifest.setdefault("kind", kind)
        for rel in manifest["files"]:  # warm the page cache
            (d / rel).read_bytes()
        log.info(
            "data %s: %d files, %.1f MB (%.1fs)",
            d.name,
            len(manifest["files"]),
            manifest["bytes"] / 1e6,
            time.perf_counter() - t0,
        )
        data[kind] = (d, manifest)
    return data


def ct_study_uid(args: argparse.Namespace) -> str:
    key = f"ct-{args.seed}-0"
    return str(gen_ct._uid(key, "study"))


def package_version(name: str) -> str:
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", name], capture_output=True, text=True)
    return out.stdout.strip() or "?"


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    args.tmp = Path(tempfile.mkdtemp(prefix="hilum-dicomweb-"))
    started = dt.datetime.now().astimezone()
    repo = Path(__file__).resolve().parents[1]
    commit = (
        "commit "
        + subprocess.run(
            ["git", "-C", str(repo), "log", "-1", "--format=%h"], capture_output=True, text=True
        ).stdout.strip()
    )
    dirty = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "src"], capture_output=True, text=True
    ).stdout.strip()
    commit += " + uncommitted changes in src/" if dirty else ""
    results: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "command": shlex.join(["python", "bench/dicomweb.py", *sys.argv[1:]]),
        "params": {
            k: getattr(args, k)
            for k in (
                "measure",
                "servers",
                "slices",
                "many",
                "queries",
                "reps",
                "retrieve_reps",
                "repeat",
                "parallel",
                "stow_batch",
                "seed",
                "orthanc_set",
            )
        },
        "machine": run.machine_info(args.tmp),
        "orthanc_dicomweb": package_version("orthanc-dicomweb"),
        "hilum_commit": commit,
        "hilum_cmd": run.HILUM_CMD,
        "phases": {},
    }
    t_start = time.perf_counter()
    try:
        data = prepare_data(args)
        if "stow" in args.measure:
            log.info("STOW-RS: %d runs per configuration, fresh server each", args.repeat)
            results["phases"]["stow"] = bench_stow(args, data)
        rest = [m for m in ("metadata", "retrieve", "qido") if m in args.measure]
        if rest:
            with contextlib.ExitStack() as stack:
                lives = [stack.enter_context(running(n, args.tmp, args.keep)) for n in args.servers]
                sets = []
                if "metadata" in rest or "retrieve" in rest:
                    sets.append(data["ct"])
                if "qido" in rest:
                    sets.append(data["many"])
                results["load"] = {lv.name: load(lv, sets, args.parallel) for lv in lives}
                study = ct_study_uid(args)
                if "metadata" in rest:
                    log.info("WADO-RS metadata: %d requests per server", args.reps)
                    results["phases"]["metadata"] = bench_metadata(lives, study, args.reps)
                if "retrieve" in rest:
                    log.info("WADO-RS study retrieve: %d per server", args.retrieve_reps)
                    results["phases"]["retrieve"] = bench_retrieve(
                        lives, study, args.retrieve_reps, args.slices
                    )
                if "qido" in rest:
                    log.info("QIDO-RS: %d searches per server", args.queries)
                    queries = make_queries(args.queries, args.many, args.seed)
                    results["phases"]["qido"] = bench_qido(lives, queries)
    except KeyboardInterrupt:
        log.error("interrupted; servers stopped")
        return 130
    finally:
        if not args.keep:
            shutil.rmtree(args.tmp, ignore_errors=True)
    results["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    results["targets"] = targets(results)
    results["problems"] = problems(results)
    table = rows(results)
    print("\n" + run.render(table, markdown=False) + "\n")
    for t in results["targets"]:
        print(f"  [{t['status']:>7}] {t['target']}: {t['measured']}")
    for w in results["problems"]:
        log.warning("%s", w)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"dicomweb-{started:%Y%m%d-%H%M%S}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(results, table))
    print(f"wrote {stem}.json and {stem}.md ({results['elapsed_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
