"""Which studies a principal may see, as one SQL condition on the studies table.

Administrators, radiologists and technologists see every study (but the
de-identified copies made for share links are left out of the latter two's
searches, and from other DICOM systems' C-FIND, C-MOVE and C-GET: they belong to
their link). Others (a referring physician) see a
study when its ReferringPhysicianName is their person name, or when it was
granted to them or to one of their groups. A session opened from a share
link sees exactly the link's studies, once they are ready, while the link is
not revoked.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, exists, or_, select, true

from hilum.auth.models import study_grants_t
from hilum.auth.policy import Role
from hilum.auth.service import Principal
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


def study_of(
    conn: Any, *, study: str | None = None, series: str | None = None, sop: str | None = None
) -> str | None:
    """The StudyInstanceUID a path names (directly or through a series / instance)."""
    if study:
        return study
    if series:
        return conn.execute(
            select(S.c.study_instance_uid)
            .join(SE, SE.c.study_pk == S.c.id)
            .where(SE.c.series_instance_uid == series)
        ).scalar()
    if sop:
        return conn.execute(
            select(S.c.study_instance_uid)
            .join(SE, SE.c.study_pk == S.c.id)
            .join(I, I.c.series_pk == SE.c.id)
            .where(I.c.sop_instance_uid == sop)
        ).scalar()
    return None


def may_see(conn: Any, principal: Principal, study_uid: str) -> bool:
    condition = study_condition(principal)
    if condition is None:
        return True
    found = conn.execute(select(S.c.id).where(S.c.study_instance_uid == study_uid, condition)).first()
    return found is not None
