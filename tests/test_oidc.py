"""Single sign-on through OpenID Connect, against a real provider.

The provider is panva's oidc-provider (OpenID Certified) run by Node
(tests/oidc/provider.mjs), with its development login and consent pages; the
tests sign in the way a browser does: httpx follows Hilum's redirect to the
provider, submits its login and consent forms, and follows the provider's
redirect back to Hilum's callback, then uses the session it got. One provider
and one `hilum serve` (two HTTP processes, so the two legs of a sign-on may
reach different processes) serve the whole module, once per index backend.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import httpx
import pytest

from auth_util import AUTH_ON as ON
from auth_util import PASSWORD, hilum_cli
from auth_util import token as bearer
from conftest import DEFAULT_BACKENDS, RunningServer, backend_url, free_port, start_server, stop_server
from factory import StudySpec, stow_study
from hilum.config import load_settings

OIDC_DIR = Path(__file__).resolve().parent / "oidc"
CLIENT_ID = "hilum"
CLIENT_SECRET = "a-test-client-secret-of-some-length"
ROLE_MAPPING = {
    "pacs-admins": "administrator",
    "pacs-radiologists": "radiologist",
    "pacs-referrers": "referring",
}
ACCOUNTS: dict[str, dict[str, Any]] = {
    "u-alice": {
        "preferred_username": "alice",
        "name": "Alice Adams",
        "groups": ["pacs-radiologists", "neuro"],
    },
    "u-house": {
        "preferred_username": "house",
        "name": "Gregory House",
        "dicom_person_name": "HOUSE^GREGORY",
        "groups": ["pacs-referrers", "diagnostics"],
    },
    "u-carol": {"preferred_username": "carol", "name": "Carol Chen", "groups": ["pacs-referrers"]},
    "u-bob": {"preferred_username": "bob", "name": "Bob Brown", "groups": ["pacs-radiologists"]},
    # An IdP account whose user name is that of a local password account.
    "u-mallory": {"preferred_username": "localdoc", "name": "Mallory", "groups": ["pacs-admins"]},
    "u-nobody": {"preferred_username": "nobody", "name": "No Body", "groups": ["visitors"]},
}


def _npm_install() -> None:
    if (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is not installed (scripts/test.sh installs the test OIDC provider)")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=OIDC_DIR, check=True, timeout=600)


@dataclass
class Provider:
    issuer: str
    config_file: Path
    config: dict[str, Any]

    def set_groups(self, account: str, groups: list[str]) -> None:
        self.config["accounts"][account]["groups"] = groups
        self.config_file.write_text(json.dumps(self.config))


@dataclass
class Site:
    server: RunningServer
    provider: Provider
    base: str
    admin: str  # an administrator's bearer token
    house_study: str = ""
    other_study: str = ""
    group_study: str = ""


def _wait_for(process: subprocess.Popen[bytes], log: Path, marker: bytes, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited early:\n{log.read_text()}")
        if marker in log.read_bytes():
            return
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"{what} did not start:\n{log.read_text()}")


@pytest.fixture(scope="module", params=DEFAULT_BACKENDS)
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    _npm_install()
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (Node 20+ runs the test OIDC provider)")
    with backend_url(request.param) as database_url:
        yield from _site(node, database_url, tmp_path_factory.mktemp("oidc"))


def _site(node: str, database_url: str, tmp: Path) -> Iterator[Site]:
    settings = load_settings(
        None,
        data_dir=tmp / "data",
        database_url=database_url,
        dicom={"ae_title": "HILUM", "port": free_port(), "host": "127.0.0.1", "workers": 1},
        http={"port": free_port(), "workers": 2},
    )
    base = f"http://127.0.0.1:{settings.http.port}"
    op_port = free_port()
    config = {
        "port": op_port,
        "clients": [
            {
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "redirect_uris": [f"{base}/api/v1/auth/oidc/callback"],
                "grant_types": ["authorization_code"],
                "response_types": ["code"],
            }
        ],
        "accounts": ACCOUNTS,
    }
    config_file = tmp / "provider.json"
    config_file.write_text(json.dumps(config))
    provider = Provider(f"http://127.0.0.1:{op_port}", config_file, config)
    op_log = tmp / "provider.log"
    with op_log.open("wb") as handle:
        op = subprocess.Popen(
            [node, str(OIDC_DIR / "provider.mjs"), str(config_file)],
            cwd=OIDC_DIR,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    server: RunningServer | None = None
    try:
        _wait_for(op, op_log, b"listening", "the OIDC provider")
        env = {
            **ON,
            "HILUM_HTTP__WORKERS": "2",
            "HILUM_AUTH__OIDC__ENABLED": "true",
            "HILUM_AUTH__OIDC__ISSUER": provider.issuer,
            "HILUM_AUTH__OIDC__CLIENT_ID": CLIENT_ID,
            "HILUM_AUTH__OIDC__CLIENT_SECRET": CLIENT_SECRET,
            "HILUM_AUTH__OIDC__SCOPES": json.dumps(["openid", "profile", "email", "groups"]),
            "HILUM_AUTH__OIDC__PERSON_NAME_CLAIM": "dicom_person_name",
            "HILUM_AUTH__OIDC__ROLE_MAPPING": json.dumps(ROLE_MAPPING),
            "HILUM_AUTH__OIDC__LABEL": "Sign in with Hospital SSO",
        }
        server = start_server(settings, tmp, env=env)
        found = re.search(r"password: (\S+)", server.log.read_text())
        assert found, server.log.read_text()
        admin = bearer(base, "admin", found.group(1))
        hilum_cli(settings, "user", "add", "localdoc", "--role", "technologist", "--password-stdin",
               stdin=PASSWORD + "\n")
        site = Site(server, provider, base, admin)
        site.house_study = stow_study(base, StudySpec(patient_id="H1", referring="HOUSE^GREGORY", slices=1),
                                      admin)[0].StudyInstanceUID
        site.other_study = stow_study(base, StudySpec(patient_id="W1", referring="WILSON^JAMES", slices=1),
                                      admin)[0].StudyInstanceUID
        site.group_study = stow_study(base, StudySpec(patient_id="G1", referring="CUDDY^LISA", slices=1),
                                      admin)[0].StudyInstanceUID
        granted = httpx.post(
            f"{base}/api/v1/studies/{site.group_study}/grants",
            json={"principal_kind": "group", "principal": "diagnostics"},
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert granted.status_code in (200, 201), granted.text
        yield site
    finally:
        if server is not None:
            stop_server(server)
        op.terminate()
        try:
            op.wait(timeout=15)
        except subprocess.TimeoutExpired:
            op.kill()
            op.wait()


# -- a browser, more or less ----------------------------------------------------------------
_FORM = re.compile(r'<form[^>]*action="([^"]+)"[^>]*method="post"', re.I)
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', re.I)


def to_provider(
    client: httpx.Client, site: Site, account: str, *, next: str = "/",
    tamper: Callable[[str], str] | None = None,
) -> str:
    """Start a sign-on at Hilum and go through the provider's login and consent pages;
    returns the URL the provider sends the browser back to (Hilum's callback)."""
    started = client.get(f"{site.base}/api/v1/auth/oidc/login", params={"next": next})
    assert started.status_code == 302, started.text
    url = started.headers["location"]
    assert url.startswith(site.provider.issuer + "/"), url
    if tamper is not None:
        url = tamper(url)
    for _ in range(12):
        if url.startswith(site.base):
            return url
        reply = client.get(url)
        if reply.is_redirect:
            url = urljoin(url, reply.headers["location"])
            continue
        assert reply.status_code == 200, reply.text
        form = _FORM.search(reply.text)
        assert form, reply.text
        fields = dict(_HIDDEN.findall(reply.text))
        if fields.get("prompt") == "login":
            fields.update(login=account, password="any password")
        posted = client.post(urljoin(url, form.group(1)), data=fields)
        assert posted.is_redirect, posted.text
        url = urljoin(url, posted.headers["location"])
    raise AssertionError(f"the provider never sent the browser back to Hilum (last: {url})")


def sign_in(client: httpx.Client, site: Site, account: str, *, next: str = "/") -> httpx.Response:
    """A full sign-on in the browser ``client``; the callback's answer."""
    callback = to_provider(client, site, account, next=next)
    return client.get(callback)


def _csrf(client: httpx.Client) -> str:
    return str(client.cookies.get("hilum_csrf"))


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


# -- the tests ------------------------------------------------------------------------------
def test_providers_tell_the_web_app_how_to_sign_in(site: Site) -> None:
    reply = httpx.get(f"{site.base}/api/v1/auth/providers")
    assert reply.status_code == 200
    assert reply.json() == {
        "password": True,
        "oidc": {
            "enabled": True,
            "label": "Sign in with Hospital SSO",
            "login_url": "/api/v1/auth/oidc/login",
            "csrf_cookie": "hilum_csrf",
        },
    }


def test_code_flow_opens_a_session_with_the_mapped_role_and_groups(site: Site) -> None:
    with httpx.Client(timeout=30) as client:
        landed = sign_in(client, site, "u-alice", next="/studies?modality=CT")
        assert landed.status_code == 303, landed.text
        assert landed.headers["location"] == "/studies?modality=CT"
        set_cookies = landed.headers.get_list("set-cookie")
        session_cookie = next(c for c in set_cookies if c.startswith("hilum_session="))
        assert "HttpOnly" in session_cookie and "SameSite=strict" in session_cookie
        assert any(c.startswith("hilum_oidc=") and "Max-Age=0" in c for c in set_cookies)
        me = client.get(f"{site.base}/api/v1/auth/me")
        assert me.status_code == 200, me.text
        assert me.json()["username"] == "alice"
        assert me.json()["role"] == "radiologist"
        assert me.json()["groups"] == ["pacs-radiologists", "neuro"]
        assert me.json()["via"] == "session"
        # DICOMweb with the session: a radiologist sees every study.
        studies = client.get(f"{site.base}/dicomweb/studies", headers={"Accept": "application/dicom+json"})
        assert studies.status_code == 200, studies.text
        assert {s["0020000D"]["Value"][0] for s in studies.json()} >= {site.house_study, site.other_study}
        # The session is a normal one: changes need the CSRF token from the hilum_csrf cookie.
        assert client.post(f"{site.base}/api/v1/auth/api-keys", json={"name": "x"}).status_code == 403
        key = client.post(
            f"{site.base}/api/v1/auth/api-keys", json={"name": "x"}, headers={"X-CSRF-Token": _csrf(client)}
        )
        assert key.status_code == 201, key.text
        # No password to check: a key needs a fresh sign-on (auth.reauth_minutes, 5).
        _age_sessions(site, "alice", minutes=6)
        stale = client.post(
            f"{site.base}/api/v1/auth/api-keys", json={"name": "y"}, headers={"X-CSRF-Token": _csrf(client)}
        )
        assert stale.status_code == 403 and "sign on again" in stale.json()["detail"], stale.text
        # SSO users have no password: the password login stays closed to them.
        assert httpx.post(
            f"{site.base}/api/v1/auth/token", json={"username": "alice", "password": "any password"}
        ).status_code == 401
        out = client.post(f"{site.base}/api/v1/auth/logout", headers={"X-CSRF-Token": _csrf(client)})
        assert out.status_code == 204
        assert client.get(f"{site.base}/api/v1/auth/me").status_code == 401


def test_referring_physician_from_sso_sees_only_their_studies(site: Site) -> None:
    with httpx.Client(timeout=30) as client:
        landed = sign_in(client, site, "u-house")
        assert landed.status_code == 303, landed.text
        me = client.get(f"{site.base}/api/v1/auth/me").json()
        assert (me["role"], me["all_studies"]) == ("referring", False)
        studies = client.get(f"{site.base}/dicomweb/studies", headers={"Accept": "application/dicom+json"})
        assert studies.status_code == 200, studies.text
        seen = {s["0020000D"]["Value"][0] for s in studies.json()}
        # Their own (ReferringPhysicianName = the person name claim) and their IdP group's.
        assert seen == {site.house_study, site.group_study}
        other = client.get(f"{site.base}/dicomweb/studies/{site.other_study}/metadata")
        assert other.status_code == 404
    users = httpx.get(f"{site.base}/api/v1/users", headers={"Authorization": f"Bearer {site.admin}"}).json()
    house = next(u for u in users if u["username"] == "house")
    assert house["person_name"] == "HOUSE^GREGORY"
    assert house["display_name"] == "Gregory House"


def test_role_and_groups_follow_the_idp_at_every_sign_on(site: Site) -> None:
    with httpx.Client(timeout=30) as client:
        landed = sign_in(client, site, "u-carol")
        assert landed.status_code == 303, landed.text
        assert client.get(f"{site.base}/api/v1/auth/me").json()["role"] == "referring"
    site.provider.set_groups("u-carol", ["pacs-radiologists", "pacs-referrers"])
    try:
        with httpx.Client(timeout=30) as client:
            landed = sign_in(client, site, "u-carol")
            assert landed.status_code == 303, landed.text
            me = client.get(f"{site.base}/api/v1/auth/me").json()
            assert (me["role"], me["groups"]) == ("radiologist", ["pacs-radiologists", "pacs-referrers"])
        site.provider.set_groups("u-carol", ["visitors"])  # no mapped group left: refused
        with httpx.Client(timeout=30) as client:
            refused = sign_in(client, site, "u-carol")
            assert refused.status_code == 403
            assert "no Hilum role" in refused.json()["detail"]
    finally:
        site.provider.set_groups("u-carol", ["pacs-referrers"])


def test_an_account_without_a_mapped_group_is_refused_and_not_created(site: Site) -> None:
    with httpx.Client(timeout=30) as client:
        refused = sign_in(client, site, "u-nobody")
        assert refused.status_code == 403
        assert "no Hilum role" in refused.json()["detail"]
        assert "hilum_session" not in client.cookies
    users = httpx.get(f"{site.base}/api/v1/users", headers={"Authorization": f"Bearer {site.admin}"}).json()
    assert "nobody" not in {u["username"] for u in users}


def test_a_local_account_of_the_same_name_is_not_taken_over(site: Site) -> None:
    with httpx.Client(timeout=30) as client:
        refused = sign_in(client, site, "u-mallory")
        assert refused.status_code == 403
        assert "local Hilum account named localdoc" in refused.json()["detail"]
        assert "link_existing" in refused.json()["detail"]
    # The local account is untouched: its role and password work as before.
    token = bearer(site.base, "localdoc", PASSWORD)
    me = httpx.get(f"{site.base}/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"}).json()
    assert me["role"] == "technologist"


