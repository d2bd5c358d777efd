"""User administration (administrators) and study grants."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from hilum.app import Services
from hilum.audit import builders
from hilum.auth.models import study_grants_t
from hilum.auth.policy import Role
from hilum.auth.service import AccountError
from hilum.web.deps import checked_uid
from hilum.web.problems import Problem
from hilum.web.security import auth_service, principal_of

router = APIRouter()


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=64)
    role: Role
    password: str = Field(min_length=10, max_length=1024)
    display_name: str = ""
    person_name: str = Field("", description="DICOM person name, e.g. HOUSE^GREGORY (referring physicians)")
    groups: list[str] = []


class UserChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: str | None = Field(None, min_length=10, max_length=1024)
    disabled: bool | None = None
    keep_api_keys: bool = Field(
        False, description="A new password or disabling revokes the user's sessions, tokens and API "
        "keys; true keeps the API keys (e.g. a service's key while its owner's password is reset)",
    )


class Grant(BaseModel):
    model_config = ConfigDict(extra="forbid")
    principal_kind: str = Field(pattern="^(user|group)$")
    principal: str = Field(min_length=1, max_length=64)


def _account(call: Any) -> Any:
    try:
        return call()
    except AccountError as exc:
        raise Problem(409 if "exists" in str(exc) else 400, str(exc)) from None


@router.get("/users", summary="List users")
def list_users(request: Request) -> list[dict[str, Any]]:
    return auth_service(request).list_users()


@router.post("/users", status_code=201, summary="Create a user")
def create_user(request: Request, body: NewUser) -> dict[str, Any]:
    service = auth_service(request)
    user_id = _account(
        lambda: service.add_user(
            body.username,
            body.role.value,
            body.password,
            display_name=body.display_name,
            person_name=body.person_name,
            groups=body.groups,
        )
    )
    return {"id": user_id, "username": body.username, "role": body.role.value}


@router.put("/users/{username}", summary="Change a user's password or disable/enable it")
def change_user(request: Request, username: str, body: UserChange) -> dict[str, Any]:
    service = auth_service(request)
    if body.password is None and body.disabled is None:
        raise Problem(400, "nothing to change: give password and/or disabled")
    keep = body.keep_api_keys
    revoked = 0
    if body.password is not None:
        revoked += _account(lambda: service.set_password(username, body.password or "", keep_api_keys=keep))
    if body.disabled is not None:
        revoked += _account(lambda: service.set_disabled(username, bool(body.disabled), keep_api_keys=keep))
    detail = "password changed" if body.password else f"disabled={body.disabled}"
    _audit_user(request, username, f"{detail}; {revoked} credential(s) revoked"
                + (" (API keys kept)" if keep else ""))
    return {
        "username": username,
        "changed": [k for k in ("password", "disabled") if getattr(body, k) is not None],
        "credentials_revoked": revoked,
    }


def _audit_user(request: Request, user: str, detail: str, roles: bool = False) -> None:
    services: Services = request.app.state.services
    caller = principal_of(request)
    ip = request.client.host if request.client else ""
    services.audit.user_changed(
        by=caller.username if caller else "", ip=ip, user=user, detail=detail, roles=roles
    )


@router.get(
    "/studies/{study_uid}/grants", summary="Who a study is opened to (besides its referring physician)"
)
def list_grants(request: Request, study_uid: str) -> list[dict[str, Any]]:
    services: Services = request.app.state.services
    with services.engine.connect() as conn:
        rows = (
            conn.execute(
                select(study_grants_t).where(study_grants_t.c.study_instance_uid == checked_uid(study_uid))
            )
            .mappings()
            .all()
        )
    return [dict(r) for r in rows]


@router.post("/studies/{study_uid}/grants", status_code=201, summary="Open a study to a user or a group")
def add_grant(request: Request, study_uid: str, body: Grant) -> dict[str, Any]:
    services: Services = request.app.state.services
    caller = principal_of(request)
    if body.principal_kind == "user":
        _account(lambda: auth_service(request).user_id(body.principal))
    uid = checked_uid(study_uid)
    # Read and write in separate transactions: on SQLite a deferred transaction that reads
    # first cannot take the write lock once another connection (the audit writer) has
    # written since ("database is locked" without waiting for the busy timeout).
    with services.engine.connect() as conn:
        exists = conn.execute(
            select(study_grants_t.c.id).where(
                study_grants_t.c.study_instance_uid == uid,
                study_grants_t.c.principal_kind == body.principal_kind,
                study_grants_t.c.principal == body.principal,
            )
        ).first()
    if exists is None:
        try:
            with services.engine.begin() as conn:
                conn.execute(
                    insert(study_grants_t).values(
                        study_instance_uid=uid,
                        principal_kind=body.principal_kind,
                        principal=body.principal,
                        created_by=caller.username if caller else "",
                    )
                )
        except IntegrityError:
            pass  # granted at the same moment by another request: the grant exists
    _audit_grant(request, study_uid, f"opened to {body.principal_kind} {body.principal}")
    return {"study_instance_uid": study_uid, **body.model_dump()}


def _audit_grant(request: Request, study_uid: str, detail: str) -> None:
    """A change of who may see a study: Security Alert, object security attributes changed."""
    services: Services = request.app.state.services
    caller = principal_of(request)
    services.audit.security_alert(
        "object-security-attributes", user=caller.username if caller else "",
        ip=request.client.host if request.client else "",
        subject=builders.study_subject(study_uid), detail=detail,
    )


@router.delete(
    "/studies/{study_uid}/grants/{principal_kind}/{principal}",
    status_code=204,
    summary="Close a study to a user or group again",
)
def remove_grant(request: Request, study_uid: str, principal_kind: str, principal: str) -> Response:
    services: Services = request.app.state.services
    with services.engine.begin() as conn:
        done = conn.execute(
            delete(study_grants_t).where(
                study_grants_t.c.study_instance_uid == checked_uid(study_uid),
                study_grants_t.c.principal_kind == principal_kind,
                study_grants_t.c.principal == principal,
            )
        )
    if done.rowcount == 0:
        raise Problem(404, "no such grant")
    _audit_grant(request, study_uid, f"closed to {principal_kind} {principal}")
    return Response(status_code=204)
