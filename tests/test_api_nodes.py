"""The remote AE API (/api/v1/remote-aes): create, list, read, delete, C-ECHO.

Driven over HTTP (httpx) against Hilum's HTTP server running in the test
process; C-ECHO goes to a real DCMTK storescp; errors answer RFC 9457
problem bodies.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from conftest import DEFAULT_BACKENDS, backend_url, free_port, seed_index
from dimse_util import dcmtk_storescp
from hilum.app import prepare
from hilum.config import Settings, load_settings
from hilum.web.problems import PROBLEM
from hilum.web.server import HttpServer

API = "/api/v1/remote-aes"


@contextmanager
def http_client(settings: Settings) -> Iterator[httpx.Client]:
    """Hilum's HTTP server (as `hilum serve` runs it) and a client for it."""
    seed_index(settings)
    prepare(settings)
    server = HttpServer(settings)
    server.start()
    try:
        base = f"http://{settings.http.host}:{settings.http.port}"
        with httpx.Client(base_url=base, timeout=30) as client:
            yield client
    finally:
        server.stop()


@pytest.fixture(scope="module")
def shared_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """One HTTP server for the module's tests (each test leaves no remote AE behind)."""
    with backend_url(DEFAULT_BACKENDS[0]) as url:
        settings = load_settings(
            None,
            data_dir=tmp_path_factory.mktemp("nodes") / "data",
            database_url=url,
            http={"port": free_port()},
            auth={"enabled": False},
        )
        with http_client(settings) as test_client:
            yield test_client


@pytest.fixture
def client(shared_client: httpx.Client) -> Iterator[httpx.Client]:
    assert shared_client.get(API).json() == []
    yield shared_client
    for node in shared_client.get(API).json():
        shared_client.delete(f"{API}/{node['name']}")


def _node(name: str = "pacs", **values: object) -> dict[str, object]:
    return {"name": name, "ae_title": "PACS", "host": "127.0.0.1", "port": 104, **values}


def _bad(**values: object) -> dict[str, object]:
    return {**_node("pacs"), **values}


def _assert_problem(response: httpx.Response, status: int, *words: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, object] = response.json()
    assert body["status"] == status
    for word in words:
        assert word in str(body["detail"]), body
    return body


def test_create_list_read_and_delete_a_remote_ae(client: httpx.Client) -> None:
    created = client.post(API, json=_node("ct-archive", ae_title=" ARCHIVE ", description="old PACS"))
    assert created.status_code == 201, created.text
    assert created.headers["location"] == f"{API}/ct-archive"
    expected = {
        "name": "ct-archive", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": 104,
        "description": "old PACS", "from_config": False,
        "permissions": ["store", "find", "move", "get"], "tls": False,
    }
    assert created.json() == expected
    assert client.post(API, json=_node("b-node", port=11112)).status_code == 201

    listed = client.get(API)
    assert listed.status_code == 200
    assert [n["name"] for n in listed.json()] == ["b-node", "ct-archive"]
    assert client.get(f"{API}/ct-archive").json() == expected

    assert client.delete(f"{API}/ct-archive").status_code == 204
    _assert_problem(client.get(f"{API}/ct-archive"), 404, "ct-archive")
    assert [n["name"] for n in client.get(API).json()] == ["b-node"]


def test_a_duplicate_name_is_a_conflict(client: httpx.Client) -> None:
    assert client.post(API, json=_node("pacs")).status_code == 201
    _assert_problem(client.post(API, json=_node("pacs", ae_title="OTHER")), 409, "pacs")
    assert client.get(f"{API}/pacs").json()["ae_title"] == "PACS"  # unchanged


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"ae_title": "BAD\\AET"}, ["ae_title", "not a valid AE title"]),
        ({"ae_title": "WAY-TOO-LONG-AE-TITLE"}, ["ae_title"]),
        ({"ae_title": "   "}, ["ae_title"]),
        ({"port": 0}, ["port"]),
        ({"port": 65536}, ["port"]),
        ({"name": "has space"}, ["name"]),
        ({"host": ""}, ["host"]),
        ({"colour": "blue"}, ["colour"]),
    ],
)
def test_bad_remote_aes_are_refused_with_a_problem(
    client: httpx.Client, values: dict[str, object], words: list[str]
) -> None:
    _assert_problem(client.post(API, json=_bad(**values)), 400, *words)
    assert client.get(API).json() == []


def test_malformed_json_is_a_problem(client: httpx.Client) -> None:
    response = client.post(API, content=b"{not json", headers={"content-type": "application/json"})
    _assert_problem(response, 400)


def test_unknown_names_are_not_found(client: httpx.Client) -> None:
    _assert_problem(client.get(f"{API}/nobody"), 404, "nobody")
    _assert_problem(client.delete(f"{API}/nobody"), 404, "nobody")
    _assert_problem(client.post(f"{API}/nobody/echo"), 404, "nobody")


def test_echo_a_running_storescp(client: httpx.Client, tmp_path: Path) -> None:
    with dcmtk_storescp(tmp_path / "received", "ECHOSCP") as scp:
        client.post(API, json=_node("scp", ae_title=scp.ae_title, port=scp.port))
        response = client.post(f"{API}/scp/echo")
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True
    assert body["status"] == 0
    assert body["error"] is None
    assert 0 < body["elapsed_ms"] < 10_000
    assert "ECHO" in scp.log.read_text() or "Echo" in scp.log.read_text()


def test_echo_a_closed_port_says_why_it_failed(client: httpx.Client) -> None:
    port = free_port()  # nothing listens there
    client.post(API, json=_node("down", ae_title="DOWN", port=port))
    response = client.post(f"{API}/down/echo")
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is False
    assert body["status"] is None
    assert f"DOWN@127.0.0.1:{port}" in body["error"]
    assert "cannot connect" in body["error"] and "refused" in body["error"].lower()


def test_echo_a_peer_that_refuses_associations(client: httpx.Client, tmp_path: Path) -> None:
    with dcmtk_storescp(tmp_path / "received", "REFUSING", "--refuse") as scp:
        client.post(API, json=_node("picky", ae_title=scp.ae_title, port=scp.port))
        body = client.post(f"{API}/picky/echo").json()
    assert body["ok"] is False
    assert "rejected" in body["error"] and "calling AE title 'HILUM'" in body["error"]


def test_echo_an_unknown_host_says_so(client: httpx.Client) -> None:
    client.post(API, json=_node("nowhere", host="no-such-host.invalid"))
    body = client.post(f"{API}/nowhere/echo").json()
    assert body["ok"] is False
    assert "cannot resolve host 'no-such-host.invalid'" in body["error"]


def test_config_nodes_are_flagged_and_cannot_be_deleted(tmp_path: Path, database_url: str) -> None:
    settings: Settings = load_settings(
        None,
        data_dir=tmp_path / "data",
        database_url=database_url,
        http={"port": free_port()},
        auth={"enabled": False},
        remote_aes=[{"name": "configured", "ae_title": "CONF", "host": "10.0.0.1", "port": 104}],
    )
    # prepare() is what `hilum serve` does at start: config nodes are upserted
    with http_client(settings) as client:
        client.post(API, json=_node("api-made"))
        flags = {n["name"]: n["from_config"] for n in client.get(API).json()}
        assert flags == {"api-made": False, "configured": True}
        assert client.get(f"{API}/configured").json()["description"] == "from config"
        _assert_problem(client.delete(f"{API}/configured"), 409, "configuration file")
        _assert_problem(client.post(API, json=_node("configured")), 409, "exists already")
        assert client.delete(f"{API}/api-made").status_code == 204
