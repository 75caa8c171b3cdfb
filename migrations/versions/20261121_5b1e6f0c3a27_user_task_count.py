"""user task count: each user's number of tasks, for unfiltered listings' totals

Revision ID: 5b1e6f0c3a27
Revises: e7dcfebc8909
Create Date: 2026-11-21 15:30:00.000000

"""

import sqlalchemy as sa
from alembic import op

revision = "5b1e6f0c3a27"
down_revision = "e7dcfebc8909"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(sa.Column("task_count", sa.Integer(), server_default="0", nullable=False))
    # Existing users keep their tasks: count them once, in this migration's transaction.
    op.execute("UPDATE users SET task_count = (SELECT count(*) FROM tasks WHERE tasks.user_id = users.id)")


def downgrade():
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_column("task_count")
