"""schemathesis against the served OpenAPI schema: no request, however odd, gets a 5xx.

Runs the real `schemathesis` CLI (coverage + fuzzing phases) against a running
`hilum serve` holding one small study, with that study's UIDs offered as path
parameters so the fuzzer reaches past the 404s into the handlers.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import start_server, stop_server
from factory import StudySpec, stow_study
from hilum.config import Settings


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_no_server_errors_for_generated_requests(settings: Settings, tmp_path: Path) -> None:
    server = start_server(settings, tmp_path)
    try:
        base = f"http://127.0.0.1:{settings.http.port}"
        datasets = stow_study(base, StudySpec(slices=2))
        first = datasets[0]
        config = tmp_path / "schemathesis.toml"
        config.write_text(
            "\n".join([
                "request-timeout = 20.0",
                "[generation]",
                "max-examples = 12",
                "[parameters]",
                f'"path.study_uid" = "{first.StudyInstanceUID}"',
                f'"path.series_uid" = "{first.SeriesInstanceUID}"',
                f'"path.sop_uid" = "{first.SOPInstanceUID}"',
                '"path.frame_list" = "1"',
                '"path.frame" = "1"',
                '"path.tag" = "7FE00010"',
            ])
            + "\n"
        )
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "schemathesis"),
                "--config-file", str(config),
                "run", f"{base}/api/v1/openapi.json",
                "--checks", "not_a_server_error",
                "--phases", "coverage,fuzzing",
                # Echo waits for a network timeout per generated host: slow and not a server error.
                "--exclude-path-regex", "/echo$",
                # One worker: in CPython 3.11 ast.parse in two threads at once can fail with
                # "AST constructor recursion depth mismatch" (hypothesis parses lambdas).
                "--workers", "1",
                "--seed", "20261129",
            ],
            capture_output=True, text=True, timeout=900, cwd=tmp_path,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-6000:]
        log = server.log.read_text()
        assert "Traceback" not in log, log[-4000:]
    finally:
        stop_server(server)
