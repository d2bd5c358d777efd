"""Users, passwords, sessions, tokens and API keys.

Passwords are hashed with argon2id (argon2-cffi). Wrong passwords are counted
in the index per (account, client address), with an account-wide back-off
(:mod:`hilum.auth.lockout`), so every HTTP process sees them. Tokens are
random (256 bits) and stored as SHA-256 digests: a stolen database yields no
usable credential.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import secrets
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, func, insert, select, update

from hilum.auth import lockout
from hilum.auth.models import credentials_t, users_t
from hilum.auth.policy import ALL_STUDIES, Perm, Role, permissions_of
from hilum.domain.attributes import person_name_key
from hilum.domain.clock import aware as _aware
from hilum.domain.clock import utcnow as _now
from hilum.domain.errors import HilumError
from hilum.index.database import write_transaction

LOG = logging.getLogger(__name__)
_HASHER = PasswordHasher()  # argon2id, RFC 9106 low-memory defaults
# Verified against when the user does not exist, so timing does not reveal names.


@functools.cache
def _dummy_hash() -> str:
    """A hash to check unknown users' passwords against (same cost as a real check);
    made on first use, not at import (an argon2 hash costs ~0.1 s of CPU)."""
    return _HASHER.hash("not a password of anyone")

INITIAL_PASSWORD_FILE = "initial-admin-password.txt"
_USERNAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")


class AuthError(HilumError):
    """Authentication failed (HTTP 401); the message is safe to show, ``reason`` is for the audit trail."""

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


# The one answer to an unknown name, a wrong password and a locked-out attempt.
GENERIC_REFUSAL = "wrong user name or password"


class AccountError(HilumError):
    """A user-management request that cannot be done (bad name, unknown user...)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, with what rights."""

    user_id: int
    username: str
    role: str
    permissions: frozenset[Perm]
    person_name_key: str = ""
    groups: tuple[str, ...] = ()
    credential_id: int | None = None
    via: str = ""  # session | token | apikey | basic | share
    # Sessions opened from a share link: the link; they see only its studies (auth.access).
    share_id: int | None = None
    # Conditions on studies opened to this user's groups by auth.group_rules (SQL expressions).
    study_rules: tuple[Any, ...] = field(default=(), compare=False)

    @property
    def all_studies(self) -> bool:
        try:
            return Role(self.role) in ALL_STUDIES
        except ValueError:
            return False

    def can(self, permission: Perm) -> bool:
        return permission in self.permissions


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def generate_password() -> str:
    return secrets.token_urlsafe(15)


def validate_username(name: str) -> str:
    if not 1 <= len(name) <= 64 or not set(name) <= _USERNAME_CHARS:
        raise AccountError(f"user name {name[:80]!r}: use 1-64 letters, digits, '.', '_', '-', '@'")
    return name


def validate_password(password: str) -> str:
    if len(password) < 10:
        raise AccountError("passwords need at least 10 characters")
    if len(password) > 1024:
        raise AccountError("passwords are at most 1024 characters")
    return password


class AuthService:
    def __init__(self, engine: Engine, config: Any) -> None:
        self.engine = engine
        self.config = config
        self.lockout = lockout.LockoutPolicy.of(config)

    # -- users ---------------------------------------------------------------------------
    def add_user(
        self,
        username: str,
        role: str,
        password: str | None,
        *,
        display_name: str = "",
        person_name: str = "",
        groups: list[str] | None = None,
    ) -> int:
        validate_username(username)
        try:
            Role(role)
        except ValueError:
            raise AccountError(f"unknown role {role!r}; roles: {', '.join(r.value for r in Role)}") from None
        hashed = _HASHER.hash(validate_password(password)) if password is not None else None
        with write_transaction(self.engine) as conn:
            if conn.execute(select(users_t.c.id).where(users_t.c.username == username)).first():
                raise AccountError(f"user {username!r} already exists")
            result = conn.execute(
                insert(users_t).values(
                    username=username,
                    role=role,
                    password_hash=hashed,
                    display_name=display_name,
                    person_name=person_name,
                    groups=",".join(g.strip() for g in groups or [] if g.strip()),
                )
            )
            return int(result.inserted_primary_key[0])  # type: ignore[index]

    def set_password(self, username: str, password: str, *, keep_api_keys: bool = False) -> int:
        """Set a user's password (an administrator's act) and revoke their sessions, tokens
        and (unless ``keep_api_keys``) API keys: credentials minted with the old password,
        perhaps stolen, end with it. The number of credentials revoked."""
        hashed = _HASHER.hash(validate_password(password))
        with write_transaction(self.engine) as conn:
            user_id = self._user_id(conn, username)
            conn.execute(
                update(users_t)
                .where(users_t.c.id == user_id)
                .values(password_hash=hashed, failed_logins=0, locked_until=None, updated_at=func.now())
            )
            return self._revoke_all(conn, user_id, keep_api_keys)

    def set_disabled(self, username: str, disabled: bool, *, keep_api_keys: bool = False) -> int:
        """Disable (or enable) a user. Disabling revokes their sessions, tokens and (unless
        ``keep_api_keys``) API keys, so enabling the account again brings none of them back.
        The number of credentials revoked."""
        with write_transaction(self.engine) as conn:
            user_id = self._user_id(conn, username)
            conn.execute(
                update(users_t)
                .where(users_t.c.id == user_id)
                .values(disabled=disabled, updated_at=func.now())
            )
            return self._revoke_all(conn, user_id, keep_api_keys) if disabled else 0

    @staticmethod
    def _user_id(conn: Any, username: str) -> int:
        found = conn.execute(select(users_t.c.id).where(users_t.c.username == username)).scalar()
        if found is None:
            raise AccountError(f"no user {username!r}")
        return int(found)

    @staticmethod
    def _revoke_all(conn: Any, user_id: int, keep_api_keys: bool) -> int:
        stmt = update(credentials_t).where(
            credentials_t.c.user_id == user_id, credentials_t.c.revoked_at.is_(None)
        )
        if keep_api_keys:
            stmt = stmt.where(credentials_t.c.kind != "apikey")
        return int(conn.execute(stmt.values(revoked_at=func.now())).rowcount)

    def list_users(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(users_t).order_by(users_t.c.username)).mappings().all()
        return [
            {
                k: row[k]
                for k in (
                    "id",
                    "username",
                    "display_name",
                    "person_name",
                    "role",
                    "groups",
                    "disabled",
                    "locked_until",
                    "last_login_at",
                    "created_at",
                )
            }
            for row in rows
        ]

    def ensure_initial_admin(self, data_dir: Path) -> str | None:
        """First start: create 'admin' with a random password; return it (None if users exist)."""
        with self.engine.connect() as conn:
            if conn.execute(select(users_t.c.id).limit(1)).first() is not None:
                return None
        password = generate_password()
        try:
            self.add_user("admin", Role.ADMINISTRATOR.value, password, display_name="Administrator")
        except AccountError:
            return None  # another process created it first
        path = data_dir / INITIAL_PASSWORD_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"user: admin\npassword: {password}\n")
        return password

    # -- authentication ------------------------------------------------------------------
    def check_password(self, username: str, password: str, client_address: str) -> Principal:
        """The user, if the password is right and the account usable; AuthError otherwise.

        Unknown names, wrong passwords and locked-out attempts answer the same message,
        after the same argon2 check (a dummy hash for unknown names); the counting and
        the lockout decision (:mod:`hilum.auth.lockout`) come after the check, in SQL
        statements that are atomic under parallel guesses."""
        with self.engine.connect() as conn:
            row = conn.execute(select(users_t).where(users_t.c.username == username)).mappings().first()
        stored = row["password_hash"] if row is not None else None
        right = _verify(stored or _dummy_hash(), password) and stored is not None
        key, address, now = lockout.account_key(username), (client_address or "unknown")[:64], _now()
        first_failure = False
        with write_transaction(self.engine) as conn:
            if right and row is not None:
                refused = lockout.right_password(conn, self.lockout, key, address, row["id"], now)
            else:
                user_id = row["id"] if row is not None else None
                refused, first_failure = lockout.wrong_password(
                    conn, self.lockout, key, address, user_id, now
                )
        if first_failure:
            lockout.forget_stale(self.engine, self.lockout, now)
        if refused is not None:
            raise AuthError(GENERIC_REFUSAL, reason=refused)
        assert row is not None and stored is not None
        if row["disabled"]:
            raise AuthError("this account is disabled")
        if _HASHER.check_needs_rehash(stored):
            with self.engine.begin() as conn:
                conn.execute(
                    update(users_t)
                    .where(users_t.c.id == row["id"])
                    .values(password_hash=_HASHER.hash(password))
                )
        return self.with_group_rules(_principal(row, via="password"))

    def with_group_rules(self, principal: Principal) -> Principal:
        """``principal`` with the study conditions of the group rules naming its groups."""
        rules = [r for r in getattr(self.config, "group_rules", ()) if r.group in principal.groups]
        if not rules:
            return principal
        from hilum.index.search import study_rule_condition

        return replace(principal, study_rules=tuple(study_rule_condition(r.match) for r in rules))

    def issue(
        self, principal: Principal, kind: str, *, ip: str = "", name: str = "", hours: float | None = None
    ) -> tuple[str, str | None, int]:
        """A new credential: (token, csrf token for sessions, credential id)."""
        token = new_token({"session": "hls", "token": "hlt", "apikey": "hlk"}[kind])
        csrf = secrets.token_urlsafe(24) if kind == "session" else None
        expires = _now() + timedelta(hours=hours) if hours else None
        with self.engine.begin() as conn:
            result = conn.execute(
                insert(credentials_t).values(
                    user_id=principal.user_id,
                    kind=kind,
                    token_hash=token_digest(token),
                    name=name,
                    csrf_hash=token_digest(csrf) if csrf else None,
                    client_ip=ip,
                    expires_at=expires,
                )
            )
            return token, csrf, int(result.inserted_primary_key[0])  # type: ignore[index]

    def resolve(self, token: str) -> tuple[Principal, str | None]:
        """The principal of a token and (for sessions) its CSRF digest; AuthError if not valid."""
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    select(
                        credentials_t,
                        users_t.c.username,
                        users_t.c.role,
                        users_t.c.person_name,
                        users_t.c.groups,
                        users_t.c.disabled,
                        users_t.c.id.label("uid"),
                    )
                    .join(users_t, users_t.c.id == credentials_t.c.user_id)
                    .where(credentials_t.c.token_hash == token_digest(token))
                )
                .mappings()
                .first()
            )
        if row is None or row["revoked_at"] is not None:
            raise AuthError("invalid or revoked credentials")
        expires = _aware(row["expires_at"])
        if expires is not None and expires <= _now():
            raise AuthError("the session or token has expired")
        if row["disabled"]:
            raise AuthError("this account is disabled")
        principal = Principal(
            user_id=row["uid"],
            username=row["username"],
            role=row["role"],
            permissions=permissions_of(row["role"]),
            person_name_key=person_name_key(row["person_name"] or ""),
            groups=tuple(g for g in (row["groups"] or "").split(",") if g),
            credential_id=row["id"],
            via=row["kind"],
        )
        return self.with_group_rules(principal), row["csrf_hash"]

    def revoke(self, credential_id: int, user_id: int | None = None) -> bool:
        stmt = update(credentials_t).where(
            credentials_t.c.id == credential_id, credentials_t.c.revoked_at.is_(None)
        )
        if user_id is not None:
            stmt = stmt.where(credentials_t.c.user_id == user_id)
        with self.engine.begin() as conn:
            return conn.execute(stmt.values(revoked_at=func.now())).rowcount > 0

    def api_keys(self, user_id: int) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = (
                conn.execute(
                    select(
                        credentials_t.c.id,
                        credentials_t.c.name,
                        credentials_t.c.created_at,
                        credentials_t.c.revoked_at,
                    )
                    .where(credentials_t.c.user_id == user_id, credentials_t.c.kind == "apikey")
                    .order_by(credentials_t.c.id)
                )
                .mappings()
                .all()
            )
        return [dict(r) for r in rows]

    def user_id(self, username: str) -> int:
        with self.engine.connect() as conn:
            return self._user_id(conn, username)

    def reauthenticate(self, principal: Principal, password: str | None, client_address: str) -> None:
        """Check that the caller is there now, before minting a long-lived credential: the
        current password (counted like a sign-in), or for accounts without one (single
        sign-on) a session opened within ``auth.reauth_minutes``. AuthError otherwise."""
        with self.engine.connect() as conn:
            user = conn.execute(
                select(users_t.c.username, users_t.c.password_hash).where(users_t.c.id == principal.user_id)
            ).first()
            opened = conn.execute(
                select(credentials_t.c.created_at, credentials_t.c.kind)
                .where(credentials_t.c.id == principal.credential_id)
            ).first()
        if user is None:
            raise AuthError("invalid or revoked credentials")
        if user.password_hash is not None:
            if not password:
                raise AuthError("give your current password (field 'password') to create an API key")
            self.check_password(user.username, password, client_address)
            return
        fresh = timedelta(minutes=getattr(self.config, "reauth_minutes", 5.0))
        created = _aware(opened.created_at) if opened is not None else None
        if opened is None or opened.kind != "session" or created is None or created < _now() - fresh:
            raise AuthError("sign on again (single sign-on) and create the API key within a few minutes")


def _verify(hashed: str, password: str) -> bool:
    try:
        return _HASHER.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False


def _principal(row: Any, via: str) -> Principal:
    return Principal(
        user_id=row["id"],
        username=row["username"],
        role=row["role"],
        permissions=permissions_of(row["role"]),
        person_name_key=person_name_key(row["person_name"] or ""),
        groups=tuple(g for g in (row["groups"] or "").split(",") if g),
        via=via,
    )


def _principal_for_user(engine: Engine, username: str) -> Principal:
    with engine.connect() as conn:
        row = conn.execute(select(users_t).where(users_t.c.username == username)).mappings().first()
    if row is None:
        raise AccountError(f"no user {username!r}")
    return _principal(row, via="cli")