def _age_sessions(site: Site, username: str, *, minutes: float) -> None:
    """Make ``username``'s sessions look opened ``minutes`` ago."""
    from datetime import timedelta

    from sqlalchemy import create_engine, select, update

    from hilum.auth.models import credentials_t, users_t
    from hilum.domain.clock import utcnow

    engine = create_engine(site.server.settings.index_url)
    try:
        with engine.begin() as conn:
            user_id = conn.execute(select(users_t.c.id).where(users_t.c.username == username)).scalar_one()
            conn.execute(update(credentials_t).where(credentials_t.c.user_id == user_id)
                         .values(created_at=utcnow() - timedelta(minutes=minutes)))
    finally:
        engine.dispose()


def test_a_disabled_user_stays_refused_through_sso(site: Site) -> None:
    with httpx.Client(timeout=30) as client:
        landed = sign_in(client, site, "u-bob")
        assert landed.status_code == 303, landed.text
    hilum_cli(site.server.settings, "user", "disable", "bob")
    try:
        with httpx.Client(timeout=30) as client:
            refused = sign_in(client, site, "u-bob")
            assert refused.status_code == 403
            assert "disabled" in refused.json()["detail"]
            assert "hilum_session" not in client.cookies
    finally:
        hilum_cli(site.server.settings, "user", "enable", "bob")


