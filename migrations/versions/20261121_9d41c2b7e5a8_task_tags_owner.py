"""task tags owner: each tag row carries its task's user_id, indexed with the tag

A tag filter then reads one user's tag rows, never every user's rows with that tag.

Revision ID: 9d41c2b7e5a8
Revises: 5b1e6f0c3a27
Create Date: 2026-11-21 17:20:00.000000

"""

import sqlalchemy as sa
from alembic import op

revision = "9d41c2b7e5a8"
down_revision = "5b1e6f0c3a27"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # as the models' ids


def upgrade():
    with op.batch_alter_table("task_tags") as batch_op:
        batch_op.add_column(sa.Column("user_id", ID, nullable=True))
    # Existing tag rows take their task's owner, in this migration's transaction.
    op.execute("UPDATE task_tags SET user_id = (SELECT tasks.user_id FROM tasks WHERE tasks.id = task_tags.task_id)")
    with op.batch_alter_table("task_tags") as batch_op:
        batch_op.alter_column("user_id", existing_type=ID, nullable=False)
        batch_op.create_index("ix_task_tags_user_tag", ["user_id", "tag", "task_id"], unique=False)


def downgrade():
    with op.batch_alter_table("task_tags") as batch_op:
        batch_op.drop_index("ix_task_tags_user_tag")
        batch_op.drop_column("user_id")
