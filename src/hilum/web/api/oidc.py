"""Single sign-on through OpenID Connect: the two legs of the authorization code flow.

``GET /auth/oidc/login?next=/path`` records a sign-on in progress (state, nonce,
PKCE verifier; see hilum.auth.oidc.accounts), gives the browser a random binding
token in a short-lived cookie and sends it to the provider. The provider sends
it back to ``GET /auth/oidc/callback``, which takes that sign-on (once), checks
the state, redeems the code, validates the ID token, finds or provisions the
user and opens a web session exactly as the password login does, then sends the
browser to ``next``: a path on this server only (no open redirect).

``GET /auth/providers`` tells the web app which sign-in methods there are.
"""

from __future__ import annotations

import hmac
import html
import logging
from urllib.parse import urlsplit

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel

from hilum.app import Services
from hilum.auth.oidc import accounts
from hilum.auth.oidc.claims import profile
from hilum.auth.oidc.client import OidcClient, OidcError
from hilum.auth.oidc.settings import OidcSettings
from hilum.web.api.auth import CSRF_COOKIE, open_session, secure_cookie
from hilum.web.problems import Problem, problem_response
from hilum.web.security import client_address, throttle

LOG = logging.getLogger(__name__)
router = APIRouter()

LOGIN_COOKIE = "hilum_oidc"
COOKIE_PATH = "/api/v1/auth/oidc"
LOGIN_URL = COOKIE_PATH + "/login"
CALLBACK_URL = COOKIE_PATH + "/callback"
_MAX_NEXT = 2000


class OidcProvider(BaseModel):
    enabled: bool
    label: str
    login_url: str
    csrf_cookie: str = CSRF_COOKIE  # where the session's CSRF token is after single sign-on


class Providers(BaseModel):
    password: bool = True
    oidc: OidcProvider


def _config(services: Services) -> OidcSettings | None:
    auth = services.settings.auth
    return auth.oidc if auth.enabled and auth.oidc.enabled else None


def _active(request: Request) -> OidcSettings:
    config = _config(request.app.state.services)
    if config is None:
        raise Problem(404, "single sign-on is not enabled on this server")
    return config


def oidc_client(request: Request) -> OidcClient:
    """This process's client of the provider (it caches metadata and keys)."""
    found: OidcClient | None = getattr(request.app.state, "oidc", None)
    if found is None:
        found = request.app.state.oidc = OidcClient(_active(request))
    return found


def safe_next(value: str) -> str | None:
    """``value`` if it is a path on this server (no scheme, host or backslash), else None."""
    if not value.startswith("/") or value.startswith("//") or len(value) > _MAX_NEXT:
        return None
    if "\\" in value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return None
    return value


def _redirect_uri(request: Request, services: Services, config: OidcSettings) -> str:
    base = config.redirect_base_url or services.settings.http.public_url.rstrip("/")
    if not base:
        base = str(request.base_url).rstrip("/")
    return base + CALLBACK_URL


@router.get("/auth/providers", summary="Ways to sign in (password, single sign-on)")
def providers(request: Request) -> Providers:
    services: Services = request.app.state.services
    config = _config(services)
    return Providers(
        password=True,
        oidc=OidcProvider(
            enabled=config is not None,
            label=services.settings.auth.oidc.label,
            login_url=LOGIN_URL,
        ),
    )


@router.get(
    "/auth/oidc/login",
    status_code=302,
    response_class=RedirectResponse,
    summary="Single sign-on: go to the identity provider (then back to next)",
)
def oidc_login(
    request: Request,
    next: str = Query("/", description="Where to land after signing in: a path on this server"),
) -> Response:
    config = _active(request)
    services: Services = request.app.state.services
    target = safe_next(next)
    if target is None:
        return _refused(request, OidcError("next must be a path on this server, such as /studies", 400))
    client = oidc_client(request)
    redirect_uri = _redirect_uri(request, services, config)
    try:
        client.metadata()  # the provider is reachable before anything is recorded
        binding, pending = accounts.begin(services.engine, redirect_uri=redirect_uri, next_path=target)
        url = client.authorization_url(
            redirect_uri=redirect_uri,
            state=pending.state,
            nonce=pending.nonce,
            code_verifier=pending.code_verifier,
        )
    except OidcError as exc:
        LOG.warning("single sign-on cannot start: %s", exc)
        return _refused(request, exc)
    response = RedirectResponse(url, status_code=302, headers={"Cache-Control": "no-store"})
    # Lax, not Strict: the provider's redirect back is a cross-site top-level navigation.
    response.set_cookie(
        LOGIN_COOKIE,
        binding,
        max_age=accounts.LOGIN_MINUTES * 60,
        httponly=True,
        samesite="lax",
        secure=secure_cookie(request, services),
        path=COOKIE_PATH,
    )
    return response


