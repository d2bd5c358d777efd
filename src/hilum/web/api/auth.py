"""Login, logout, tokens and one's own API keys."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from hilum.app import Services
from hilum.auth.service import AuthError, Principal
from hilum.web.problems import Problem
from hilum.web.security import (
    SESSION_COOKIE,
    AddressThrottle,
    auth_service,
    client_address,
    principal_of,
    share_service,
    throttle,
)

router = APIRouter()
# After single sign-on (a redirect, not a JSON answer) the web app reads the session's
# CSRF token from this cookie (not HttpOnly, SameSite=Strict), then may delete it.
CSRF_COOKIE = "hilum_csrf"


class Credentials(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class Me(BaseModel):
    username: str
    role: str
    groups: list[str] = Field(default_factory=list)
    permissions: list[str]
    all_studies: bool
    via: str


class LoginAnswer(BaseModel):
    user: Me
    csrf_token: str = Field(description="Send it back in the X-CSRF-Token header with POST/PUT/DELETE")
    expires_in: int


class TokenAnswer(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


class NewApiKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)
    password: str | None = Field(
        None, max_length=1024,
        description="Your current password (required: a key outlives sessions and tokens). Users "
        "without a password (single sign-on) create keys within auth.reauth_minutes of signing on.",
    )


class ApiKey(BaseModel):
    id: int
    name: str
    created_at: datetime | None
    revoked_at: datetime | None = None
    key: str | None = Field(None, description="Only in the answer to its creation: store it now")


def _me(principal: Principal) -> Me:
    return Me(
        username=principal.username,
        role=principal.role,
        groups=list(principal.groups),
        permissions=sorted(p.value for p in principal.permissions),
        all_studies=principal.all_studies,
        via=principal.via,
    )


def _unthrottled(request: Request) -> tuple[str, AddressThrottle]:
    """The caller's address and the failed-login throttle; 429 while it holds the address."""
    address = client_address(request)
    limiter = throttle(request)
    if limiter.blocked(address):
        raise Problem(429, "too many failed logins from this address; try again later")
    return address, limiter


def _login(request: Request, body: Credentials) -> Principal:
    address, limiter = _unthrottled(request)
    services: Services = request.app.state.services
    try:
        principal = auth_service(request).check_password(body.username, body.password, address)
    except AuthError as exc:
        limiter.failed(address)
        services.audit.user_authentication(body.username, address, False, exc.reason)
        raise Problem(401, str(exc)) from None
    services.audit.user_authentication(principal.username, address, True)
    return principal


def secure_cookie(request: Request, services: Services) -> bool:
    """Whether cookies get the Secure flag (auth.cookie_secure)."""
    mode = services.settings.auth.cookie_secure
    if mode == "always":
        return True
    if mode == "never":
        return False
    return request.url.scheme == "https" or services.settings.http.public_url.startswith("https:")


def open_session(request: Request, response: Response, principal: Principal) -> tuple[str, int]:
    """A new web session for ``principal``: its HttpOnly cookie set on ``response``;
    returns the CSRF token and the lifetime in seconds. (Password and single sign-on.)"""
    services: Services = request.app.state.services
    hours = services.settings.auth.session_hours
    token, csrf, _ = auth_service(request).issue(
        principal, "session", ip=client_address(request), hours=hours
    )
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(hours * 3600),
        httponly=True,
        samesite="strict",
        secure=secure_cookie(request, services),
        path="/",
    )
    assert csrf is not None
    return csrf, int(hours * 3600)


@router.post("/auth/login", summary="Log in (web app): sets an HttpOnly session cookie")
def login(request: Request, response: Response, body: Credentials) -> LoginAnswer:
    principal = _login(request, body)
    csrf, lifetime = open_session(request, response, principal)
    return LoginAnswer(user=_me(principal), csrf_token=csrf, expires_in=lifetime)


@router.post("/auth/token", summary="Get a bearer token (scripts, DICOMweb clients)")
def token(request: Request, body: Credentials) -> TokenAnswer:
    services: Services = request.app.state.services
    principal = _login(request, body)
    hours = services.settings.auth.token_hours
    issued, _, _ = auth_service(request).issue(principal, "token", ip=client_address(request), hours=hours)
    return TokenAnswer(access_token=issued, expires_in=int(hours * 3600))


def _caller(request: Request) -> Principal:
    principal = principal_of(request)
    if principal is None or principal.user_id == 0:
        raise Problem(400, "authentication is switched off: there is no user")
    return principal


@router.post("/auth/logout", status_code=204, summary="End this session or revoke this token")
def logout(request: Request, response: Response) -> Response:
    principal = _caller(request)
    if principal.credential_id is not None and principal.via in ("session", "token"):
        auth_service(request).revoke(principal.credential_id, principal.user_id)
    elif principal.credential_id is not None and principal.via == "share":
        share_service(request).end_session(principal.credential_id)
    services: Services = request.app.state.services
    services.audit.user_authentication(principal.username, client_address(request), True, logout=True)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    return response


@router.get("/auth/me", summary="Who am I")
def me(request: Request) -> Me:
    principal = principal_of(request)
    if principal is None:
        raise Problem(401, "authentication required")
    return _me(principal)


@router.get("/auth/api-keys", summary="My API keys (without their secret)")
def list_api_keys(request: Request) -> list[ApiKey]:
    principal = _caller(request)
    return [ApiKey(**row) for row in auth_service(request).api_keys(principal.user_id)]


@router.post("/auth/api-keys", status_code=201, summary="Create an API key (shown once)")
def create_api_key(request: Request, body: NewApiKey) -> ApiKey:
    principal = _caller(request)
    address, limiter = _unthrottled(request)
    services: Services = request.app.state.services
    try:
        auth_service(request).reauthenticate(principal, body.password, address)
    except AuthError as exc:
        if body.password:
            limiter.failed(address)
            services.audit.user_authentication(principal.username, address, False, exc.reason)
        raise Problem(403, f"{exc}: an API key needs you to sign in again") from None
    key, _, key_id = auth_service(request).issue(principal, "apikey", ip=address, name=body.name)
    services.audit.user_changed(
        by=principal.username, ip=address, user=principal.username, detail=f"API key {key_id} created"
    )
    return ApiKey(id=key_id, name=body.name, created_at=None, key=key)


@router.delete("/auth/api-keys/{key_id}", status_code=204, summary="Revoke one of my API keys")
def revoke_api_key(request: Request, key_id: int) -> Response:
    principal = _caller(request)
    if not auth_service(request).revoke(key_id, principal.user_id):
        raise Problem(404, f"you have no active API key {key_id}")
    return Response(status_code=204)
