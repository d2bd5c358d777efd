"""Side-by-side DIMSE benchmark: Hilum vs Orthanc (and DCMTK storescp as a ceiling).

One run generates (or reuses) synthetic CT data, then for every server:

1. fresh server, ingest the CT set with 1 association (one ``storescu``);
2. fresh server, ingest the CT set with N parallel associations, then the
   small-study set the same way, then time study-level C-FIND requests sent
   over one open pynetdicom association.

Peak RSS / CPU time of the server process tree are sampled during ingest.
Results are printed as a table with Hilum/Orthanc ratios and written as JSON
and as a Markdown fragment for ``bench/RESULTS.md``.  See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import logging
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from argparse import RawDescriptionHelpFormatter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind as StudyFind,
)

import gen_ct

HOST = "127.0.0.1"  # everything stays on loopback
SCU_AET = "BENCHSCU"
HILUM_BIN = os.environ.get(
    "HILUM_BIN", str(Path(__file__).resolve().parents[1] / ".venv/bin/hilum")
)
# The Hilum command line, in one place (override with $HILUM_BENCH_CMD). Tokens are split on
# whitespace first, then {placeholders} are filled per token, so paths may contain spaces.
HILUM_CMD = os.environ.get(
    "HILUM_BENCH_CMD",
    "{bin} serve --data-dir {workdir}/data --ae-title {aet} --host 127.0.0.1"
    " --dicom-port {dicom_port} --http-port {http_port}",
)
# Orthanc runs with its authentication disabled in these benchmarks: Hilum too.
SERVER_ENV = {"TCP_NODELAY": "1", "HILUM_AUTH__ENABLED": "false"}
ALL_SERVERS = ("hilum", "orthanc", "storescp")
PARAMS = ("studies", "slices", "small", "queries", "parallel", "repeat", "seed")
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")
log = logging.getLogger("bench")


# --------------------------------------------------------------------------- servers


@dataclass
class Server:
    name: str
    aet: str
    workdir: Path
    dicom_port: int
    http_port: int
    proc: subprocess.Popen[bytes] | None = None
    startup_s: float = 0.0
    supports_find: bool = True


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def orthanc_cmd(srv: Server) -> list[str]:
    config = {
        "Name": "hilum-bench",
        "StorageDirectory": str(srv.workdir / "storage"),
        "IndexDirectory": str(srv.workdir / "index"),  # SQLite index
        "DicomAet": srv.aet,
        "DicomPort": srv.dicom_port,
        "HttpPort": srv.http_port,
        "MaximumPduLength": 131072,
        "DicomThreadsCount": 4,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowFind": True,  # needed for C-FIND from an unknown AE
        "AuthenticationEnabled": False,
        "RemoteAccessAllowed": True,
        "Plugins": [],
    }
    path = srv.workdir / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return ["Orthanc", str(path)]


def hilum_cmd(srv: Server) -> list[str]:
    f = {"bin": HILUM_BIN, "workdir": srv.workdir, "aet": srv.aet}
    f |= {"dicom_port": srv.dicom_port, "http_port": srv.http_port}
    return [token.format(**f) for token in HILUM_CMD.split()]


def storescp_cmd(srv: Server) -> list[str]:
    (srv.workdir / "storage").mkdir()
    srv.supports_find = False
    opts = f"--fork -aet {srv.aet} -pdu 131072 {srv.dicom_port}".split()
    return ["storescp", "-od", str(srv.workdir / "storage"), *opts]


COMMANDS: dict[str, tuple[str, Callable[[Server], list[str]]]] = {
    "hilum": ("HILUM", hilum_cmd),
    "orthanc": ("ORTHANC", orthanc_cmd),
    "storescp": ("STORESCP", storescp_cmd),
}


def echo(srv: Server) -> bool:
    cmd = f"echoscu -to 2 -ta 5 -td 5 -aet {SCU_AET} -aec {srv.aet} {HOST} {srv.dicom_port}"
    return subprocess.run(cmd.split(), capture_output=True, timeout=20).returncode == 0


def stop_server(srv: Server) -> None:
    proc = srv.proc
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            log.warning("%s did not exit after %s", srv.name, sig.name)


@contextlib.contextmanager
def running(name: str, tmp_root: Path, keep: bool, timeout: float = 120) -> Iterator[Server]:
    """Start a fresh ``name`` server in its own work dir; always stop it."""
    aet, build = COMMANDS[name]
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=tmp_root))
    srv = Server(name, aet, workdir, free_port(), free_port())
    cmd = build(srv)
    logfile = (srv.workdir / "server.log").open("wb")
    try:
        t0 = time.perf_counter()
        srv.proc = subprocess.Popen(
            cmd,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **SERVER_ENV},
            start_new_session=True,
        )
        while not echo(srv):
            if srv.proc.poll() is not None or time.perf_counter() - t0 > timeout:
                tail = (srv.workdir / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} did not answer C-ECHO ({' '.join(cmd)}):\n{tail}")
            time.sleep(0.2)
        srv.startup_s = time.perf_counter() - t0
        log.info("%s up on port %d after %.1fs", name, srv.dicom_port, srv.startup_s)
        yield srv
    finally:
        stop_server(srv)
        logfile.close()
        if not keep:
            shutil.rmtree(srv.workdir, ignore_errors=True)


# --------------------------------------------------------------------------- sampling


def tree_pids(root: int) -> list[int]:
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                children = Path(f"/proc/{pid}/task/{task}/children").read_text()
                todo.extend(int(c) for c in children.split())
    return pids


def tree_usage(root: int) -> tuple[int, float]:
    """(RSS bytes, CPU seconds incl. reaped children) summed over the process tree."""
    rss, ticks = 0, 0
    for pid in tree_pids(root):
        with contextlib.suppress(OSError, IndexError, ValueError):
            rss += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
            stat = Path(f"/proc/{pid}/stat").read_text()
            ticks += sum(int(v) for v in stat[stat.rindex(")") + 2 :].split()[11:15])
    return rss, ticks / TICK


@dataclass
class Sampler:
    """Background thread recording the peak RSS of a process tree."""

    pid: int
    interval: float = 0.05
    peak_rss: int = 0
    cpu_s: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self.peak_rss, self._cpu0 = tree_usage(self.pid)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_rss = max(self.peak_rss, tree_usage(self.pid)[0])

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        rss, cpu = tree_usage(self.pid)
        self.peak_rss, self.cpu_s = max(self.peak_rss, rss), cpu - self._cpu0


# --------------------------------------------------------------------------- measurements


def ingest(srv: Server, root: Path, manifest: dict, parallel: int, timeout: float) -> dict:
    """Send every file of ``manifest`` with ``parallel`` concurrent storescu processes."""
    files: list[str] = manifest["files"]
    k, r = divmod(len(files), parallel)
    bounds = [i * k + min(i, r) for i in range(parallel + 1)]
    chunks = [files[bounds[i] : bounds[i + 1]] for i in range(parallel)]
    base = f"storescu -R -ta 30 -td 120 -aet {SCU_AET} -aec {srv.aet} {HOST} {srv.dicom_port}"
    env = {**os.environ, "TCP_NODELAY": "1"}
    assert srv.proc is not None
    procs: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(tempfile.TemporaryFile()) for _ in chunks]
        try:
            with Sampler(srv.proc.pid) as sampler:
                t0 = time.perf_counter()
                for chunk, out in zip(chunks, logs, strict=True):
                    cmd = [*base.split(), *chunk]
                    procs.append(subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=out))
                codes = [p.wait(max(1.0, t0 + timeout - time.perf_counter())) for p in procs]
                elapsed = time.perf_counter() - t0
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        for out in logs:
            out.seek(0)
        messages = b"".join(out.read() for out in logs).decode(errors="replace")
    failures = messages.count("Store Failed") + sum(1 for c in codes if c != 0)
    if failures:
        log.warning("%s: storescu reported problems:\n%s", srv.name, messages[-2000:])
    return {
        "associations": parallel,
        "instances": len(files),
        "bytes": manifest["bytes"],
        "seconds": round(elapsed, 3),
        "instances_per_s": round(len(files) / elapsed, 1),
        "mb_per_s": round(manifest["bytes"] / elapsed / 1e6, 1),
        "peak_rss_mb": round(sampler.peak_rss / 2**20, 1),
        "server_cpu_s": round(sampler.cpu_s, 2),
        "storescu_failures": failures,
    }


def open_assoc(srv: Server) -> Association:
    ae = AE(ae_title=SCU_AET)
    ae.add_requested_context(StudyFind)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.maximum_pdu_size = 131072
    assoc = ae.associate(HOST, srv.dicom_port, ae_title=srv.aet)
    if not assoc.is_established:
        raise RuntimeError(f"{srv.name}: C-FIND association rejected/aborted")
    # pynetdicom writes command and data set PDUs separately: without TCP_NODELAY, Nagle plus
    # the peer's delayed ACK adds ~40 ms to every request.
    if assoc.dul.socket and assoc.dul.socket.socket:
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return assoc


_RETURN_KEYS = """StudyDate StudyTime AccessionNumber StudyID StudyDescription
    ReferringPhysicianName ModalitiesInStudy PatientName PatientID PatientBirthDate PatientSex
    NumberOfStudyRelatedSeries NumberOfStudyRelatedInstances"""
RETURN_KEYS = _RETURN_KEYS.split()


def study_query(**match: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for key in ("StudyInstanceUID", *RETURN_KEYS):
        setattr(ds, key, match.get(key, ""))
    return ds


def c_find(assoc: Association, query: Dataset) -> list[Dataset]:
    matches: list[Dataset] = []
    for status, ident in assoc.send_c_find(query, StudyFind):
        if not status:
            raise RuntimeError("C-FIND: no response (timeout or abort)")
        if status.Status in (0xFF00, 0xFF01):
            if ident is None:
                raise RuntimeError("C-FIND: pending response without a decodable identifier")
            matches.append(ident)
        elif status.Status != 0x0000:
            raise RuntimeError(f"C-FIND failed with status 0x{status.Status:04X}")
    return matches


def make_queries(count: int, small_studies: int, seed: int) -> list[tuple[str, Dataset]]:
    """Deterministic mix of the four study-level query kinds against the small set."""
    rnd = random.Random(seed)
    queries = []
    for i in range(count):
        meta = gen_ct.small_study_meta(rnd.randrange(small_studies), seed)
        kind = ("patient_id", "patient_name", "date_range", "study_uid")[i % 4]
        if kind == "patient_id":
            q = study_query(PatientID=meta["patient_id"])
        elif kind == "patient_name":
            family, given = meta["name"].split("^")
            q = study_query(PatientName=f"{family}^{given[0]}*")
        elif kind == "date_range":
            start = dt.datetime.strptime(meta["date"], "%Y%m%d")
            q = study_query(StudyDate=f"{meta['date']}-{(start + dt.timedelta(days=6)):%Y%m%d}")
        else:
            q = study_query(StudyInstanceUID=meta["study_uid"])
        queries.append((kind, q))
    return queries


def stats_ms(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1000
    p50, p95 = np.percentile(a, [50, 95])
    stats = {"p50": p50, "p95": p95, "mean": a.mean(), "max": a.max()}
    return {k: round(float(v), 2) for k, v in stats.items()}


def find_bench(srv: Server, queries: list[tuple[str, Dataset]], warmup: int = 8) -> dict[str, Any]:
    """Latency of each C-FIND (first request to final response) over one association."""
    lat: dict[str, list[float]] = {}
    matches: dict[str, int] = {}
    assoc = open_assoc(srv)
    try:
        for _, q in queries[:warmup]:
            c_find(assoc, q)
        for kind, q in queries:
            t0 = time.perf_counter()
            n = len(c_find(assoc, q))
            lat.setdefault(kind, []).append(time.perf_counter() - t0)
            matches[kind] = matches.get(kind, 0) + n
    finally:
        assoc.release()
    every = [v for values in lat.values() for v in values]
    result: dict[str, Any] = {"requests": len(queries), "all": stats_ms(every)}
    for kind, values in lat.items():
        result[kind] = {**stats_ms(values), "matches": matches[kind]}
    return result


def verify(srv: Server, studies: int, instances: int) -> dict[str, Any]:
    """Check that everything sent is stored (C-FIND study listing, or files for storescp)."""
    if not srv.supports_find:
        found = sum(1 for p in (srv.workdir / "storage").rglob("*") if p.is_file())
        return {"ok": found == instances, "instances": found}
    assoc = open_assoc(srv)
    try:
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.StudyInstanceUID = ""
        q.NumberOfStudyRelatedInstances = ""
        rows = c_find(assoc, q)
    finally:
        assoc.release()
    n_inst = sum(int(r.get("NumberOfStudyRelatedInstances") or 0) for r in rows)
    ok = len(rows) == studies and n_inst in (0, instances)  # 0: counts not supported
    return {"ok": ok, "studies": len(rows), "instances": n_inst}


def disk_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6, 1)


def median_run(runs: list[dict]) -> dict:
    """The run with the median instances/s; keeps every run's rate and ANDs verification."""
    best = dict(sorted(runs, key=lambda r: r["instances_per_s"])[len(runs) // 2])
    best["runs_instances_per_s"] = [r["instances_per_s"] for r in runs]
    best["verify"] = next((r["verify"] for r in runs if not r["verify"]["ok"]), best["verify"])
    return best


def bench_server(name: str, args: argparse.Namespace, data: dict[str, tuple[Path, dict]]) -> dict:
    """All measurements for one server; every CT ingest starts from an empty server."""
    (ct_root, ct), (small_root, small) = data["ct"], data["small"]
    n_ct, n_small, par = len(ct["files"]), len(small["files"]), args.parallel
    res: dict[str, Any] = {}
    runs_1, runs_n = [], []
    for rep in range(args.repeat):
        with running(name, args.tmp, args.keep) as srv:
            assert srv.proc is not None
            res.setdefault("startup_s", round(srv.startup_s, 2))
            res.setdefault("idle_rss_mb", round(tree_usage(srv.proc.pid)[0] / 2**20, 1))
            log.info("%s: ingest %d CT instances, 1 association (run %d)", name, n_ct, rep + 1)
            runs_1.append(ingest(srv, ct_root, ct, 1, args.timeout))
            runs_1[-1]["verify"] = verify(srv, ct["studies"], n_ct)
            runs_1[-1]["disk_mb"] = disk_mb(srv.workdir)
    for rep in range(args.repeat):
        with running(name, args.tmp, args.keep) as srv:
            log.info("%s: ingest %d CT instances, %d assocs (run %d)", name, n_ct, par, rep + 1)
            runs_n.append(ingest(srv, ct_root, ct, par, args.timeout))
            runs_n[-1]["verify"] = verify(srv, ct["studies"], n_ct)
            if rep < args.repeat - 1:
                continue
            log.info("%s: ingest %d small studies, %d associations", name, n_small, par)
            res["ingest_small"] = ingest(srv, small_root, small, par, args.timeout)
            expected = (ct["studies"] + small["studies"], n_ct + n_small)
            res["ingest_small"]["verify"] = verify(srv, *expected)
            if srv.supports_find:
                log.info("%s: %d C-FIND requests over one association", name, args.queries)
                queries = make_queries(args.queries, small["studies"], args.seed)
                res["find"] = find_bench(srv, queries)
    res["ingest_1"], res["ingest_n"] = median_run(runs_1), median_run(runs_n)
    for key in ("ingest_1", "ingest_n", "ingest_small"):
        if not res[key]["verify"]["ok"]:
            log.warning("%s: %s verification failed: %s", name, key, res[key]["verify"])
    return res


# --------------------------------------------------------------------------- reporting


def first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        if out.returncode != 0:
            return f"unavailable (exit {out.returncode})"
        lines = [ln.strip() for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
        return lines[0] if lines else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "not available"


def hilum_version() -> str:
    """``hilum --version`` if supported, else the installed distribution's version."""
    version = first_line([HILUM_BIN, "--version"])
    if not version.startswith("unavailable"):
        return version
    try:
        return f"{importlib.metadata.version('hilum')} (package metadata)"
    except importlib.metadata.PackageNotFoundError:
        return version


def machine_info(path: Path) -> dict[str, Any]:
    import pydicom
    import pynetdicom

    cpuinfo = Path("/proc/cpuinfo").read_text()
    meminfo = dict(ln.split(":", 1) for ln in Path("/proc/meminfo").read_text().splitlines())
    mounts = [ln.split() for ln in Path("/proc/mounts").read_text().splitlines()]
    here = str(path.resolve())
    mount = max((m for m in mounts if here.startswith(m[1])), key=lambda m: len(m[1]))
    dev = Path(mount[0]).name
    rot = Path(f"/sys/block/{dev}/queue/rotational")
    osrel = dict(
        ln.split("=", 1) for ln in Path("/etc/os-release").read_text().split("\n") if "=" in ln
    )
    cpu = [
        ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")
    ]
    return {
        "cpu": cpu[0] if cpu else platform.machine(),
        "nproc": len(os.sched_getaffinity(0)),
        "memory_gb": round(int(meminfo["MemTotal"].split()[0]) / 2**20, 1),
        "kernel": platform.release(),
        "os": osrel.get("PRETTY_NAME", "?").strip('"'),
        "disk": f"{mount[0]} {mount[2]} on {mount[1]}"
        + (f", rotational={rot.read_text().strip()}" if rot.exists() else "")
        + f", {shutil.disk_usage(path).free / 1e9:.0f} GB free",
        "orthanc": first_line(["Orthanc", "--version"]),
        "dcmtk": first_line(["storescu", "--version"]).strip("$ "),
        "hilum": hilum_version(),
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "pynetdicom": pynetdicom.__version__,
    }


def metric_rows(parallel: int) -> list[tuple[str, str]]:
    """(label, dotted path into a server's results); ↑ marks higher-is-better rows."""
    rows = [("startup to C-ECHO (s)", "startup_s"), ("idle RSS (MiB)", "idle_rss_mb")]
    for key, label in (
        ("ingest_1", "CT 1 assoc"),
        ("ingest_n", f"CT {parallel} assoc"),
        ("ingest_small", f"small {parallel} assoc"),
    ):
        rows.append((f"{label}: instances/s ↑", f"{key}.instances_per_s"))
        if key != "ingest_small":
            rows.append((f"{label}: MB/s ↑", f"{key}.mb_per_s"))
        rows.append((f"{label}: peak RSS (MiB)", f"{key}.peak_rss_mb"))
        rows.append((f"{label}: server CPU (s)", f"{key}.server_cpu_s"))
    rows.append(("CT 1 assoc: disk used (MB)", "ingest_1.disk_mb"))
    for kind in ("all", "patient_id", "patient_name", "date_range", "study_uid"):
        rows.append((f"C-FIND {kind} p50 (ms)", f"find.{kind}.p50"))
        rows.append((f"C-FIND {kind} p95 (ms)", f"find.{kind}.p95"))
    return rows


def lookup(res: dict[str, Any], path: str) -> float | None:
    cur: Any = res
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def table(results: dict[str, Any], parallel: int) -> list[list[str]]:
    names = list(results["servers"])
    ratio = "hilum" in names and "orthanc" in names
    header = ["metric", *names] + (["hilum/orthanc"] if ratio else [])
    out = [header]
    for label, path in metric_rows(parallel):
        vals = [lookup(results["servers"][n], path) for n in names]
        if all(v is None for v in vals):
            continue
        row = [label, *("-" if v is None else f"{v:g}" for v in vals)]
        if ratio:
            h, o = (lookup(results["servers"][n], path) for n in ("hilum", "orthanc"))
            row.append(f"{h / o:.2f}" if h and o else "-")
        out.append(row)
    return out


def render(rows: list[list[str]], markdown: bool) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    rule = ["-" * w for w in widths]
    if markdown:
        rule = [w[:-1] + (":" if i else "-") for i, w in enumerate(rule)]
    lines = []
    for r in [rows[0], rule, *rows[1:]]:
        cells = [
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append(f"| {' | '.join(cells)} |" if markdown else "  ".join(cells))
    return "\n".join(lines)


def markdown(results: dict[str, Any], rows: list[list[str]]) -> str:
    p, m = results["params"], results["machine"]
    lines = [
        f"### {results['started']} — {p['studies']}x{p['slices']} CT, {p['small']} small studies, "
        f"{p['parallel']} parallel associations, {p['queries']} C-FIND"
        + (f", median of {p['repeat']} CT ingest runs" if p.get("repeat", 1) > 1 else ""),
        "",
        f"- Machine: {m['cpu']}, {m['nproc']} CPUs, {m['memory_gb']} GiB RAM, "
        f"kernel {m['kernel']}, {m['os']}",
        f"- Disk: {m['disk']}",
        f"- Versions: {m['orthanc']}; {m['dcmtk']}; Hilum {m['hilum']}; Python {m['python']}, "
        f"pydicom {m['pydicom']}, pynetdicom {m['pynetdicom']}",
        "",
        render(rows, markdown=True),
        "",
        "MB = 10^6 bytes of Part 10 files sent; RSS summed over the server process tree; "
        "ratio = Hilum/Orthanc; ↑ = higher is better, otherwise lower is better.",
    ]
    lines += [f"\n**Warning:** {w}" for w in warnings(results)]
    return "\n".join(lines) + "\n"


def warnings(results: dict[str, Any]) -> list[str]:
    """Correctness problems that make the numbers incomparable."""
    out = []
    servers = results["servers"]
    for name, res in servers.items():
        bad = [k for k in ("ingest_1", "ingest_n", "ingest_small") if not res[k]["verify"]["ok"]]
        if bad:
            out.append(f"{name} failed storage verification for {', '.join(bad)}.")
    if "find" in servers.get("hilum", {}) and "find" in servers.get("orthanc", {}):
        for kind in ("patient_id", "patient_name", "date_range", "study_uid"):
            h, o = (servers[n]["find"][kind]["matches"] for n in ("hilum", "orthanc"))
            if h != o:
                out.append(f"C-FIND {kind}: Hilum returned {h} matches, Orthanc {o}.")
    return out


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    add = ap.add_argument
    add("--studies", type=int, default=4, help="CT studies (default 4)")
    add("--slices", type=int, default=250, help="slices per CT study (default 250)")
    add("--small", type=int, default=10_000, help="1-instance studies for C-FIND (default 10000)")
    add("--queries", type=int, default=200, help="C-FIND requests (default 200)")
    add("--parallel", type=int, default=4, help="parallel associations (default 4)")
    add("--quick", action="store_true", help="smoke run: 2x50 CT, 500 small studies, 40 queries")
    add("--only", default=",".join(ALL_SERVERS), help="comma list of: hilum,orthanc,storescp")
    add("--repeat", type=int, default=1, help="CT ingest runs per mode; the median is reported")
    add("--seed", type=int, default=1)
    add("--cache-dir", type=Path, help="keep generated data here and reuse it across runs")
    add("--out-dir", type=Path, default=Path(__file__).parent / "out", help="JSON/MD output")
    add("--timeout", type=float, default=1800, help="upper bound per ingest phase (s)")
    add("--keep", action="store_true", help="keep temp dirs (server logs, storage)")
    args = ap.parse_args()
    if args.quick:
        args.studies, args.slices, args.small, args.queries = 2, 50, 500, 40
    args.servers = [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := set(args.servers) - set(ALL_SERVERS):
        ap.error(f"unknown server(s): {', '.join(sorted(unknown))}")
    needed = {"hilum": HILUM_BIN, "orthanc": "Orthanc", "storescp": "storescp"}
    for tool in [needed[s] for s in args.servers] + ["storescu", "echoscu"]:
        if shutil.which(tool) is None:
            ap.error(f"{tool} not found (use --only to skip a server)")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    args = parse_args()
    # Signals unwind like Ctrl-C so every `running()` context stops its server (SIGINT is set
    # explicitly because it is ignored when started in the background by a non-interactive shell).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    args.tmp = Path(tempfile.mkdtemp(prefix="hilum-bench-"))
    started = dt.datetime.now().astimezone()
    try:
        data_root = args.cache_dir or args.tmp / "data"
        data = {}
        for kind, sub, n, m in (
            ("ct", f"ct-{args.studies}x{args.slices}-s{args.seed}", args.studies, args.slices),
            ("small", f"small-{args.small}-s{args.seed}", args.small, 1),
        ):
            t0 = time.perf_counter()
            manifest = gen_ct.load_or_generate(data_root / sub, kind, n, m, args.seed)
            for rel in manifest["files"]:  # warm the page cache so all servers read from RAM
                (data_root / sub / rel).read_bytes()
            took = time.perf_counter() - t0
            log.info("data %s: %d files (%.1fs)", sub, len(manifest["files"]), took)
            data[kind] = (data_root / sub, manifest)
        results: dict[str, Any] = {
            "started": started.isoformat(timespec="seconds"),
            "params": {k: getattr(args, k) for k in PARAMS},
            "machine": machine_info(args.tmp),
            "servers": {},
        }
        for name in sorted(args.servers, key=ALL_SERVERS.index):
            results["servers"][name] = bench_server(name, args, data)
    except KeyboardInterrupt:
        log.error("interrupted; servers stopped")
        return 130
    finally:
        if not args.keep:
            shutil.rmtree(args.tmp, ignore_errors=True)
    rows = table(results, args.parallel)
    print("\n" + render(rows, markdown=False) + "\n")
    for w in warnings(results):
        log.warning("%s", w)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"bench-{started:%Y%m%d-%H%M%S}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(results, rows))
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