def test_a_wrong_or_missing_state_is_refused(site: Site) -> None:
    with httpx.Client(timeout=30) as client:
        callback = to_provider(client, site, "u-alice")
        wrong = client.get(_with_query(callback, state="not-the-state"))
        assert wrong.status_code == 400
        assert "state" in wrong.json()["detail"]
        # The sign-on was spent by that attempt: the right answer does not work afterwards either.
        again = client.get(callback)
        assert again.status_code == 400
    # An answer without the browser's cookie (another browser, login CSRF) is refused.
    with httpx.Client(timeout=30) as client:
        callback = to_provider(client, site, "u-alice")
    refused = httpx.get(callback)
    assert refused.status_code == 400
    assert "no single sign-on was started in this browser" in refused.json()["detail"]


def test_a_replayed_code_is_refused(site: Site) -> None:
    with httpx.Client(timeout=30) as client:
        callback = to_provider(client, site, "u-alice")
        login_cookie = client.cookies.get("hilum_oidc")
        assert client.get(callback).status_code == 303
        # The same answer again, with the same browser cookie: the sign-on is used up.
        replay = httpx.get(callback, cookies={"hilum_oidc": str(login_cookie)})
        assert replay.status_code == 400
    # A code replayed inside a new sign-on (its own state and cookie): the provider refuses it.
    code = dict(parse_qsl(urlsplit(callback).query))["code"]
    with httpx.Client(timeout=30) as client:
        fresh = to_provider(client, site, "u-alice")
        replay = client.get(_with_query(fresh, code=code))
        assert replay.status_code == 401
        assert "refused the code" in replay.json()["detail"]


