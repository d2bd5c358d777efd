"""login_attempts: password checks per (account name, client address)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 03:00:00

Lockout moves from the account to the pair (account name, client address), so
that one address cannot lock a user out for everyone (hilum.auth.lockout);
``users.failed_logins`` and ``users.locked_until`` now hold the account-wide
back-off. Existing account locks are lifted.
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "login_attempts",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(65), nullable=False),
        sa.Column("client_address", sa.String(64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_failure_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("username", "client_address"),
    )
    op.create_index("ix_login_attempts_last_failure_at", "login_attempts", ["last_failure_at"])
    op.execute("UPDATE users SET failed_logins = 0, locked_until = NULL")


def downgrade() -> None:
    op.drop_table("login_attempts")
