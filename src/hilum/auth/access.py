"""Which studies a principal may see, as one SQL condition on the studies table.

Administrators, radiologists and technologists see every study (but the
de-identified copies made for share links are left out of the latter two's
searches, and from other DICOM systems' C-FIND, C-MOVE and C-GET: they belong to
their link). Others (a referring physician) see a
study when its ReferringPhysicianName is their person name, or when it was
granted to them or to one of their groups. A session opened from a share
link sees exactly the link's studies, once they are ready, while the link is
not revoked, and while its creator still sees every study it shares
(:func:`creator_sees_link`).

A caller who may not see a study is told nothing about it: a path naming a
hidden study, series or instance answers exactly as one naming nothing stored
(:func:`sees_named`), and counts of a patient's studies, series and instances
are taken over the studies the caller sees (``hilum.index.search``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, case, exists, func, or_, select, true

from hilum.auth.models import study_grants_t, users_t
from hilum.auth.policy import Perm, Role, permissions_of
from hilum.auth.service import AuthService, Principal
from hilum.domain.attributes import person_name_key
from hilum.index.models import instances_t, series_t, studies_t
from hilum.shares.models import share_link_studies_t, share_links_t

S, SE, I = studies_t, series_t, instances_t  # noqa: E741


def study_condition(principal: Principal | None) -> Any:
    """None when every study is visible, else a condition on ``studies``."""
    if principal is None:
        return None
    if principal.share_id is not None:
        return S.c.study_instance_uid.in_(shared_studies(principal.share_id))
    if principal.role == Role.ADMINISTRATOR:
        return None
    if principal.all_studies:
        return not_a_share_copy()
    granted = [
        and_(study_grants_t.c.principal_kind == "user", study_grants_t.c.principal == principal.username)
    ]
    if principal.groups:
        granted.append(
            and_(study_grants_t.c.principal_kind == "group", study_grants_t.c.principal.in_(principal.groups))
        )
    conditions: list[Any] = [
        exists(select(1).where(study_grants_t.c.study_instance_uid == S.c.study_instance_uid, or_(*granted)))
    ]
    if principal.person_name_key:
        conditions.append(S.c.referring_physician_name_key == principal.person_name_key)
    conditions.extend(principal.study_rules)  # auth.group_rules naming the user's groups
    return or_(*conditions)


def not_a_share_copy() -> Any:
    """Every study but the de-identified copies made for share links (which belong to
    their link): what radiologists, technologists and other DICOM systems see."""
    return ~exists(
        select(1).where(
            share_link_studies_t.c.study_instance_uid == S.c.study_instance_uid,
            share_link_studies_t.c.is_copy == true(),
        )
    )


def shared_studies(share_id: int) -> Any:
    """The StudyInstanceUIDs a share link opens: none until ready, none once revoked."""
    L, LS = share_links_t, share_link_studies_t
    return (
        select(LS.c.study_instance_uid)
        .join(L, L.c.id == LS.c.share_id)
        .where(LS.c.share_id == share_id, L.c.state == "ready", L.c.revoked_at.is_(None))
    )


def sees_some_studies_only(principal: Principal | None) -> bool:
    """Whether the caller sees only some studies (a referring physician, a share session):
    what it is told about patients must then be computed over those studies."""
    return principal is not None and not principal.all_studies


def sees_named(
    conn: Any, principal: Principal, *, study: str | None = None, series: str | None = None,
    sop: str | None = None,
) -> bool:
    """Whether the study, series and instance a path names all exist, lie within one
    another, and belong to a study ``principal`` may see. False alike for what is hidden
    and for what is not stored, so the answer reveals nothing to those who may not see it."""
    joined: Any = S
    where: list[Any] = []
    if study:
        where.append(S.c.study_instance_uid == study)
    if series or sop:
        joined = joined.join(SE, SE.c.study_pk == S.c.id)
    if series:
        where.append(SE.c.series_instance_uid == series)
    if sop:
        joined = joined.join(I, I.c.series_pk == SE.c.id)
        where.append(I.c.sop_instance_uid == sop)
    condition = study_condition(principal)
    if condition is not None:
        where.append(condition)
    return conn.execute(select(S.c.id).select_from(joined).where(*where).limit(1)).first() is not None


def may_see(conn: Any, principal: Principal, study_uid: str) -> bool:
    condition = study_condition(principal)
    if condition is None:
        return True
    found = conn.execute(select(S.c.id).where(S.c.study_instance_uid == study_uid, condition)).first()
    return found is not None


def creator_sees_link(conn: Any, share_id: int, created_by: str, auth_settings: Any) -> bool:
    """Whether the creator of a share link still sees every stored study it shares: their
    account exists and is enabled, their role reads studies, and each study is (still)
    visible to them through role, person name, grants or group rules (``auth_settings``:
    the ``[auth]`` section, for its group rules). A link never opens more than its creator
    sees; asked when the link is opened and on every request of its sessions."""
    user = conn.execute(
        select(users_t.c.id, users_t.c.username, users_t.c.role, users_t.c.person_name, users_t.c.groups,
               users_t.c.disabled)
        .where(users_t.c.username == created_by)
    ).first()
    if user is None or user.disabled:
        return False
    creator = Principal(
        user_id=user.id, username=user.username, role=user.role, permissions=permissions_of(user.role),
        person_name_key=person_name_key(user.person_name or ""),
        groups=tuple(g for g in (user.groups or "").split(",") if g),
    )
    if not creator.can(Perm.STUDY_READ):
        return False
    creator = AuthService(conn.engine, auth_settings).with_group_rules(creator)
    condition = study_condition(creator)
    if condition is None:
        return True
    sources = select(share_link_studies_t.c.source_study_instance_uid).where(
        share_link_studies_t.c.share_id == share_id
    )
    stored, visible = conn.execute(
        select(func.count(S.c.id), func.count(case((condition, S.c.id))))
        .where(S.c.study_instance_uid.in_(sources))
    ).one()
    return bool(stored == visible)
