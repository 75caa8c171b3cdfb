"""listing indexes: one per listing order, each led by user_id

Revision ID: e7dcfebc8909
Revises: cc4d066f2606
Create Date: 2026-11-21 12:30:21.313278

"""

import sqlalchemy as sa
from alembic import op

revision = "e7dcfebc8909"
down_revision = "cc4d066f2606"
branch_labels = None
depends_on = None

PLAIN = {
    "ix_tasks_user_updated": ["user_id", "updated_at", "id"],
    "ix_tasks_user_priority": ["user_id", "priority", "id"],
    "ix_tasks_user_title": ["user_id", "title_key", "id"],
}
# Tasks without a due date sort last in both directions: (due_date IS NULL) leads the order.
EXPRESSIONS = {
    "ix_tasks_user_due": ["user_id", sa.text("(due_date IS NULL)"), "due_date", "id"],
    "ix_tasks_user_due_desc": ["user_id", sa.text("(due_date IS NULL)"), sa.text("due_date DESC"), sa.text("id DESC")],
}


def upgrade():
    for name, columns in {**PLAIN, **EXPRESSIONS}.items():
        op.create_index(name, "tasks", columns, unique=False)


def downgrade():
    for name in {**PLAIN, **EXPRESSIONS}:
        op.drop_index(name, table_name="tasks")
