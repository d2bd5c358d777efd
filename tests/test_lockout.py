"""Password and PIN guessing limits against a real `hilum serve`, on SQLite and PostgreSQL.

Guesses are sent in parallel (threads released together), because the limits are
counted in SQL and must hold when many checks are in flight at once. Requests come
from several loopback addresses (127.0.0.x) so that the lock per (account, address)
can be seen. Lock expiry is simulated by moving the stored times back, never by
waiting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, create_engine, select, update

from auth_util import PASSWORD, hilum_cli, start_secure_server
from auth_util import token as bearer_token
from conftest import BACKENDS, DEFAULT_BACKENDS, RunningServer, backend_url, stop_server
from factory import StudySpec, stow_study
from hilum.auth.models import login_attempts_t, users_t
from hilum.domain.clock import utcnow
from hilum.shares.models import share_links_t

ENV = {
    # The per-process 429 throttle would stop these tests' many guesses from 127.0.0.1.
    "HILUM_AUTH__MAX_FAILURES_PER_ADDRESS": "100000",
    "HILUM_AUTH__ACCOUNT_BACKOFF_FAILURES": "6",
    "HILUM_AUTH__ACCOUNT_BACKOFF_SECONDS": "600",
    "HILUM_SHARES__PIN_ATTEMPTS": "3",
}
ATTEMPTS = 5  # auth.lockout_attempts (default)
BACKOFF = 6  # auth.account_backoff_failures (ENV)
GENERIC = {"status": 401, "detail": "wrong user name or password"}
# Every password check costs an argon2 hash (~0.1 s, more on a busy machine): the guesses
# are as few as show the point (more than the limits, in parallel).
GUESSES = 12


class Site:
    def __init__(self, server: RunningServer, admin_password: str, backend: str) -> None:
        self.server = server
        self.backend = backend
        self.base = f"http://127.0.0.1:{server.settings.http.port}"
        self.admin = {"Authorization": f"Bearer {bearer_token(self.base, 'admin', admin_password)}"}
        self.engine: Engine = create_engine(server.settings.index_url)
        self.study_uid = ""

    def client(self, address: str = "127.0.0.1") -> httpx.Client:
        """A client whose requests come from ``address`` (a loopback address)."""
        transport = httpx.HTTPTransport(local_address=address)
        return httpx.Client(base_url=self.base, transport=transport, timeout=60)

    def login(self, username: str, password: str, address: str = "127.0.0.1") -> httpx.Response:
        with self.client(address) as client:
            return client.post("/api/v1/auth/token", json={"username": username, "password": password})

    def attempts(self, username: str, address: str = "127.0.0.1") -> Any:
        with self.engine.connect() as conn:
            return conn.execute(
                select(login_attempts_t).where(
                    login_attempts_t.c.username == username, login_attempts_t.c.client_address == address
                )
            ).mappings().first()

    def user(self, username: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(select(users_t).where(users_t.c.username == username)).mappings().one()

    def add_user(self, username: str, role: str = "technologist") -> None:
        reply = httpx.post(f"{self.base}/api/v1/users", headers=self.admin,
                           json={"username": username, "role": role, "password": PASSWORD})
        assert reply.status_code == 201, reply.text



def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """One server per back-end for the module; PostgreSQL only for the tests marked
    ``postgres`` (where parallel SQL is what they prove)."""
    if "site" in metafunc.fixturenames:
        both = metafunc.definition.get_closest_marker("postgres") is not None
        metafunc.parametrize("site", BACKENDS if both else DEFAULT_BACKENDS, indirect=True, scope="module")


@pytest.fixture(scope="module")
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with backend_url(request.param) as url:
        tmp = tmp_path_factory.mktemp(f"lockout-{request.param}")
        server, admin_password = start_secure_server(tmp, database_url=url, env=ENV)
        site = Site(server, admin_password, request.param)
        try:
            site.study_uid = stow_study(site.base, StudySpec(patient_id="LOCK", slices=1),
                                        site.admin["Authorization"].split()[1])[0].StudyInstanceUID
            yield site
        finally:
            site.engine.dispose()
            stop_server(server)


def _together(count: int, call: Any) -> list[Any]:
    """``call(i)`` for i in range(count), from as many threads released at the same moment."""
    barrier = threading.Barrier(count)

    def run(i: int) -> Any:
        barrier.wait()
        return call(i)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def _answer(reply: httpx.Response) -> dict[str, Any]:
    return {"status": reply.status_code, "detail": reply.json().get("detail")}


# -- passwords -------------------------------------------------------------------------------


@pytest.mark.postgres
def test_parallel_wrong_passwords_lock_the_address(site: Site) -> None:
    site.add_user("target", "radiologist")
    replies = _together(GUESSES, lambda i: site.login("target", f"wrong guess {i}"))
    assert [_answer(r) for r in replies] == [GENERIC] * GUESSES
    attempts = site.attempts("target")
    assert attempts is not None and attempts["failures"] == GUESSES, attempts
    assert attempts["locked_until"] is not None
    # Only the guesses made before the address was locked count against the account.
    assert site.user("target")["failed_logins"] == ATTEMPTS
    # The right password is refused from the locked address, with the same answer.
    assert _answer(site.login("target", PASSWORD)) == GENERIC
    assert site.attempts("target")["failures"] == GUESSES


@pytest.mark.postgres
def test_a_locked_address_leaves_other_addresses_signing_in(site: Site) -> None:
    site.add_user("victim", "radiologist")
    for i in range(ATTEMPTS):
        assert _answer(site.login("victim", f"guess {i}", "127.0.0.2")) == GENERIC
    assert _answer(site.login("victim", PASSWORD, "127.0.0.2")) == GENERIC
    # Another address is not locked out of the account.
    assert site.login("victim", PASSWORD, "127.0.0.1").status_code == 200
    assert site.login("victim", PASSWORD, "127.0.0.3").status_code == 200
    # When the lock expires (moved into the past), the address signs in again and starts afresh.
    with site.engine.begin() as conn:
        conn.execute(
            update(login_attempts_t)
            .where(login_attempts_t.c.username == "victim", login_attempts_t.c.client_address == "127.0.0.2")
            .values(locked_until=utcnow() - timedelta(seconds=1))
        )
    assert site.login("victim", PASSWORD, "127.0.0.2").status_code == 200
    after = site.attempts("victim", "127.0.0.2")
    assert after["failures"] == 0 and after["locked_until"] is None and after["last_success_at"] is not None


def test_unknown_wrong_and_locked_answer_the_same(site: Site) -> None:
    site.add_user("known", "radiologist")
    site.add_user("lockme", "radiologist")
    for i in range(ATTEMPTS):
        site.login("lockme", f"guess {i}", "127.0.0.4")
    cases = {
        "unknown user": ("nobody-at-all", PASSWORD),
        "wrong password": ("known", "not the password"),
        "locked, right password": ("lockme", PASSWORD),
        "locked, wrong password": ("lockme", "not the password"),
    }
    timings: dict[str, list[float]] = {name: [] for name in cases}
    headers: dict[str, dict[str, str]] = {}
    with site.client("127.0.0.4") as client:
        for _ in range(3):
            for name, (user, password) in cases.items():
                start = time.perf_counter()
                reply = client.post("/api/v1/auth/token", json={"username": user, "password": password})
                timings[name].append(time.perf_counter() - start)
                assert _answer(reply) == GENERIC, name
                headers[name] = {k: v for k, v in reply.headers.items() if k != "date"}
    assert all(found == headers["unknown user"] for found in headers.values()), headers
    # Roughly the same time: every case checks a password hash (argon2) and writes its counter.
    # The fastest of each (a busy machine only adds time) is compared: a case that skipped
    # the hash would take a few milliseconds against a tenth of a second or more.
    fastest = {name: min(values) for name, values in timings.items()}
    assert all(value > 0.25 * max(fastest.values()) for value in fastest.values()), fastest


@pytest.mark.postgres
def test_account_backoff_slows_guessers_spread_over_addresses(site: Site) -> None:
    site.add_user("spread", "radiologist")
    assert site.login("spread", PASSWORD, "127.0.0.20").status_code == 200  # the user's own address
    # 6 (account_backoff_failures) wrong passwords from 3 addresses, none of them locked...
    for address in ("127.0.0.21", "127.0.0.22", "127.0.0.23"):
        replies = _together(2, lambda i, a=address: site.login("spread", f"guess {i}", a))
        assert [_answer(r) for r in replies] == [GENERIC] * 2
    assert site.user("spread")["failed_logins"] == BACKOFF
    # ... and a new address is refused even the right password while the back-off lasts,
    assert _answer(site.login("spread", PASSWORD, "127.0.0.24")) == GENERIC
    # but the user's own address is not slowed.
    assert site.login("spread", PASSWORD, "127.0.0.20").status_code == 200
    assert site.user("spread")["failed_logins"] == 0


@pytest.mark.postgres
def test_account_backoff_admits_one_check_at_a_time(site: Site) -> None:
    site.add_user("slowed", "radiologist")
    for address in ("127.0.0.31", "127.0.0.32", "127.0.0.33"):
        for i in range(2):
            site.login("slowed", f"guess {i}", address)
    assert site.user("slowed")["failed_logins"] == BACKOFF
    # The back-off's moment has come: of guesses in parallel from new addresses, one is checked.
    with site.engine.begin() as conn:
        conn.execute(update(users_t).where(users_t.c.username == "slowed")
                     .values(locked_until=utcnow() - timedelta(seconds=1)))
    replies = _together(6, lambda i: site.login("slowed", f"guess {i}", f"127.0.1.{i + 1}"))
    assert [_answer(r) for r in replies] == [GENERIC] * 6
    assert site.user("slowed")["failed_logins"] == BACKOFF + 1
    assert _answer(site.login("slowed", PASSWORD, "127.0.0.34")) == GENERIC


# -- share link PINs -------------------------------------------------------------------------


def _share(site: Site, pin: str) -> dict[str, Any]:
    reply = httpx.post(f"{site.base}/api/v1/shares", headers=site.admin,
                       json={"study_uids": [site.study_uid], "pin": pin})
    assert reply.status_code == 201, reply.text
    return dict(reply.json())


def _open(site: Site, token: str, pin: str) -> httpx.Response:
    return httpx.post(f"{site.base}/api/v1/shares/open", json={"token": token, "pin": pin, "as_token": True},
                      timeout=60)


def _link(site: Site, share_id: int) -> Any:
    with site.engine.connect() as conn:
        return conn.execute(select(share_links_t).where(share_links_t.c.id == share_id)).mappings().one()


@pytest.mark.postgres
def test_parallel_wrong_pins_lock_the_link(site: Site) -> None:
    created = _share(site, "2468")
    replies = _together(8, lambda i: _open(site, created["token"], f"{1000 + i}"))
    assert {r.status_code for r in replies} == {403}
    link = _link(site, created["id"])
    assert link["failed_pins"] == 8 and link["locked_at"] is not None
    refused = _open(site, created["token"], "2468")
    assert refused.status_code == 403 and refused.json()["reason"] == "locked"


@pytest.mark.postgres
def test_session_on_a_link_locked_meanwhile_stops_working(site: Site) -> None:
    for _ in range(2):
        created = _share(site, "97531")
        pins = ["97531" if i == 3 else f"{10000 + i}" for i in range(8)]
        replies = _together(8, lambda i, t=created["token"], p=pins: _open(site, t, p[i]))
        assert _link(site, created["id"])["locked_at"] is not None
        for reply in replies:
            if reply.status_code == 200:  # the right PIN got in before the lock
                session = {"Authorization": f"Bearer {reply.json()['access_token']}"}
                assert httpx.get(f"{site.base}/dicomweb/studies", headers=session).status_code == 401
            else:
                assert reply.status_code == 403


def test_session_ends_when_wrong_pins_lock_its_link(site: Site) -> None:
    created = _share(site, "8642")
    opened = _open(site, created["token"], "8642")
    assert opened.status_code == 200
    session = {"Authorization": f"Bearer {opened.json()['access_token']}"}
    assert httpx.get(f"{site.base}/dicomweb/studies", headers=session).status_code == 200
    for pin in ("0000", "1111", "2222"):
        assert _open(site, created["token"], pin).status_code == 403
    assert httpx.get(f"{site.base}/dicomweb/studies", headers=session).status_code == 401


# -- API keys ----------------------------------------------------------------------------------


def _mint(site: Site, headers: dict[str, str], password: str | None) -> httpx.Response:
    body: dict[str, Any] = {"name": "bridge"}
    if password is not None:
        body["password"] = password
    return httpx.post(f"{site.base}/api/v1/auth/api-keys", json=body, headers=headers)


def _works(site: Site, secret: str) -> bool:
    reply = httpx.get(f"{site.base}/api/v1/auth/me", headers={"Authorization": f"Bearer {secret}"})
    return reply.status_code == 200


def test_minting_an_api_key_needs_the_current_password(site: Site) -> None:
    site.add_user("minter", "technologist")
    stolen = {"Authorization": f"Bearer {bearer_token(site.base, 'minter')}"}
    assert _mint(site, stolen, None).status_code == 403
    wrong = _mint(site, stolen, "not the password")
    assert wrong.status_code == 403 and "sign in again" in wrong.json()["detail"]
    assert site.attempts("minter")["failures"] == 1  # counted like a sign-in
    created = _mint(site, stolen, PASSWORD)
    assert created.status_code == 201 and _works(site, created.json()["key"])


def test_password_change_by_an_administrator_revokes_keys_and_tokens(site: Site) -> None:
    site.add_user("changed", "technologist")
    token = bearer_token(site.base, "changed")
    key = _mint(site, {"Authorization": f"Bearer {token}"}, PASSWORD).json()["key"]
    reply = httpx.put(f"{site.base}/api/v1/users/changed", json={"password": "a new long password"},
                      headers=site.admin)
    assert reply.status_code == 200 and reply.json()["credentials_revoked"] == 2
    assert not _works(site, token) and not _works(site, key)
    # keep_api_keys: the tokens end, the keys stay.
    token = bearer_token(site.base, "changed", "a new long password")
    key = _mint(site, {"Authorization": f"Bearer {token}"}, "a new long password").json()["key"]
    reply = httpx.put(f"{site.base}/api/v1/users/changed", headers=site.admin,
                      json={"password": "another long password", "keep_api_keys": True})
    assert reply.status_code == 200
    assert not _works(site, token) and _works(site, key)


def test_disabled_account_keeps_no_key_when_enabled_again(site: Site) -> None:
    settings = site.server.settings
    site.add_user("leaver", "technologist")
    token = bearer_token(site.base, "leaver")
    key = _mint(site, {"Authorization": f"Bearer {token}"}, PASSWORD).json()["key"]
    for disabled in (True, False):
        reply = httpx.put(f"{site.base}/api/v1/users/leaver", json={"disabled": disabled}, headers=site.admin)
        assert reply.status_code == 200
    assert not _works(site, token) and not _works(site, key)
    # The command line, keeping the keys.
    fresh = {"Authorization": f"Bearer {bearer_token(site.base, 'leaver')}"}
    key = _mint(site, fresh, PASSWORD).json()["key"]
    assert "revoked" in hilum_cli(settings, "user", "disable", "leaver", "--keep-api-keys")
    assert not _works(site, key)  # disabled
    hilum_cli(settings, "user", "enable", "leaver")
    assert _works(site, key)
    hilum_cli(settings, "user", "disable", "leaver")
    hilum_cli(settings, "user", "enable", "leaver")
    assert not _works(site, key)
