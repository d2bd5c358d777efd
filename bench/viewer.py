"""Viewer benchmark: from clicking a 200-slice CT study in the study list to the first
rendered image, and to the whole series loaded, in headless Chromium on localhost.

Starts its own `hilum serve` (authentication off, default HTTP processes) on a scratch data
directory, stores one CT study of 200 slices of 512x512 (16-bit, ~100 MB) through
STOW-RS, then opens the study list in Chromium and clicks the study, several times:
"cold" in a new browser profile (the app's code not yet cached) clicking as soon as the
list shows, "warm" in the same browser after going back (code cached, images fetched
again), and in a new profile clicking after 1.5 s on the list (the list page loads the
viewer's code meanwhile, as it does for a reader). Targets: first image < 1 s, whole
series < 5 s.

    .venv/bin/python bench/viewer.py [--slices 200] [--runs 3] [--append-results]

Needs the web app built (scripts/build-web.sh) and Debian's chromium.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from webdata import CtSpec, ct_series, stow  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    http, dicom = free_port(), free_port()
    # Authentication off (no login step to time); HTTP processes as configured by default
    # (http.workers = 0: one per core, at most 4).
    env = {**os.environ, "HILUM_AUTH__ENABLED": "false"}
    log = (data / "server.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hilum.cli",
            "serve",
            "--data-dir",
            str(data),
            "--http-port",
            str(http),
            "--dicom-port",
            str(dicom),
            "--host",
            "127.0.0.1",
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{http}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/api/v1/health", timeout=2).status_code == 200:
                return process, base
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.3)
    process.kill()
    raise SystemExit(f"hilum serve did not start:\n{(data / 'server.log').read_text()}")


def click_and_time(page, base: str, study: str, dwell: float = 0.0) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    page.goto(f"{base}/studies")
    link = page.locator(f"tr[data-study='{study}'] a")
    link.wait_for()
    page.wait_for_timeout(dwell * 1000)  # a reader looks at the list before clicking
    page.evaluate(
        "() => { window.__clickAt = null; addEventListener('mousedown',"
        " () => { window.__clickAt = performance.now() }, { capture: true, once: true }) }"
    )
    link.click()
    page.wait_for_function(
        "() => window.hilumProbe"
        " && window.hilumProbe.marks.some(m => m.frames >= 100 && m.loaded !== undefined)",
        timeout=120_000,
    )
    first, loaded, failed = page.evaluate(
        "() => { const m = window.hilumProbe.marks.find(m => m.frames >= 100 && m.loaded !== undefined);"
        " return [m.first - window.__clickAt, m.loaded - window.__clickAt, m.failed] }"
    )
    if failed:
        raise SystemExit(f"{failed} images failed to load")
    return float(first), float(loaded)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--append-results", action="store_true", help="append the numbers to bench/RESULTS.md"
    )
    args = parser.parse_args()
    if not (REPO / "web" / "dist" / "index.html").exists():
        raise SystemExit("build the web app first: scripts/build-web.sh")
    from playwright.sync_api import sync_playwright

    scratch = Path(tempfile.mkdtemp(prefix="hilum-viewer-bench-"))
    process, base = start(scratch)
    try:
        spec = CtSpec(
            slices=args.slices,
            size=args.size,
            spacing=0.7,
            thickness=1.0,
            patient_id="BENCH1",
            patient_name="BENCH^VIEWER",
            accession="BENCH1",
        )
        t = time.monotonic()
        stow(base, ct_series(spec))
        print(f"stored {args.slices} slices of {args.size}x{args.size} in {time.monotonic() - t:.1f} s")
        cold: list[tuple[float, float]] = []
        warm: list[tuple[float, float]] = []
        read: list[tuple[float, float]] = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            for run in range(args.runs):
                context = browser.new_context(viewport={"width": 1400, "height": 900})
                page = context.new_page()
                cold.append(click_and_time(page, base, spec.study_uid))
                warm.append(click_and_time(page, base, spec.study_uid))
                context.close()
                context = browser.new_context(viewport={"width": 1400, "height": 900})
                read.append(click_and_time(context.new_page(), base, spec.study_uid, dwell=1.5))
                context.close()
                print(
                    f"run {run + 1}: cold first {cold[-1][0]:.0f} ms, all {cold[-1][1]:.0f} ms; "
                    f"warm first {warm[-1][0]:.0f} ms, all {warm[-1][1]:.0f} ms; "
                    f"after 1.5 s on the list first {read[-1][0]:.0f} ms, all {read[-1][1]:.0f} ms"
                )
            browser.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(scratch, ignore_errors=True)

    def med(values: list[tuple[float, float]], i: int) -> float:
        return statistics.median(v[i] for v in values)

    rows = [
        ("cold (new browser profile)", med(cold, 0), med(cold, 1)),
        ("warm (app code cached)", med(warm, 0), med(warm, 1)),
        ("new profile, click after 1.5 s on the list", med(read, 0), med(read, 1)),
    ]
    lines = [
        f"| {name} | {first:.0f} ms | {all_:.0f} ms | {'met' if first < 1000 else 'MISSED'} / "
        f"{'met' if all_ < 5000 else 'MISSED'} |"
        for name, first, all_ in rows
    ]
    table = "\n".join(
        ["| click → | first image | whole series | targets (< 1 s / < 5 s) |", "|---|---|---|---|", *lines]
    )
    print(table)
    if args.append_results:
        cpu = os.cpu_count()
        with (REPO / "bench" / "RESULTS.md").open("a") as out:
            out.write(
                f"\n## Viewer: click to first image and to whole series ({datetime.now(UTC):%Y-%m-%d})\n\n"
                f"`bench/viewer.py --slices {args.slices} --runs {args.runs}`: one CT study, "
                f"{args.slices} slices of {args.size}x{args.size} 16-bit, Hilum on 127.0.0.1 (default "
                "HTTP processes, auth off), headless Debian Chromium (WebGL by SwiftShader), "
                f"{cpu} cores shared with the server (load average {os.getloadavg()[0]:.1f} at the end, "
                "other work running on the machine). "
                f"Medians of {args.runs} runs: "
                "the first image by one WADO-RS frame request, the whole series by one streamed "
                "series retrieve, uncompressed.\n\n" + table + "\n"
            )


if __name__ == "__main__":
    main()
