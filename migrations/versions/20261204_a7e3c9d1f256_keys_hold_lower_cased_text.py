"""keys hold lower-cased text of any length

Lower-casing can lengthen text: "İ" (U+0130) becomes "i" and a combining dot. A title of 200
such characters has a 400-character title key, and a tag of 50 a 100-character tag row: both
overflowed their VARCHAR columns on PostgreSQL (a 500). Both become text there. SQLite enforces
no VARCHAR length, and changing a declared type would copy the tasks table (dropping its
expression indexes): its columns stay as they are, as the models declare for SQLite.

Revision ID: a7e3c9d1f256
Revises: d81f3c5a9e42
Create Date: 2026-12-04 02:00:00.000000

"""

import sqlalchemy as sa
from alembic import op

revision = "a7e3c9d1f256"
down_revision = "d81f3c5a9e42"
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("tasks", "title_key", type_=sa.Text(collation="C"), existing_nullable=False)
        op.alter_column("task_tags", "tag", type_=sa.Text(), existing_nullable=False)


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("task_tags", "tag", type_=sa.String(length=50), existing_nullable=False)
        op.alter_column("tasks", "title_key", type_=sa.String(length=200, collation="C"), existing_nullable=False)
