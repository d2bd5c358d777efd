"""A `hilum serve` with authentication on, as a new install has it, and its users.

Shared by the security tests (authorization matrix, share links, group rules,
hostile input, SSO, the web app): start one, read the first administrator's
password from the console, add users on the command line, get bearer tokens.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx

from conftest import RunningServer, free_port, hilum_env, start_server, stop_server
from hilum.config import Settings, load_settings

AUTH_ON = {"HILUM_AUTH__ENABLED": "true"}
PASSWORD = "correct horse battery"


def start_secure_server(
    tmp: Path, *, database_url: str = "", env: dict[str, str] | None = None
) -> tuple[RunningServer, str]:
    """A server with authentication on (one DICOM and one HTTP process); its admin password."""
    settings = load_settings(
        None, data_dir=tmp / "data", database_url=database_url,
        dicom={"ae_title": "HILUM", "port": free_port(), "host": "127.0.0.1", "workers": 1},
        http={"port": free_port(), "workers": 1},
    )
    server = start_server(settings, tmp, env={**AUTH_ON, **(env or {})})
    found = re.search(r"password: (\S+)", server.log.read_text())
    if found is None:
        stop_server(server)
        raise AssertionError(f"no first administrator password printed:\n{server.log.read_text()}")
    return server, found.group(1)


def base_url(server: RunningServer) -> str:
    return f"http://127.0.0.1:{server.settings.http.port}"


def hilum_cli(settings: Settings, *args: str, stdin: str | None = None) -> str:
    """Run a `hilum` command against ``settings``' data dir; its output (it must succeed)."""
    result = subprocess.run(
        [sys.executable, "-m", "hilum.cli", *args, "--data-dir", str(settings.data_dir)],
        capture_output=True, text=True, env={**hilum_env(settings), **AUTH_ON}, input=stdin, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def add_user(settings: Settings, username: str, role: str, *, password: str = PASSWORD,
             person_name: str = "", groups: str = "") -> None:
    """Create a user through the service `hilum user add` calls, in this process: a
    command-line process per user cost seconds (the command itself is tested in
    tests/test_auth.py::test_user_cli)."""
    from hilum.auth.service import AuthService
    from hilum.index.database import make_engine

    engine = make_engine(settings.index_url, pool_size=1)
    try:
        AuthService(engine, settings.auth).add_user(
            username, role, password, person_name=person_name,
            groups=[g for g in groups.split(",") if g.strip()],
        )
    finally:
        engine.dispose()


def token(base: str, username: str, password: str = PASSWORD) -> str:
    reply = httpx.post(f"{base}/api/v1/auth/token", json={"username": username, "password": password})
    assert reply.status_code == 200, reply.text
    return str(reply.json()["access_token"])
