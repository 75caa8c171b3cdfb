"""filtered counts read an index: live tasks by completed and by priority; the trash's index

A filtered listing counts its matches. Counting by completed reads a new index of live tasks,
and by priority the priority index, now with deleted_at (always null there) as its last column:
SQLite then counts from the index alone. The trash's index holds only tasks in the trash: a
tag's count takes theirs away, and creating a task no longer writes to it.

Revision ID: 5e2b8c7a1d94
Revises: a7e3c9d1f256
Create Date: 2026-12-04 18:00:00.000000

"""

import sqlalchemy as sa
from alembic import op

revision = "5e2b8c7a1d94"
down_revision = "a7e3c9d1f256"
branch_labels = None
depends_on = None

LIVE = sa.text("deleted_at IS NULL")
TRASHED = sa.text("deleted_at IS NOT NULL")


def upgrade():
    op.drop_index("ix_tasks_user_priority", table_name="tasks")
    op.create_index(
        "ix_tasks_user_priority", "tasks", ["user_id", "priority", "id", "deleted_at"], sqlite_where=LIVE, postgresql_where=LIVE
    )
    op.create_index("ix_tasks_user_completed", "tasks", ["user_id", "completed", "deleted_at"], sqlite_where=LIVE, postgresql_where=LIVE)
    op.drop_index("ix_tasks_user_deleted", table_name="tasks")
    op.create_index("ix_tasks_user_deleted", "tasks", ["user_id", "deleted_at", "id"], sqlite_where=TRASHED, postgresql_where=TRASHED)


def downgrade():
    op.drop_index("ix_tasks_user_deleted", table_name="tasks")
    op.create_index("ix_tasks_user_deleted", "tasks", ["user_id", "deleted_at", "id"])
    op.drop_index("ix_tasks_user_completed", table_name="tasks")
    op.drop_index("ix_tasks_user_priority", table_name="tasks")
    op.create_index("ix_tasks_user_priority", "tasks", ["user_id", "priority", "id"], sqlite_where=LIVE, postgresql_where=LIVE)
