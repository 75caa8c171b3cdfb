"""trash, incremental sync and Idempotency-Key

Tasks gain deleted_at (set while in the trash) and change_seq (the owner's change that wrote the
task last); users gain change_seq (their latest change). Tombstones keep tasks deleted for good
for sync; idempotency_keys keep the first answer to a request with an Idempotency-Key. Existing
tasks are live, at change 0. Columns are added and dropped in place (ALTER TABLE): copying the
tasks table would make SQLite drop the due-date expression indexes. The listing indexes are
made again as partial indexes of live tasks (WHERE deleted_at IS NULL), so that rows a listing
steps over are read from the index alone.

Revision ID: b4e8d2a61f07
Revises: 7c2e9a4d5f13
Create Date: 2026-12-02 19:00:00.000000

"""

import sqlalchemy as sa
from alembic import op

revision = "b4e8d2a61f07"
down_revision = "7c2e9a4d5f13"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
LISTING_INDEXES = {  # as migration e7dcfebc8909 made them
    "ix_tasks_user_created": ["user_id", "created_at", "id"],
    "ix_tasks_user_updated": ["user_id", "updated_at", "id"],
    "ix_tasks_user_priority": ["user_id", "priority", "id"],
    "ix_tasks_user_title": ["user_id", "title_key", "id"],
    "ix_tasks_user_due": ["user_id", sa.text("(due_date IS NULL)"), "due_date", "id"],
    "ix_tasks_user_due_desc": ["user_id", sa.text("(due_date IS NULL)"), sa.text("due_date DESC"), sa.text("id DESC")],
}
LIVE_ONLY = {"sqlite_where": sa.text("deleted_at IS NULL"), "postgresql_where": sa.text("deleted_at IS NULL")}


def make_listing_indexes(**where):
    for name, columns in LISTING_INDEXES.items():
        op.drop_index(name, table_name="tasks")
        op.create_index(name, "tasks", columns, **where)


def upgrade():
    op.add_column("users", sa.Column("change_seq", sa.BigInteger(), server_default="0", nullable=False))
    op.add_column("tasks", sa.Column("deleted_at", sa.DateTime(), nullable=True))
    op.add_column("tasks", sa.Column("change_seq", sa.BigInteger(), server_default="0", nullable=False))
    op.create_index("ix_tasks_user_changes", "tasks", ["user_id", "change_seq", "id"])
    op.create_index("ix_tasks_user_deleted", "tasks", ["user_id", "deleted_at", "id"])
    make_listing_indexes(**LIVE_ONLY)
    op.create_table(
        "task_tombstones",
        sa.Column("task_id", Id, autoincrement=False, nullable=False),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("change_seq", sa.BigInteger(), nullable=False),
        sa.Column("deleted_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("task_id"),
    )
    op.create_index("ix_task_tombstones_deleted_at", "task_tombstones", ["deleted_at"])
    op.create_index("ix_task_tombstones_user_changes", "task_tombstones", ["user_id", "change_seq", "task_id"])
    op.create_table(
        "idempotency_keys",
        sa.Column("user_id", Id, nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("status", sa.SmallInteger(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("location", sa.String(length=255), nullable=True),
        sa.Column("etag", sa.String(length=100), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "key"),
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])


def downgrade():
    # Tasks in the trash were deleted: downgraded, they are gone, as a delete was before.
    op.execute("DELETE FROM tasks WHERE deleted_at IS NOT NULL")
    make_listing_indexes()
    op.drop_table("idempotency_keys")
    op.drop_table("task_tombstones")
    op.drop_index("ix_tasks_user_deleted", "tasks")
    op.drop_index("ix_tasks_user_changes", "tasks")
    op.drop_column("tasks", "change_seq")
    op.drop_column("tasks", "deleted_at")
    op.drop_column("users", "change_seq")