@router.get(
    "/auth/oidc/callback",
    status_code=303,
    response_class=RedirectResponse,
    summary="Single sign-on: the identity provider's answer (opens a session)",
)
def oidc_callback(
    request: Request,
    state: str | None = None,
    code: str | None = None,
    error: str | None = None,
    error_description: str | None = None,
    iss: str | None = None,
) -> Response:
    config = _active(request)
    services: Services = request.app.state.services
    address = client_address(request)
    limiter = throttle(request)
    if limiter.blocked(address):
        raise Problem(429, "too many failed logins from this address; try again later")
    client = oidc_client(request)
    username = ""
    try:
        binding = request.cookies.get(LOGIN_COOKIE)
        pending = accounts.take(services.engine, binding) if binding else None
        if pending is None:
            raise OidcError(
                "no single sign-on was started in this browser, or it expired or was used already: "
                "sign in again",
                400,
            )
        if not state or not hmac.compare_digest(state.encode(), pending.state.encode()):
            raise OidcError("the answer is not for the sign-on this browser started (state)", 400)
        client.check_response_issuer(iss)  # error answers too (RFC 9207 2.4)
        if error:
            described = f": {error_description[:300]}" if error_description else ""
            raise OidcError(f"the identity provider refused ({error[:100]}{described})")
        if not code:
            raise OidcError("the identity provider sent no authorization code", 400)
        sign_on = client.exchange(
            code=code,
            redirect_uri=pending.redirect_uri,
            code_verifier=pending.code_verifier,
            nonce=pending.nonce,
        )
        found = profile(config, sign_on.claims)
        username = found.username
        signed = accounts.sign_in(
            services.engine, config, issuer=sign_on.issuer, subject=sign_on.subject, profile=found
        )
    except OidcError as exc:
        limiter.failed(address)
        services.audit.user_authentication(username or "unknown", address, False, f"single sign-on: {exc}")
        LOG.info("single sign-on refused from %s: %s", address, exc)
        return _refused(request, exc)
    principal = signed.principal
    services.audit.user_authentication(
        principal.username, address, True, "single sign-on", user_name=found.display_name
    )
    by = f"oidc:{config.issuer}"
    if signed.created:
        detail = f"created by single sign-on, role {principal.role}, groups {','.join(principal.groups)}"
        services.audit.user_changed(by=by, ip=address, user=principal.username, detail=detail, roles=True)
    elif signed.linked:
        detail = "linked to a single sign-on account (auth.oidc.link_existing)"
        services.audit.user_changed(by=by, ip=address, user=principal.username, detail=detail)
    if signed.changes:
        services.audit.user_changed(
            by=by,
            ip=address,
            user=principal.username,
            detail="from single sign-on claims: " + "; ".join(signed.changes),
            roles=signed.roles_changed,
        )
    response = RedirectResponse(pending.next_path, status_code=303, headers={"Cache-Control": "no-store"})
    csrf, lifetime = open_session(request, response, principal)
    response.set_cookie(
        CSRF_COOKIE,
        csrf,
        max_age=lifetime,
        httponly=False,  # the web app reads it and sends it back as X-CSRF-Token
        samesite="strict",
        secure=secure_cookie(request, services),
        path="/",
    )
    response.delete_cookie(LOGIN_COOKIE, path=COOKIE_PATH)
    return response


def _refused(request: Request, exc: OidcError) -> Response:
    """A refused sign-on: problem details, or a short page for a browser (which came
    here by a redirect and would otherwise show raw JSON)."""
    response: Response
    if "text/html" in request.headers.get("accept", ""):
        message = html.escape(str(exc))
        page = (
            "<!doctype html><html><head><meta charset='utf-8'><title>Sign-in refused - Hilum</title>"
            f"</head><body><h1>Sign-in refused</h1><p>{message}</p>"
            "<p><a href='/'>Back to Hilum</a></p></body></html>"
        )
        response = HTMLResponse(page, status_code=exc.status)
    else:
        response = problem_response(exc.status, str(exc))
    response.headers["Cache-Control"] = "no-store"
    response.delete_cookie(LOGIN_COOKIE, path=COOKIE_PATH)
    return response