def test_an_id_token_for_another_nonce_is_refused(site: Site) -> None:
    """The authorization request is altered on its way to the provider (another nonce):
    the provider signs an ID token with that nonce, and Hilum refuses it."""
    with httpx.Client(timeout=30) as client:
        callback = to_provider(
            client, site, "u-alice", tamper=lambda url: _with_query(url, nonce="attacker-chosen-nonce")
        )
        refused = client.get(callback)
        assert refused.status_code == 401
        assert "nonce" in refused.json()["detail"]
        assert "hilum_session" not in client.cookies


@pytest.mark.parametrize(
    "target",
    ["https://evil.example/", "//evil.example/x", "/\\evil.example", "evil", "http:/evil", "/\x00x", ""],
)
def test_next_must_be_a_path_on_this_server(site: Site, target: str) -> None:
    reply = httpx.get(f"{site.base}/api/v1/auth/oidc/login", params={"next": target})
    assert reply.status_code == 400
    assert "hilum_oidc" not in reply.cookies


def test_an_idp_error_answer_is_refused_and_audited(site: Site) -> None:
    with httpx.Client(timeout=30) as client:
        started = client.get(f"{site.base}/api/v1/auth/oidc/login")
        state = dict(parse_qsl(urlsplit(started.headers["location"]).query))["state"]
        refused = client.get(
            f"{site.base}/api/v1/auth/oidc/callback",
            params={"state": state, "error": "access_denied", "error_description": "End-User aborted",
                    "iss": site.provider.issuer},
            headers={"Accept": "text/html"},
        )
        assert refused.status_code == 401
        assert refused.headers["content-type"].startswith("text/html")
        assert "access_denied" in refused.text
    time.sleep(1.5)  # audit records are written by a batching thread
    records = httpx.get(
        f"{site.base}/api/v1/audit", params={"limit": 500}, headers={"Authorization": f"Bearer {site.admin}"}
    )
    assert records.status_code == 200, records.text
    text = records.text
    assert "single sign-on" in text
    assert "access_denied" in text


