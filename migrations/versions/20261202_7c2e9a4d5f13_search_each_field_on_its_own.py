"""search each field on its own: the search key holds the description only

The search key held title and description joined by U+001F, so a search for that character, or
one spanning the end of the title and the start of the description, matched across them. Now
the title's key (title_key) and the description's (this column, search_key, which the model
calls description_key) are searched each on its own. Keys are lower-cased in Python, as the app
writes them (SQL's lower() differs outside ASCII on SQLite). Data only: no table is copied.

Revision ID: 7c2e9a4d5f13
Revises: 3f6a2d1c8b90
Create Date: 2026-12-02 14:40:00.000000

"""

import sqlalchemy as sa
from alembic import op

revision = "7c2e9a4d5f13"
down_revision = "3f6a2d1c8b90"
branch_labels = None
depends_on = None

tasks = sa.table("tasks", sa.column("id"), sa.column("title"), sa.column("description"), sa.column("search_key"))


def rewrite_search_keys(key):
    connection = op.get_bind()
    rows = connection.execute(sa.select(tasks.c.id, tasks.c.title, tasks.c.description)).all()
    statement = tasks.update().where(tasks.c.id == sa.bindparam("task_id")).values(search_key=sa.bindparam("key"))
    for start in range(0, len(rows), 1000):
        connection.execute(statement, [{"task_id": row.id, "key": key(row)} for row in rows[start : start + 1000]])


def upgrade():
    rewrite_search_keys(lambda row: row.description.lower())


def downgrade():
    rewrite_search_keys(lambda row: f"{row.title}\x1f{row.description}".lower())
