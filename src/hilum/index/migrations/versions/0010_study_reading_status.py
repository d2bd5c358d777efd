"""studies: reading status (unread, in progress, read), who set it and when

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain string, checked in code (hilum.index.reading): later statuses (preliminary,
    # final) need no schema change. Existing studies start unread. Adding a NOT NULL column
    # with a constant default rewrites no rows (PostgreSQL 11+, SQLite ALTER TABLE ADD COLUMN).
    op.add_column(
        "studies", sa.Column("reading_status", sa.String(16), nullable=False, server_default="unread")
    )
    op.add_column("studies", sa.Column("reading_user", sa.Text(), nullable=True))
    op.add_column("studies", sa.Column("reading_changed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_studies_reading_status_date", "studies", ["reading_status", "study_date", "study_time"]
    )


def downgrade() -> None:
    op.drop_index("ix_studies_reading_status_date", table_name="studies")
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_column("reading_changed_at")
        batch_op.drop_column("reading_user")
        batch_op.drop_column("reading_status")