def test_an_html_browser_sees_a_page_not_json(site: Site) -> None:
    reply = httpx.get(
        f"{site.base}/api/v1/auth/oidc/callback?state=x&code=y", headers={"Accept": "text/html"}
    )
    assert reply.status_code == 400
    assert "<h1>Sign-in refused</h1>" in reply.text


# -- without a provider: SSO switched off, ID-token checks, claim mapping, settings ----------
def test_with_sso_off_its_routes_answer_404_and_an_unreachable_idp_502(tmp_path: Path) -> None:
    import asyncio

    from hilum.app import build_services, prepare
    from hilum.web.app import create_app

    async def calls(auth: dict[str, Any], *checks: tuple[str, int]) -> dict[str, Any]:
        settings = load_settings(None, data_dir=tmp_path / "data", auth=auth)
        prepare(settings)
        services = build_services(settings)
        try:
            transport = httpx.ASGITransport(app=create_app(services))
            async with httpx.AsyncClient(transport=transport, base_url="http://hilum") as client:
                for path, status in checks:
                    reply = await client.get(path)
                    assert reply.status_code == status, (path, reply.text)
                return dict((await client.get("/api/v1/auth/providers")).json())
        finally:
            services.close()

    login, callback = "/api/v1/auth/oidc/login", "/api/v1/auth/oidc/callback?state=x&code=y"
    off = asyncio.run(calls({"enabled": True}, (login, 404), (callback, 404)))
    assert off["password"] is True
    assert off["oidc"]["enabled"] is False
    unreachable = {
        "enabled": True,
        "issuer": f"http://127.0.0.1:{free_port()}",
        "client_id": "hilum",
        "client_secret": "s",
        "default_role": "referring",
    }
    on = asyncio.run(calls({"enabled": True, "oidc": unreachable}, (login, 502), (callback, 400)))
    assert on["oidc"]["enabled"] is True


