"""Tables of share links and the studies each one opens.

The token is never stored, only its SHA-256 digest; the optional PIN is an
argon2id hash. ``share_link_studies`` lists what the link's recipient sees:
the shared study itself, or (de-identified shares) the de-identified copy
made for the link (``is_copy``), with the original it was made from.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint, func
from sqlalchemy.orm import Mapped, mapped_column

from hilum.index.models import Base, BigId, table_of


class ShareLink(Base):
    __tablename__ = "share_links"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[str] = mapped_column(String(64), index=True)
    note: Mapped[str] = mapped_column(Text, default="")
    deidentified: Mapped[bool] = mapped_column(Boolean, default=False)
    allow_download: Mapped[bool] = mapped_column(Boolean, default=False)
    pin_hash: Mapped[str | None] = mapped_column(Text, nullable=True)
    failed_pins: Mapped[int] = mapped_column(Integer, default=0)
    locked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # ready | preparing (de-identified copies being made) | failed
    state: Mapped[str] = mapped_column(String(16), default="ready")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The job making the de-identified copies (de-identified shares).
    job_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    open_count: Mapped[int] = mapped_column(Integer, default=0)
    last_opened_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ShareLinkStudy(Base):
    __tablename__ = "share_link_studies"
    __table_args__ = (UniqueConstraint("share_id", "study_instance_uid"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    share_id: Mapped[int] = mapped_column(ForeignKey("share_links.id", ondelete="CASCADE"), index=True)
    # What the recipient sees (the original, or its de-identified copy) ...
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    # ... and the study the sharer chose.
    source_study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    is_copy: Mapped[bool] = mapped_column(Boolean, default=False)


class ShareSession(Base):
    """A browser session (cookie + CSRF token) or a bearer token opened from a share link."""

    __tablename__ = "share_sessions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    share_id: Mapped[int] = mapped_column(ForeignKey("share_links.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # session | token
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    client_ip: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


share_links_t = table_of(ShareLink)
share_link_studies_t = table_of(ShareLinkStudy)
share_sessions_t = table_of(ShareSession)
