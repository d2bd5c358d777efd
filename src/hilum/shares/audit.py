"""Audit records of share links (PS3.15 A.5.3).

- created and revoked: Security Alert, Object Security Attributes Changed
  (110135): who may see the studies changed; the record names the link
  (``hilum:share/<id>``) and the studies, so a search by study finds it;
- opened (or refused: unknown, expired, revoked, wrong PIN, locked): User
  Authentication, Login, with the client's address; the user is
  ``share:<id> (created by <user>)``, as in the records of every study
  viewed through the session (the HTTP audit middleware takes the caller
  from the authorization dependency).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from hilum.audit import codes
from hilum.audit.builders import Party, resource_subject
from hilum.audit.messages import AuditMessage, ParticipantObject, study_object
from hilum.audit.service import AuditService

LOG = logging.getLogger(__name__)


def share_uri(share_id: int) -> str:
    return f"hilum:share/{share_id}"


def share_changed(
    audit: AuditService, *, by: str, ip: str, share_id: int, study_uids: Sequence[str], detail: str,
    outcome: int = codes.SUCCESS,
) -> None:
    """A link was created or revoked by ``by``."""

    def build() -> AuditMessage:
        subject = resource_subject(share_uri(share_id))
        subject = ParticipantObject(
            object_id=subject.object_id, id_type=subject.id_type, type_code=subject.type_code,
            role=subject.role, details=(("Alert Description", detail.encode("utf-8")),),
        )
        requestor = Party(by or "unknown", ip)
        return AuditMessage(
            event_id=codes.SECURITY_ALERT,
            event_types=(codes.OBJECT_SECURITY_ATTRIBUTES_CHANGED,),
            action="E",
            outcome=outcome,
            outcome_description=detail,
            participants=[requestor.participant(requestor=True), audit.node().participant(requestor=False)],
            objects=[subject, *(study_object(uid) for uid in dict.fromkeys(study_uids))],
            patients_from_index=True,
        )

    if not audit.enabled:
        return
    try:
        message = build()
    except Exception:  # auditing never breaks the caller
        LOG.exception("cannot build the audit message of share link %d", share_id)
        return
    audit.record(message)


def share_opened(audit: AuditService, *, user: str, ip: str, success: bool, detail: str) -> None:
    """Someone opened a link (or tried to): ``user`` is the link's actor name when known."""
    audit.user_authentication(user or "share:unknown", ip, success, detail)
