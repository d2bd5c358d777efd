"""Authentication and authorization of every HTTP request, in one dependency.

Each router is included with :func:`guard` (see web/app.py), so no route runs
before this has decided: it finds the caller (session cookie + CSRF header,
bearer token or API key, optionally HTTP Basic), looks up the permission the
route needs in :mod:`hilum.auth.policy`, and checks study-level access for
any study, series or instance the path (or a WADO-URI query) names: to a
caller who may not see it, it answers the same 404 problem as for a UID
nothing is stored under, so existence is not disclosed. The caller is left in
``request.state.principal`` for routes that filter lists
(:func:`limit_to_caller`).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

from fastapi import Request

from hilum.app import Services
from hilum.auth.access import sees_named, sees_some_studies_only, study_condition
from hilum.auth.policy import Perm, permissions_of, required_permission, share_route_allowed
from hilum.auth.service import AuthError, AuthService, Principal, token_digest
from hilum.domain.query import Query
from hilum.shares.service import ShareService, is_share_credential
from hilum.web.problems import Problem

SESSION_COOKIE = "hilum_session"
CSRF_HEADER = "x-csrf-token"
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Authentication switched off (auth.enabled = false): everything allowed.
OPEN = Principal(user_id=0, username="anonymous", role="administrator",
                 permissions=permissions_of("administrator"), via="none")
_STUDY_PARAMS = ("study_uid", "study_instance_uid")
_SERIES_PARAMS = ("series_uid", "series_instance_uid")
_SOP_PARAMS = ("sop_uid", "sop_instance_uid")
# Patient records (list, detail, deletion) are open only to roles that see every study.
_PATIENT_ROUTES = "/api/v1/patients"
# The one answer for a study, series or instance the caller may not see, or that does not
# exist: the same status and body either way.
NOT_VISIBLE = "no such study, series or instance, or it is not open to you"


class AddressThrottle:
    """Failed logins per client address in a sliding window (per process)."""

    def __init__(self, limit: int, window: float = 600.0) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _trim(self, entries: deque[float], now: float) -> None:
        while entries and entries[0] < now - self.window:
            entries.popleft()

    def blocked(self, address: str) -> bool:
        now = time.monotonic()
        with self._lock:
            entries = self._failures[address]
            self._trim(entries, now)
            return len(entries) >= self.limit

    def failed(self, address: str) -> None:
        with self._lock:
            self._failures[address].append(time.monotonic())


def auth_service(request: Request) -> AuthService:
    state = request.app.state
    service: AuthService | None = getattr(state, "auth", None)
    if service is None:
        services: Services = state.services
        service = state.auth = AuthService(services.engine, services.settings.auth)
    return service


def share_service(request: Request) -> ShareService:
    state = request.app.state
    service: ShareService | None = getattr(state, "shares", None)
    if service is None:
        services: Services = state.services
        service = state.shares = ShareService.build(services.engine, services.storage, services.settings)
    return service


def _resolve(request: Request, token: str) -> tuple[Principal, str | None]:
    """A session, bearer token or API key; or a session or token opened from a share link."""
    if is_share_credential(token):
        return share_service(request).resolve(token)
    return auth_service(request).resolve(token)


def throttle(request: Request) -> AddressThrottle:
    found: AddressThrottle | None = getattr(request.app.state, "throttle", None)
    if found is None:
        services: Services = request.app.state.services
        found = request.app.state.throttle = AddressThrottle(services.settings.auth.max_failures_per_address)
    return found


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _unauthorized(detail: str, request: Request) -> Problem:
    services: Services = request.app.state.services
    challenge = 'Bearer realm="hilum"'
    if services.settings.auth.allow_basic:
        challenge += ', Basic realm="hilum"'
    return Problem(401, detail, headers={"WWW-Authenticate": challenge})


def authenticate(request: Request) -> Principal:
    """The caller, or a 401 problem."""
    services: Services = request.app.state.services
    service = auth_service(request)
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    try:
        if scheme.lower() == "bearer" and value.strip():
            principal, _ = _resolve(request, value.strip())
            return principal
        if scheme.lower() == "basic" and value.strip():
            if not services.settings.auth.allow_basic:
                raise _unauthorized("HTTP Basic authentication is not enabled; use a bearer token", request)
            return _basic(request, service, value.strip())
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            principal, csrf_digest = _resolve(request, cookie)
            if request.method in _UNSAFE:
                sent = request.headers.get(CSRF_HEADER, "")
                valid = bool(sent) and csrf_digest is not None
                if not valid or not hmac.compare_digest(token_digest(sent), csrf_digest or ""):
                    raise Problem(403, "missing or wrong CSRF token (send the X-CSRF-Token header)")
            return principal
    except AuthError as exc:
        raise _unauthorized(str(exc), request) from None
    raise _unauthorized("authentication required", request)


def _basic(request: Request, service: AuthService, value: str) -> Principal:
    address = client_address(request)
    if throttle(request).blocked(address):
        raise Problem(429, "too many failed logins from this address; try again later")
    try:
        username, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise _unauthorized("malformed Basic credentials", request) from None
    try:
        return service.check_password(username, password, address)
    except AuthError:
        throttle(request).failed(address)
        raise


def guard(prefix: str) -> Callable[[Request], None]:
    """The dependency for a router mounted at ``prefix``."""

    def authorize(request: Request) -> None:
        services: Services = request.app.state.services
        if not services.settings.auth.enabled:
            request.state.principal = OPEN
            return
        route = request.scope.get("route")
        template = prefix + (getattr(route, "path", "") or "")
        permission = required_permission(request.method, template)
        if permission is Perm.PUBLIC:
            request.state.principal = None
            return
        principal = authenticate(request)
        request.state.principal = principal
        if principal.share_id is not None and not share_route_allowed(request.method, template):
            raise Problem(403, "a share link only opens its studies for viewing")
        if not principal.can(permission):
            raise Problem(403, f"your role ({principal.role}) does not allow this ({permission.value})")
        if not principal.all_studies:
            _check_study_access(request, services, principal, template)

    return authorize


def _check_study_access(request: Request, services: Services, principal: Principal, template: str) -> None:
    if template == _PATIENT_ROUTES or template.startswith(_PATIENT_ROUTES + "/"):
        raise Problem(403, "patient records are open only to roles that see every study")
    params: dict[str, Any] = dict(request.path_params)
    study = next((params[p] for p in _STUDY_PARAMS if p in params), None)
    series = next((params[p] for p in _SERIES_PARAMS if p in params), None)
    sop = next((params[p] for p in _SOP_PARAMS if p in params), None)
    if study is None and series is None and sop is None and template == "/dicomweb/wado":
        query = request.query_params
        study, series, sop = query.get("studyUID"), query.get("seriesUID"), query.get("objectUID")
    if study is None and series is None and sop is None:
        return
    with services.engine.connect() as conn:
        if not sees_named(conn, principal, study=study, series=series, sop=sop):
            raise Problem(404, NOT_VISIBLE)


def principal_of(request: Request) -> Principal | None:
    found: Principal | None = getattr(request.state, "principal", None)
    return found


def limit_to_caller(request: Request, query: Query) -> Query:
    """``query`` limited to the studies the caller may see; for a caller who sees only some,
    the patient-level counts it answers or matches are taken over those studies (not the
    stored aggregates, which would reveal studies hidden from it). QIDO-RS and the resource
    lists both use this."""
    principal = principal_of(request)
    query.restrict = study_condition(principal)
    query.count_visible_only = sees_some_studies_only(principal)
    return query
