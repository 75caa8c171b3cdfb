"""recurring tasks

Tasks gain recurrence (an RFC 5545 RRULE value, or null) and recurred (it made its next
occurrence); an Idempotency-Key's answer keeps its Link header too. Columns are added in place
(ALTER TABLE), as in b4e8d2a61f07: copying the tasks table would make SQLite drop the due-date
expression indexes.

Revision ID: d81f3c5a9e42
Revises: b4e8d2a61f07
Create Date: 2026-12-03 10:00:00.000000

"""

import sqlalchemy as sa
from alembic import op

revision = "d81f3c5a9e42"
down_revision = "b4e8d2a61f07"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("tasks", sa.Column("recurrence", sa.String(length=500), nullable=True))
    op.add_column("tasks", sa.Column("recurred", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.add_column("idempotency_keys", sa.Column("link", sa.String(length=255), nullable=True))


def downgrade():
    op.drop_column("idempotency_keys", "link")
    op.drop_column("tasks", "recurred")
    op.drop_column("tasks", "recurrence")
