"""Share links: create, list, revoke (study.share), and open them without an account.

Who may call what is decided by the one authorization dependency
(hilum.auth.policy): creating and listing need ``study.share``; opening is
public and throttled per address like logins. A session opened from a link
reaches only the link's studies, through the same SQL condition as every
other caller (hilum.auth.access), and only the read routes
(``SHARE_ROUTES``). See docs/security.md#share-links.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from hilum.app import Services
from hilum.auth.access import may_see, shared_studies
from hilum.auth.policy import Role
from hilum.auth.service import Principal
from hilum.index.search import missing_studies
from hilum.shares.audit import share_changed, share_opened
from hilum.shares.service import ShareError, actor
from hilum.web.api.auth import secure_cookie
from hilum.web.problems import Problem
from hilum.web.security import SESSION_COOKIE, client_address, principal_of, share_service, throttle

LOG = logging.getLogger(__name__)
router = APIRouter()

UID = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)*$", max_length=64)]
MAX_STUDIES = 50


class NewShare(BaseModel):
    model_config = ConfigDict(extra="forbid")

    study_uids: list[UID] = Field(min_length=1, max_length=MAX_STUDIES)
    expires_in_hours: float | None = Field(
        default=None, gt=0, description="default shares.default_hours (72), at most shares.max_hours"
    )
    pin: str | None = Field(default=None, pattern=r"^[0-9]{4,12}$", description="4 to 12 digits")
    deidentified: bool = Field(
        default=False, description="share de-identified copies (PS3.15 Annex E), not the studies"
    )
    allow_download: bool = Field(default=False, description="the recipient may download the zip")
    note: str = Field(
        default="", max_length=1000, description="for the creator's records; never shown to the recipient"
    )


class ShareCopy(BaseModel):
    source: str = Field(description="the shared study")
    copy_: str = Field(alias="copy", description="its de-identified copy, what the recipient sees")

    model_config = ConfigDict(populate_by_name=True)


class ShareOut(BaseModel):
    id: int
    token: str | None = Field(default=None, description="only in the answer to its creation: send it now")
    url: str | None = Field(default=None, description="/s/<token>, only in the answer to its creation")
    status: str = Field(description="active | preparing | failed | locked | expired | revoked")
    ready: bool = Field(description="the recipient can see the studies (de-identified: once copied)")
    state: str = Field(description="preparing | ready | failed | purged (copies deleted)")
    error: str | None
    study_uids: list[str] = Field(description="the studies shared")
    copies: list[ShareCopy] = Field(description="de-identified links: the copy made of each study")
    deidentified: bool
    allow_download: bool
    has_pin: bool
    note: str
    created_by: str
    created_at: datetime | None
    expires_at: datetime
    revoked_at: datetime | None
    revoked_by: str | None
    locked_at: datetime | None
    failed_pins: int
    open_count: int
    last_opened_at: datetime | None
    job_id: int | None = Field(description="de-identified links: the job making the copies")


class OpenShare(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str | None = Field(
        default=None, max_length=100, description="the link's token (or send it as Authorization: Bearer)"
    )
    pin: str | None = Field(default=None, max_length=64)
    as_token: bool = Field(
        default=False, description="answer a bearer access_token instead of setting the session cookie"
    )


class ShareSession(BaseModel):
    share_id: int
    study_uids: list[str] = Field(description="what the session opens (de-identified: the copies)")
    expires_at: datetime = Field(description="when the session ends (no later than the link)")
    deidentified: bool
    allow_download: bool
    ready: bool
    status: str


class OpenedShare(ShareSession):
    csrf_token: str | None = Field(
        default=None, description="session: send it back in X-CSRF-Token with POST/PUT/DELETE"
    )
    access_token: str | None = Field(default=None, description="as_token / bearer form: the bearer token")
    token_type: str | None = None
    expires_in: int


def _caller(request: Request) -> Principal:
    principal = principal_of(request)
    if principal is None:
        raise Problem(401, "authentication required")
    return principal


def _is_admin(principal: Principal) -> bool:
    return principal.role == Role.ADMINISTRATOR


def _enabled(request: Request) -> None:
    services: Services = request.app.state.services
    if not services.settings.shares.enabled:
        raise Problem(403, "share links are switched off on this server (shares.enabled = false)")


def _problem(exc: ShareError) -> Problem:
    return Problem(exc.status, str(exc), reason=exc.reason) if exc.reason else Problem(exc.status, str(exc))


@router.post("/shares", status_code=201, summary="Create a share link (its token is shown once)")
def create_share(request: Request, body: NewShare) -> ShareOut:
    _enabled(request)
    principal = _caller(request)
    services: Services = request.app.state.services
    shares = share_service(request)
    try:
        hours = shares.check_hours(body.expires_in_hours)
    except ShareError as exc:
        raise _problem(exc) from None
    uids = list(dict.fromkeys(body.study_uids))
    with services.engine.connect() as conn:
        missing = set(missing_studies(conn, uids))
        for uid in uids:
            # A study hidden from the caller answers as one not stored: existence is not disclosed.
            if uid in missing or not may_see(conn, principal, uid):
                raise Problem(404, f"no stored study {uid} that you may see")
    ip = client_address(request)
    try:
        row, token = shares.create(
            created_by=principal.username, study_uids=uids, hours=hours, pin=body.pin,
            deidentified=body.deidentified, allow_download=body.allow_download, note=body.note, client_ip=ip,
        )
    except ShareError as exc:
        raise _problem(exc) from None
    share_changed(
        services.audit, by=principal.username, ip=ip, share_id=row["id"], study_uids=uids,
        detail=f"share link {row['id']} created, expires {row['expires_at']:%Y-%m-%d %H:%M:%S} UTC"
        + (", PIN" if body.pin else "") + (", de-identified" if body.deidentified else "")
        + (", download allowed" if body.allow_download else ""),
    )
    if body.deidentified:
        runner = getattr(request.app.state, "jobs", None)
        if runner is not None:
            runner.wake()
    try:
        shares.purge()  # housekeeping: copies of links that have expired since
    except Exception:  # the link is made; the copies go next time
        LOG.exception("cannot delete the de-identified copies of expired share links")
    return ShareOut(**row, token=token, url=f"/s/{token}")


@router.get("/shares", summary="Share links: one's own (administrators: everyone's)")
def list_shares(
    request: Request,
    study_uid: UID | None = Query(None, description="only links that share this study"),
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=2**31),
) -> list[ShareOut]:
    principal = _caller(request)
    shares = share_service(request)
    rows = shares.find(
        created_by=None if _is_admin(principal) else principal.username, study_uid=study_uid,
        limit=limit, offset=offset,
    )
    return [ShareOut(**row) for row in rows]


@router.get("/shares/session", summary="The share link this session was opened from")
def current_share(request: Request) -> ShareSession:
    principal = _caller(request)
    if principal.share_id is None:
        raise Problem(404, "this request was not made with a session opened from a share link")
    services: Services = request.app.state.services
    row = share_service(request).get(principal.share_id)
    return _session_view(services, row, None)


@router.delete("/shares/session", status_code=204, summary="End this share session")
def end_share_session(request: Request) -> Response:
    principal = _caller(request)
    if principal.share_id is None or principal.credential_id is None:
        raise Problem(404, "this request was not made with a session opened from a share link")
    share_service(request).end_session(principal.credential_id)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def _own(request: Request, share_id: int) -> tuple[Principal, dict[str, Any]]:
    principal = _caller(request)
    try:
        row = share_service(request).get(share_id)
    except ShareError as exc:
        raise _problem(exc) from None
    if row["created_by"] != principal.username and not _is_admin(principal):
        raise Problem(404, f"no share link {share_id}")  # others' links are not disclosed
    return principal, row


@router.get("/shares/{share_id}", summary="One share link")
def get_share(request: Request, share_id: int) -> ShareOut:
    _, row = _own(request, share_id)
    return ShareOut(**row)


@router.delete(
    "/shares/{share_id}", status_code=204, summary="Revoke a share link (ends its sessions at once)"
)
def revoke_share(request: Request, share_id: int) -> Response:
    principal, row = _own(request, share_id)
    services: Services = request.app.state.services
    if share_service(request).revoke(share_id, principal.username):
        share_changed(
            services.audit, by=principal.username, ip=client_address(request), share_id=share_id,
            study_uids=row["study_uids"], detail=f"share link {share_id} revoked",
        )
    return Response(status_code=204)


@router.post("/shares/open", summary="Open a share link (public): a session cookie or a bearer token")
def open_share(request: Request, response: Response, body: OpenShare) -> OpenedShare:
    services: Services = request.app.state.services
    address = client_address(request)
    limiter = throttle(request)
    if limiter.blocked(address):
        raise Problem(429, "too many failed attempts from this address; try again later")
    token, as_token = body.token, body.as_token
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if not token and scheme.lower() == "bearer" and value.strip():
        token, as_token = value.strip(), True
    if not token:
        raise Problem(400, "token: the share link's token is required")
    kind = "token" if as_token else "session"
    try:
        opened = share_service(request).open(token, body.pin, kind=kind, client_ip=address)
    except ShareError as exc:
        if exc.status == 404 or exc.reason in ("wrong_pin", "locked"):
            limiter.failed(address)
        share_opened(services.audit, user=exc.actor, ip=address, success=False, detail=str(exc))
        raise _problem(exc) from None
    row = opened.share
    share_opened(
        services.audit, user=actor(row["id"], row["created_by"]), ip=address, success=True,
        detail=f"share link {row['id']} opened ({'bearer token' if as_token else 'browser session'})",
    )
    expires_in = max(int((opened.expires_at - datetime.now(UTC)).total_seconds()), 0)
    view = _session_view(services, row, opened.expires_at)
    if as_token:
        return OpenedShare(**view.model_dump(), access_token=opened.token, token_type="bearer",
                           expires_in=expires_in)
    response.set_cookie(
        SESSION_COOKIE, opened.token, max_age=max(expires_in, 1), httponly=True, samesite="strict",
        secure=secure_cookie(request, services), path="/",
    )
    return OpenedShare(**view.model_dump(), csrf_token=opened.csrf, expires_in=expires_in)


def _session_view(services: Services, row: dict[str, Any], expires_at: datetime | None) -> ShareSession:
    """What the recipient is told: never the original UIDs of a de-identified link, nor the note."""
    with services.engine.connect() as conn:
        uids = list(conn.execute(shared_studies(row["id"])).scalars())
    return ShareSession(
        share_id=row["id"], study_uids=uids, expires_at=expires_at or row["expires_at"],
        deidentified=row["deidentified"], allow_download=row["allow_download"], ready=row["ready"],
        status=row["status"],
    )