ISSUER = "https://idp.example.org/realms/hospital"


def _oidc_settings(**overrides: Any) -> Any:
    from hilum.auth.oidc.settings import OidcSettings

    values: dict[str, Any] = {
        "enabled": True,
        "issuer": ISSUER,
        "client_id": "hilum",
        "client_secret": "s3cret",
        "role_mapping": {"pacs-radiologists": "radiologist"},
        **overrides,
    }
    return OidcSettings(**values)


@dataclass
class Keys:
    signing: Any
    client: Any  # OidcClient that trusts ``signing``


@pytest.fixture(scope="module")
def keys() -> Keys:
    from joserfc.jwk import KeySet, RSAKey

    from hilum.auth.oidc.client import OidcClient

    signing = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    client = OidcClient(_oidc_settings())
    client._metadata = {"issuer": ISSUER, "id_token_signing_alg_values_supported": ["RS256", "HS256", "none"]}
    client._metadata_at = time.monotonic() + 10**6
    client._keys = KeySet([RSAKey.import_key(signing.as_dict(private=False))])
    return Keys(signing, client)


def _id_token(key: Any, alg: str = "RS256", **changes: Any) -> str:
    from joserfc import jwt

    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "u-1", "aud": "hilum", "exp": now + 300, "iat": now, "nonce": "n-1"}
    claims.update(changes)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode({"alg": alg, "kid": "k1"}, claims, key)


def test_a_valid_id_token_is_accepted(keys: Keys) -> None:
    claims = keys.client.validate_id_token(_id_token(keys.signing), nonce="n-1")
    assert claims["sub"] == "u-1"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"iss": "https://other.example.org"}, "iss"),
        ({"aud": "another-client"}, "aud"),
        ({"aud": ["hilum", "another-client"]}, "azp"),
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"exp": None}, "exp"),
        ({"sub": None}, "sub"),
        ({"nonce": "n-2"}, "nonce"),
        ({"nonce": None}, "nonce"),
        ({"at_hash": "AAAAAAAAAAAAAAAAAAAAAA"}, "at_hash"),
    ],
)
def test_an_id_token_with_wrong_claims_is_refused(keys: Keys, changes: dict[str, Any], expected: str) -> None:
    from hilum.auth.oidc.client import OidcError

    with pytest.raises(OidcError, match=expected):
        keys.client.validate_id_token(_id_token(keys.signing, **changes), nonce="n-1", access_token="at")


def test_an_id_token_signed_otherwise_is_refused(keys: Keys) -> None:
    import base64

    from joserfc.jwk import OctKey, RSAKey

    from hilum.auth.oidc.client import OidcError

    forger = RSAKey.generate_key(2048, parameters={"kid": "k1"})  # the same key id, another key
    # HMAC with the client secret: refused whatever the IdP advertises.
    secret = OctKey.import_key(b"a client secret of 32 characters")
    payload = _id_token(keys.signing).split(".")[1]
    unsigned = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode() + f".{payload}."
    head, _, signature = _id_token(keys.signing).split(".")
    altered = _id_token(keys.signing, sub="u-2").split(".")[1]
    for token in (
        _id_token(forger),
        _id_token(secret, alg="HS256"),
        unsigned,
        f"{head}.{altered}.{signature}",  # claims changed after signing
        "not a token",
    ):
        with pytest.raises(OidcError, match="signature"):
            keys.client.validate_id_token(token, nonce="n-1")


