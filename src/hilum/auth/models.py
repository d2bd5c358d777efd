"""Tables of users, their credentials and the grants that open studies to them.

Secrets are never stored: passwords as argon2id hashes, tokens (sessions,
bearer tokens, API keys) as SHA-256 digests of high-entropy random strings.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint, func
from sqlalchemy.orm import Mapped, mapped_column

from hilum.index.models import Base, BigId, table_of


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(Text, default="")
    # DICOM person name (e.g. "HOUSE^GREGORY"): a referring physician sees the studies
    # whose ReferringPhysicianName matches it.
    person_name: Mapped[str] = mapped_column(Text, default="")
    role: Mapped[str] = mapped_column(String(32))
    # Comma-separated group names: a group opens the studies labelled with its name.
    groups: Mapped[str] = mapped_column(Text, default="")
    password_hash: Mapped[str | None] = mapped_column(Text, nullable=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # Wrong passwords since the last successful sign-in, from addresses not locked out, and
    # (from auth.account_backoff_failures on) the next moment a new address may try.
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Credential(Base):
    """A session (browser cookie), a bearer token, or a long-lived API key."""

    __tablename__ = "credentials"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # session | token | apikey
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(Text, default="")
    # Sessions only: the CSRF token the web app echoes in X-CSRF-Token (hashed).
    csrf_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    client_ip: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class LoginAttempts(Base):
    """Password checks for one account name from one client address (hilum.auth.lockout).

    Names that are no account are counted too (answers must not tell them apart);
    rows of addresses that only failed are deleted once forgotten."""

    __tablename__ = "login_attempts"
    __table_args__ = (UniqueConstraint("username", "client_address"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # The name as typed (or "#" + its SHA-256 when no account could have it).
    username: Mapped[str] = mapped_column(String(65))
    client_address: Mapped[str] = mapped_column(String(64))
    # Wrong passwords in a row (still counted while locked).
    failures: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_failure_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True, index=True
    )
    # The account's last successful sign-in from this address: it is not slowed by the back-off.
    last_success_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class StudyGrant(Base):
    """An explicit opening of one study to a user or to a group."""

    __tablename__ = "study_grants"
    __table_args__ = (UniqueConstraint("study_instance_uid", "principal_kind", "principal"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    principal_kind: Mapped[str] = mapped_column(String(8))  # user | group
    principal: Mapped[str] = mapped_column(String(64), index=True)
    created_by: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class OidcIdentity(Base):
    """A single sign-on account (issuer + subject) and the Hilum user it signs in as.

    Users are found by this pair, never by name alone: an IdP account whose
    user name changes still reaches its own user, and a new IdP account that
    takes over a name cannot reach the old one's.
    """

    __tablename__ = "oidc_identities"
    __table_args__ = (UniqueConstraint("issuer", "subject"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    issuer: Mapped[str] = mapped_column(String(255))
    subject: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class OidcLogin(Base):
    """A single sign-on in progress, between the redirect to the IdP and its callback.

    Kept in the index (any HTTP process may receive the callback) and deleted
    when used, so a state can be used once. The browser holds a random binding
    token in a cookie; only its SHA-256 digest is stored.
    """

    __tablename__ = "oidc_logins"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    binding_hash: Mapped[str] = mapped_column(String(64), unique=True)
    state: Mapped[str] = mapped_column(String(128))
    nonce: Mapped[str] = mapped_column(String(128))
    code_verifier: Mapped[str] = mapped_column(String(128))
    redirect_uri: Mapped[str] = mapped_column(Text)
    next_path: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


users_t = table_of(User)
credentials_t = table_of(Credential)
study_grants_t = table_of(StudyGrant)
oidc_identities_t = table_of(OidcIdentity)
oidc_logins_t = table_of(OidcLogin)
login_attempts_t = table_of(LoginAttempts)
