"""Sign-ons in progress, and the Hilum user an IdP account signs in as.

A sign-on in progress (state, nonce, PKCE verifier, where to go next) is a row
of ``oidc_logins`` found by the digest of a random binding token the browser
holds in a cookie; the callback deletes it, so each state is used once, by the
browser that started it, within :data:`LOGIN_MINUTES`.

An IdP account is its (issuer, subject) pair in ``oidc_identities``. The first
sign-on of an account links it to a user:

- a user of that name exists and is linked to another IdP account: refused;
- a user of that name exists, unlinked (e.g. a local password account): linked
  only with ``link_existing``, refused otherwise;
- no such user: created (no password) with ``auto_provision``, refused otherwise.

Every sign-on then sets the user's role, groups, display name (and person name,
when a claim is configured for it) from the claims. Disabled users are refused.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from hilum.auth.models import oidc_identities_t, oidc_logins_t, users_t
from hilum.auth.oidc.claims import Profile
from hilum.auth.oidc.client import OidcError
from hilum.auth.oidc.settings import OidcSettings
from hilum.auth.service import Principal, _principal, token_digest
from hilum.domain.clock import utcnow as _now
from hilum.index.database import write_transaction

LOGIN_MINUTES = 10


@dataclass(frozen=True, slots=True)
class PendingLogin:
    state: str
    nonce: str
    code_verifier: str
    redirect_uri: str
    next_path: str


@dataclass(frozen=True, slots=True)
class SignedIn:
    principal: Principal
    created: bool = False  # the user was created by this sign-on
    linked: bool = False  # an existing user was linked to the IdP account by this sign-on
    changes: list[str] = field(default_factory=list)  # e.g. "role 'referring' -> 'radiologist'"
    roles_changed: bool = False  # its role or groups changed


def begin(engine: Engine, *, redirect_uri: str, next_path: str) -> tuple[str, PendingLogin]:
    """Record a new sign-on; returns the browser's binding token and the login's secrets."""
    binding = secrets.token_urlsafe(32)
    pending = PendingLogin(
        state=secrets.token_urlsafe(32),
        nonce=secrets.token_urlsafe(32),
        code_verifier=secrets.token_urlsafe(64),  # 86 characters (RFC 7636: 43-128)
        redirect_uri=redirect_uri,
        next_path=next_path,
    )
    with write_transaction(engine) as conn:
        conn.execute(delete(oidc_logins_t).where(oidc_logins_t.c.expires_at < _now()))
        conn.execute(
            insert(oidc_logins_t).values(
                binding_hash=token_digest(binding),
                state=pending.state,
                nonce=pending.nonce,
                code_verifier=pending.code_verifier,
                redirect_uri=redirect_uri,
                next_path=next_path,
                expires_at=_now() + timedelta(minutes=LOGIN_MINUTES),
            )
        )
    return binding, pending


def take(engine: Engine, binding: str) -> PendingLogin | None:
    """The sign-on this browser started, removed so it cannot be used again; None if
    there is none (never started, used already, or expired)."""
    digest = token_digest(binding)
    with write_transaction(engine) as conn:
        row = (
            conn.execute(select(oidc_logins_t).where(oidc_logins_t.c.binding_hash == digest))
            .mappings()
            .first()
        )
        if row is None:
            return None
        taken = conn.execute(delete(oidc_logins_t).where(oidc_logins_t.c.id == row["id"])).rowcount
    expires = row["expires_at"]
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    if taken != 1 or expires <= _now():
        return None
    return PendingLogin(
        state=row["state"],
        nonce=row["nonce"],
        code_verifier=row["code_verifier"],
        redirect_uri=row["redirect_uri"],
        next_path=row["next_path"],
    )


def sign_in(engine: Engine, config: OidcSettings, *, issuer: str, subject: str, profile: Profile) -> SignedIn:
    """The user of this IdP account, linked or created as the settings allow, updated
    from this sign-on's claims; OidcError (403) when the account may not sign in."""
    try:
        return _sign_in(engine, config, issuer, subject, profile)
    except IntegrityError:
        # Two processes linking or creating the same user at once: the other one won.
        return _sign_in(engine, config, issuer, subject, profile)


def _sign_in(engine: Engine, config: OidcSettings, issuer: str, subject: str, profile: Profile) -> SignedIn:
    with write_transaction(engine) as conn:
        user = conn.execute(
            select(users_t)
            .join(oidc_identities_t, oidc_identities_t.c.user_id == users_t.c.id)
            .where(oidc_identities_t.c.issuer == issuer, oidc_identities_t.c.subject == subject)
        ).mappings().first()
        created = linked = False
        if user is None:
            user, created = _link_or_create(conn, config, issuer, subject, profile)
            linked = not created
        if user["disabled"]:
            raise OidcError(f"the Hilum account {user['username']} is disabled", 403)
        values, changes = _updates(user, profile)
        conn.execute(update(users_t).where(users_t.c.id == user["id"]).values(**values))
        conn.execute(
            update(oidc_identities_t)
            .where(oidc_identities_t.c.issuer == issuer, oidc_identities_t.c.subject == subject)
            .values(last_login_at=func.now())
        )
        row = conn.execute(select(users_t).where(users_t.c.id == user["id"])).mappings().one()
    return SignedIn(
        principal=_principal(row, via="oidc"),
        created=created,
        linked=linked,
        changes=[] if created else changes,
        roles_changed=not created and any(c.split(" ", 1)[0] in ("role", "groups") for c in changes),
    )


def _link_or_create(
    conn: Connection, config: OidcSettings, issuer: str, subject: str, profile: Profile
) -> tuple[Any, bool]:
    """The user to link the IdP account to, and whether it was created now."""
    name = profile.username
    user = conn.execute(select(users_t).where(users_t.c.username == name)).mappings().first()
    created = user is None
    if user is not None:
        linked = conn.execute(
            select(oidc_identities_t.c.id).where(oidc_identities_t.c.user_id == user["id"]).limit(1)
        ).first()
        if linked is not None:
            raise OidcError(f"the Hilum user {name} belongs to another single sign-on account", 403)
        if not config.link_existing:
            raise OidcError(
                f"a local Hilum account named {name} exists and is not linked to single sign-on; "
                "an administrator can allow linking (auth.oidc.link_existing) or rename one of them",
                403,
            )
    else:
        if not config.auto_provision:
            raise OidcError(
                f"{name} has no Hilum account and accounts are not created on first sign-on "
                "(auth.oidc.auto_provision)",
                403,
            )
        conn.execute(
            insert(users_t).values(
                username=name,
                role=profile.role,
                password_hash=None,  # signs in through the IdP only
                display_name=profile.display_name,
                person_name=profile.person_name or "",
                groups=",".join(profile.groups),
            )
        )
        user = conn.execute(select(users_t).where(users_t.c.username == name)).mappings().one()
    conn.execute(insert(oidc_identities_t).values(user_id=user["id"], issuer=issuer, subject=subject))
    return user, created


def _updates(user: Any, profile: Profile) -> tuple[dict[str, Any], list[str]]:
    """The columns this sign-on changes, and a description of each change."""
    values: dict[str, Any] = {"last_login_at": func.now()}
    wanted: dict[str, str] = {
        "role": profile.role,
        "groups": ",".join(profile.groups),
        "display_name": profile.display_name,
    }
    if profile.person_name is not None:
        wanted["person_name"] = profile.person_name
    changes = []
    for column, value in wanted.items():
        old = user[column] or ""
        if old != value:
            values[column] = value
            changes.append(f"{column} {old!r} -> {value!r}")
    if changes:
        values["updated_at"] = func.now()
    return values, changes
