"""remote AEs: per-AE permissions and TLS

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing entries keep every permission: they worked that way before.
    with op.batch_alter_table("remote_aes", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "permissions", sa.Text(), nullable=False, server_default="store,find,move,get"
            )
        )
        batch_op.add_column(
            sa.Column("tls", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("remote_aes", schema=None) as batch_op:
        batch_op.drop_column("tls")
        batch_op.drop_column("permissions")