def test_claims_map_to_a_user() -> None:
    from hilum.auth.oidc.claims import profile
    from hilum.auth.oidc.client import OidcError

    keycloak = _oidc_settings(
        username_claim="preferred_username",
        person_name_claim="dicom_pn",
        groups_claim="groups",
        role_claim="realm_access.roles",
        role_mapping={"pacs-admin": "administrator", "pacs-radiologist": "radiologist"},
    )
    claims = {
        "preferred_username": "jdoe",
        "name": "Jane Doe",
        "dicom_pn": "DOE^JANE",
        "groups": ["/staff", "cardiology", "a,b", "x" * 65, "cardiology"],
        "realm_access": {"roles": ["pacs-radiologist", "pacs-admin"]},
    }
    found = profile(keycloak, claims)
    # The first role_mapping entry the user has wins (administrator before radiologist).
    assert (found.username, found.role, found.person_name) == ("jdoe", "administrator", "DOE^JANE")
    assert found.groups == ("/staff", "cardiology")  # no commas, at most 64 characters, once
    # Not mapped: refused, or the default role.
    with pytest.raises(OidcError, match="no Hilum role"):
        profile(keycloak, {"preferred_username": "jdoe", "groups": ["other"]})
    entra = _oidc_settings(default_role="referring", role_mapping={}, person_name_claim="")
    found = profile(entra, {"preferred_username": "jdoe@hospital.example", "groups": "one-group"})
    assert (found.role, found.groups, found.person_name) == ("referring", ("one-group",), None)
    with pytest.raises(OidcError, match="not usable"):
        profile(entra, {"preferred_username": "jane doe"})
    with pytest.raises(OidcError, match="preferred_username"):
        profile(entra, {"name": "no user name"})


def test_settings_refuse_unsafe_or_useless_sso() -> None:
    from hilum.config import ConfigError

    def oidc(**values: Any) -> Any:
        base = {"enabled": True, "issuer": ISSUER, "client_id": "hilum", "client_secret": "s",
                "default_role": "referring"}
        return load_settings(None, auth={"oidc": {**base, **values}}).auth.oidc

    assert oidc().scopes == ["openid", "profile", "email"]
    assert oidc(scopes=["profile", "groups"]).scopes == ["openid", "profile", "groups"]
    assert oidc(issuer="http://localhost:8080/").issuer == "http://localhost:8080"
    for bad, message in (
        ({"issuer": "http://idp.example.org"}, "https"),
        ({"client_secret": ""}, "client_secret"),
        ({"default_role": "", "role_mapping": {}}, "role_mapping"),
        ({"role_mapping": {"g": "superuser"}}, "role_mapping"),
        ({"client_id": ""}, "client_id"),
    ):
        with pytest.raises(ConfigError, match=message):
            oidc(**bad)
    assert oidc(client_secret="", token_endpoint_auth_method="none").client_secret == ""
    assert load_settings(None).auth.oidc.enabled is False


def test_a_rotated_signing_key_is_fetched_once() -> None:
    from joserfc import jwt
    from joserfc.jwk import KeySet, RSAKey

    from hilum.auth.oidc.client import OidcClient, OidcError

    old = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    new = RSAKey.generate_key(2048, parameters={"kid": "k2"})
    client = OidcClient(_oidc_settings())
    client._metadata = {"issuer": ISSUER, "jwks_uri": f"{ISSUER}/certs"}
    client._metadata_at = time.monotonic() + 10**6
    client._keys = KeySet([old])
    fetched: list[str] = []

    def published(url: str) -> dict[str, Any]:
        fetched.append(url)
        return {"keys": [new.as_dict(private=False)]}

    client._get_json = published  # type: ignore[method-assign]
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "u-1", "aud": "hilum", "exp": now + 300, "iat": now, "nonce": "n-1"}
    token = jwt.encode({"alg": "RS256", "kid": "k2"}, claims, new)
    assert client.validate_id_token(token, nonce="n-1")["sub"] == "u-1"
    assert fetched == [f"{ISSUER}/certs"]
    # A key the IdP does not publish stays refused (one fetch per attempt, no loop).
    stranger = jwt.encode({"alg": "RS256", "kid": "k3"}, claims, RSAKey.generate_key(2048))
    with pytest.raises(OidcError, match="signature"):
        client.validate_id_token(stranger, nonce="n-1")
    assert len(fetched) == 2
