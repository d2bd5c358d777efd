"""Share links: create, list, revoke, open, and the sessions opened from them.

A link is a 256-bit random token (shown once, stored as its SHA-256 digest)
naming one or more studies, with an expiry, an optional PIN (argon2id hash;
``shares.pin_attempts`` wrong PINs in a row lock the link for good, and end the
sessions opened from it) and two
switches: de-identified, and whether the zip download is allowed. Opening it
(:meth:`ShareService.open`) creates a share session (a cookie plus CSRF
token, or a bearer token) that expires with the link at the latest; every
request made with it is resolved again (:meth:`ShareService.resolve`), so a
revoked or expired link ends its sessions at once, and so does a link whose
creator no longer sees its studies (grant withdrawn, account disabled or
deleted: :meth:`ShareService._creator_still_sees`), answered like a revoked
one. What a share session may see is one SQL condition
(:func:`hilum.auth.access.shared_studies`).

A de-identified link does not open the original studies: a job
(:mod:`hilum.shares.copy`) stores a de-identified copy of each (PS3.15
Annex E, new UIDs) and the link opens the copies once they are ready.
Copies are deleted when their link is revoked or has expired (:meth:`purge`).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, case, delete, func, insert, select, update

from hilum.auth.access import creator_sees_link
from hilum.auth.policy import SHARE_PERMISSIONS, Perm
from hilum.auth.service import AuthError, Principal, token_digest
from hilum.domain.clock import aware as _aware
from hilum.domain.clock import utcnow as _now
from hilum.domain.errors import HilumError
from hilum.index.deletion import delete_study
from hilum.index.models import jobs_t, studies_t
from hilum.shares.models import share_link_studies_t, share_links_t, share_sessions_t
from hilum.shares.settings import ShareSettings
from hilum.storage.base import StorageArea

LOG = logging.getLogger(__name__)
_HASHER = PasswordHasher()
LINK_PREFIX = "hsl_"  # the link itself (in the URL /s/<token>)
SESSION_PREFIX = "hss_"  # a browser session opened from a link (cookie)
TOKEN_PREFIX = "hst_"  # a bearer token opened from a link (API clients)
_PIN = re.compile(r"[0-9]{4,12}")
COPY_JOB = "share-copy"

L, LS, SS = share_links_t, share_link_studies_t, share_sessions_t
_LINK_REVOKED = "this share link was revoked"  # as _check_open says it
_SESSION_ENDED = "invalid or ended share session"


class ShareError(HilumError):
    """A share request that cannot be done; ``status`` is its HTTP status."""

    def __init__(self, status: int, message: str, reason: str = "", *, actor: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.actor = actor  # the link's name in the audit trail, when the link is known


def is_share_credential(token: str) -> bool:
    return token.startswith((SESSION_PREFIX, TOKEN_PREFIX))


def actor(share_id: int, created_by: str) -> str:
    """How a share session appears in the audit trail and in /auth/me."""
    return f"share:{share_id} (created by {created_by})"


@dataclass(frozen=True, slots=True)
class Opened:
    share: dict[str, Any]
    token: str  # the session cookie value or bearer token
    csrf: str | None
    expires_at: datetime


class ShareService:
    def __init__(self, engine: Engine, storage: StorageArea, settings: ShareSettings,
                 *, session_hours: float, token_hours: float, auth: Any = None) -> None:
        self.engine = engine
        self.auth = auth  # the [auth] settings: group rules, to tell what a link's creator sees
        self.storage = storage
        self.settings = settings
        self.session_hours = session_hours
        self.token_hours = token_hours

    @classmethod
    def build(cls, engine: Engine, storage: StorageArea, settings: Any) -> ShareService:
        """From the whole :class:`hilum.config.Settings` (its ``shares`` and ``auth`` sections)."""
        return cls(engine, storage, settings.shares, session_hours=settings.auth.session_hours,
                   token_hours=settings.auth.token_hours, auth=settings.auth)

    # -- reading -------------------------------------------------------------------------
    def get(self, share_id: int) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(select(L).where(L.c.id == share_id)).mappings().first()
            if row is None:
                raise ShareError(404, f"no share link {share_id}")
            return self._describe(conn, dict(row))

    def find(self, *, created_by: str | None, study_uid: str | None = None,
             limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Links, newest first: of one creator (None: everyone's), naming a study if asked."""
        stmt = select(L).order_by(L.c.id.desc()).limit(limit).offset(offset)
        if created_by is not None:
            stmt = stmt.where(L.c.created_by == created_by)
        if study_uid:
            stmt = stmt.where(
                L.c.id.in_(
                    select(LS.c.share_id).where(
                        (LS.c.source_study_instance_uid == study_uid) | (LS.c.study_instance_uid == study_uid)
                    )
                )
            )
        with self.engine.connect() as conn:
            return [self._describe(conn, dict(r)) for r in conn.execute(stmt).mappings()]

    def _describe(self, conn: Any, row: dict[str, Any]) -> dict[str, Any]:
        studies = conn.execute(
            select(LS.c.source_study_instance_uid, LS.c.study_instance_uid, LS.c.is_copy)
            .where(LS.c.share_id == row["id"])
            .order_by(LS.c.id)
        ).all()
        for key in ("created_at", "expires_at", "revoked_at", "locked_at", "last_opened_at"):
            row[key] = _aware(row[key])
        state, error = row["state"], row["error"]
        if state == "preparing" and row["job_id"] is not None:
            job = conn.execute(
                select(jobs_t.c.state, jobs_t.c.last_error).where(jobs_t.c.id == row["job_id"])
            ).first()
            if job is not None and job.state in ("failed", "cancelled"):
                state, error = "failed", job.last_error or f"the copy job was {job.state}"
        row["state"], row["error"] = state, error
        requested = row.pop("_requested", None)
        if studies:
            row["study_uids"] = list(dict.fromkeys(s.source_study_instance_uid for s in studies))
        else:
            row["study_uids"] = requested or []
        row["copies"] = [
            {"source": s.source_study_instance_uid, "copy": s.study_instance_uid}
            for s in studies
            if s.is_copy
        ]
        row["has_pin"] = row.pop("pin_hash") is not None
        row.pop("token_hash", None)
        row["status"] = _status(row)
        row["ready"] = state == "ready"
        return row

    # -- creating ------------------------------------------------------------------------
    def check_hours(self, hours: float | None) -> float:
        hours = self.settings.default_hours if hours is None else hours
        if not 0 < hours <= self.settings.max_hours:
            raise ShareError(400, f"expires_in_hours: between 0 and {self.settings.max_hours:g} hours")
        return hours

    def create(
        self,
        *,
        created_by: str,
        study_uids: list[str],
        hours: float,
        pin: str | None,
        deidentified: bool,
        allow_download: bool,
        note: str,
        client_ip: str,
    ) -> tuple[dict[str, Any], str]:
        """A new link (its row as :meth:`get` describes it, and its token, shown once).

        The caller has checked that the studies exist and that the creator sees them."""
        if pin is not None and not _PIN.fullmatch(pin):
            raise ShareError(400, "pin: 4 to 12 digits")
        uids = list(dict.fromkeys(study_uids))
        token = LINK_PREFIX + secrets.token_urlsafe(32)
        values = {
            "token_hash": token_digest(token),
            "created_by": created_by,
            "note": note,
            "deidentified": deidentified,
            "allow_download": allow_download,
            "pin_hash": _HASHER.hash(pin) if pin is not None else None,
            "failed_pins": 0,
            "state": "preparing" if deidentified else "ready",
            "open_count": 0,
            "expires_at": _now() + timedelta(hours=hours),
        }
        with self.engine.begin() as conn:
            share_id = int(conn.execute(insert(L).values(**values)).inserted_primary_key[0])  # type: ignore[index]
            if deidentified:
                job_id = self._queue_copy(conn, share_id, uids, created_by, client_ip)
                conn.execute(update(L).where(L.c.id == share_id).values(job_id=job_id))
            else:
                conn.execute(
                    insert(LS),
                    [
                        {"share_id": share_id, "study_instance_uid": uid, "source_study_instance_uid": uid,
                         "is_copy": False}
                        for uid in uids
                    ],
                )
            row = dict(conn.execute(select(L).where(L.c.id == share_id)).mappings().one())
            row["_requested"] = uids
            return self._describe(conn, row), token

    def _queue_copy(self, conn: Any, share_id: int, uids: list[str], created_by: str, ip: str) -> int:
        now = _now()
        result = conn.execute(
            insert(jobs_t).values(
                kind=COPY_JOB, state="queued", source=None, destination=f"share:{share_id}",
                params_json=json.dumps({
                    "share_id": share_id, "study_instance_uids": uids, "requested_by": created_by,
                    "client_ip": ip,
                }),
                state_json="{}", done=0, failed=0, bytes_sent=0, attempts=0, max_attempts=3,
                retry_delay=10.0, created_at=now, updated_at=now,
            )
        )
        return int(result.inserted_primary_key[0])

    # -- revoking and purging ----------------------------------------------------------------
    def revoke(self, share_id: int, by: str) -> bool:
        """Revoke a link and end its sessions; False if it was revoked already."""
        with self.engine.begin() as conn:
            done = conn.execute(
                update(L).where(L.c.id == share_id, L.c.revoked_at.is_(None))
                .values(revoked_at=func.now(), revoked_by=by)
            ).rowcount
            conn.execute(
                update(SS).where(SS.c.share_id == share_id, SS.c.revoked_at.is_(None))
                .values(revoked_at=func.now())
            )
        if done:
            self.purge(share_id)
        return bool(done)

    def purge(self, share_id: int | None = None) -> int:
        """Delete the de-identified copies of revoked or expired links; the number of studies."""
        stmt = select(L.c.id).where(
            L.c.deidentified.is_(True), L.c.state != "purged",
            (L.c.revoked_at.is_not(None)) | (L.c.expires_at <= _now()),
        )
        if share_id is not None:
            stmt = stmt.where(L.c.id == share_id)
        with self.engine.connect() as conn:
            ids = list(conn.execute(stmt).scalars())
        removed = 0
        for found in ids:
            removed += self.delete_copies(found)
            with self.engine.begin() as conn:
                conn.execute(update(L).where(L.c.id == found).values(state="purged"))
        return removed

    def delete_copies(self, share_id: int) -> int:
        """Delete the stored copies a link (or its interrupted copy job) made; forget them."""
        with self.engine.connect() as conn:
            copies = list(conn.execute(
                select(LS.c.study_instance_uid).where(LS.c.share_id == share_id, LS.c.is_copy.is_(True))
            ).scalars())
        removed = 0
        for uid in copies:
            with self.engine.connect() as conn:
                stored = conn.execute(
                    select(studies_t.c.id).where(studies_t.c.study_instance_uid == uid)
                ).first()
            if stored is not None:
                delete_study(self.engine, self.storage, uid)
                removed += 1
        return removed  # the rows stay: they say what the link opened

    def forget_copies(self, share_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(LS).where(LS.c.share_id == share_id, LS.c.is_copy.is_(True)))

    # -- opening -------------------------------------------------------------------------
    def open(self, token: str, pin: str | None, *, kind: str, client_ip: str) -> Opened:
        """Open a link: a new session (``kind`` "session") or bearer token ("token")."""
        if not self.settings.enabled:
            raise ShareError(404, "share links are switched off on this server", "disabled")
        if not token.startswith(LINK_PREFIX) or len(token) > 100:
            raise ShareError(404, "unknown share link", "unknown")
        with self.engine.connect() as conn:
            row = conn.execute(select(L).where(L.c.token_hash == token_digest(token))).mappings().first()
        if row is None:
            raise ShareError(404, "unknown share link", "unknown")
        share = dict(row)
        try:
            self._creator_still_sees(share["id"], share["created_by"])
            self._check_open(share, pin)
            return self._open_session(share, kind, client_ip)
        except ShareError as exc:
            exc.actor = actor(share["id"], share["created_by"])
            raise

    def _open_session(self, share: dict[str, Any], kind: str, client_ip: str) -> Opened:
        """A session on a link whose PIN (if any) was right: only if the link is still open.

        The PIN check is slow (argon2) and other requests may lock or revoke the link
        meanwhile, so its state is checked again in the statement that counts the opening."""
        hours = self.session_hours if kind == "session" else self.token_hours
        now = _now()
        expires = min(_aware(share["expires_at"]) or now, now + timedelta(hours=hours))
        secret = (SESSION_PREFIX if kind == "session" else TOKEN_PREFIX) + secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(24) if kind == "session" else None
        with self.engine.begin() as conn:
            opened = conn.execute(
                update(L)
                .where(L.c.id == share["id"], L.c.locked_at.is_(None), L.c.revoked_at.is_(None),
                       L.c.expires_at > now)
                .values(open_count=L.c.open_count + 1, last_opened_at=func.now(), failed_pins=0)
                .returning(L.c.id)
            ).first()
            if opened is None:
                current = conn.execute(select(L).where(L.c.id == share["id"])).mappings().one()
                self._check_state(dict(current))
                raise ShareError(410, "this share link has expired", "expired")
            conn.execute(
                insert(SS).values(
                    share_id=share["id"], kind=kind, token_hash=token_digest(secret),
                    csrf_hash=token_digest(csrf) if csrf else None, client_ip=client_ip, expires_at=expires,
                )
            )
            described = self._describe(conn, dict(conn.execute(select(L).where(L.c.id == share["id"]))
                                                  .mappings().one()))
        return Opened(described, secret, csrf, expires)

    def _check_state(self, share: dict[str, Any]) -> None:
        if share["revoked_at"] is not None:
            raise ShareError(410, "this share link was revoked", "revoked")
        expires = _aware(share["expires_at"])
        if expires is None or expires <= _now():
            raise ShareError(410, "this share link has expired", "expired")
        if share["locked_at"] is not None:
            raise ShareError(
                403, "this link is locked after too many wrong PINs; ask its sender for a new one", "locked"
            )

    def _check_open(self, share: dict[str, Any], pin: str | None) -> None:
        self._check_state(share)  # refused at once: no PIN is checked on a locked link
        if share["pin_hash"] is not None:
            if not pin:
                raise ShareError(403, "this link needs its PIN", "pin_required")
            if not _verify(share["pin_hash"], pin):
                self._wrong_pin(share)

    def _wrong_pin(self, share: dict[str, Any]) -> None:
        """Count a wrong PIN in one statement (atomic under parallel guesses, on every process)
        and lock the link when it reaches ``pin_attempts``; always raises."""
        failures = L.c.failed_pins + 1
        with self.engine.begin() as conn:
            failed, locked_at = conn.execute(
                update(L).where(L.c.id == share["id"])
                .values(failed_pins=failures,
                        locked_at=case((failures >= self.settings.pin_attempts,
                                        func.coalesce(L.c.locked_at, _now())), else_=L.c.locked_at))
                .returning(L.c.failed_pins, L.c.locked_at)
            ).one()
        if locked_at is not None:
            if failed == self.settings.pin_attempts:
                LOG.warning("share link %d locked after %d wrong PINs", share["id"], failed)
            raise ShareError(403, "wrong PIN; the link is now locked (too many wrong PINs): ask its sender "
                             "for a new one", "locked")
        left = self.settings.pin_attempts - failed
        raise ShareError(403, f"wrong PIN ({left} attempt(s) left)", "wrong_pin")

    # -- sessions ------------------------------------------------------------------------
    def resolve(self, token: str) -> tuple[Principal, str | None]:
        """The principal of a share session or token, and its CSRF digest; AuthError if not valid."""
        if not self.settings.enabled:
            raise AuthError("share links are switched off on this server")
        with self.engine.connect() as conn:
            row = conn.execute(
                select(
                    SS.c.id, SS.c.kind, SS.c.csrf_hash, SS.c.expires_at, SS.c.revoked_at,
                    L.c.id.label("share_id"), L.c.created_by, L.c.allow_download,
                    L.c.revoked_at.label("share_revoked_at"), L.c.expires_at.label("share_expires_at"),
                    L.c.locked_at.label("share_locked_at"),
                )
                .join(L, L.c.id == SS.c.share_id)
                .where(SS.c.token_hash == token_digest(token))
            ).mappings().first()
        if row is None or row["revoked_at"] is not None:
            raise AuthError(_SESSION_ENDED)
        if row["share_revoked_at"] is not None:
            raise AuthError("the share link of this session was revoked")
        if row["share_locked_at"] is not None:  # wrong PINs locked it after this session opened
            raise AuthError("the share link of this session is locked")
        now = _now()
        if min(_aware(row["expires_at"]) or now, _aware(row["share_expires_at"]) or now) <= now:
            raise AuthError("the share link of this session has expired")
        try:
            self._creator_still_sees(int(row["share_id"]), row["created_by"])
        except ShareError:
            raise AuthError(_SESSION_ENDED) from None  # as the sessions of a revoked link
        permissions = SHARE_PERMISSIONS | ({Perm.STUDY_EXPORT} if row["allow_download"] else set())
        principal = Principal(
            user_id=-int(row["share_id"]),
            username=actor(row["share_id"], row["created_by"]),
            role="share",
            permissions=frozenset(permissions),
            credential_id=int(row["id"]),
            via="share",
            share_id=int(row["share_id"]),
        )
        return principal, row["csrf_hash"]

    def _creator_still_sees(self, share_id: int, created_by: str) -> None:
        """Refuse a link, like a revoked one (nothing more is told), whose creator no longer
        sees every study it shares: a link never opens more than its creator sees."""
        with self.engine.connect() as conn:
            if creator_sees_link(conn, share_id, created_by, self.auth):
                return
        LOG.info("share link %d refused: its creator %r no longer sees its studies", share_id, created_by)
        raise ShareError(410, _LINK_REVOKED, "revoked")

    def end_session(self, session_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(SS).where(SS.c.id == session_id, SS.c.revoked_at.is_(None))
                         .values(revoked_at=func.now()))


def _status(row: dict[str, Any]) -> str:
    """active | preparing | failed | locked | expired | revoked (the first that applies, from the end)."""
    if row["revoked_at"] is not None:
        return "revoked"
    expires = _aware(row["expires_at"])
    if expires is not None and expires <= _now():
        return "expired"
    if row["locked_at"] is not None:
        return "locked"
    if row["state"] in ("preparing", "failed"):
        return str(row["state"])
    return "active"


def _verify(hashed: str, pin: str) -> bool:
    try:
        return _HASHER.verify(hashed, pin)
    except (VerificationError, InvalidHashError):
        return False
