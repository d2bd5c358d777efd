"""share links: time-limited, revocable links that open a few studies without an account,
the studies each opens, and the sessions opened from them

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "share_links",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("deidentified", sa.Boolean(), nullable=False),
        sa.Column("allow_download", sa.Boolean(), nullable=False),
        sa.Column("pin_hash", sa.Text(), nullable=True),
        sa.Column("failed_pins", sa.Integer(), nullable=False),
        sa.Column("locked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("job_id", BigId, nullable=True),
        sa.Column("open_count", sa.Integer(), nullable=False),
        sa.Column("last_opened_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_by", sa.String(64), nullable=True),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index("ix_share_links_created_by", "share_links", ["created_by"])
    op.create_table(
        "share_link_studies",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("share_id", BigId, sa.ForeignKey("share_links.id", ondelete="CASCADE"), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("source_study_instance_uid", sa.String(64), nullable=False),
        sa.Column("is_copy", sa.Boolean(), nullable=False),
        sa.UniqueConstraint("share_id", "study_instance_uid"),
    )
    op.create_index("ix_share_link_studies_share_id", "share_link_studies", ["share_id"])
    op.create_index("ix_share_link_studies_study_instance_uid", "share_link_studies", ["study_instance_uid"])
    op.create_index(
        "ix_share_link_studies_source_study_instance_uid", "share_link_studies", ["source_study_instance_uid"]
    )
    op.create_table(
        "share_sessions",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("share_id", BigId, sa.ForeignKey("share_links.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("csrf_hash", sa.String(64), nullable=True),
        sa.Column("client_ip", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index("ix_share_sessions_share_id", "share_sessions", ["share_id"])


def downgrade() -> None:
    op.drop_table("share_sessions")
    op.drop_table("share_link_studies")
    op.drop_table("share_links")
