"""users never reuse ids: AUTOINCREMENT on SQLite, as tasks have

SQLite's plain INTEGER PRIMARY KEY hands a deleted account's id to the next signup; anything
outside the service keyed on a user id would then follow it to a stranger. PostgreSQL's
sequence never reuses one, so only SQLite's table is rebuilt (batch mode copies every row).

Revision ID: 3f6a2d1c8b90
Revises: 9d41c2b7e5a8
Create Date: 2026-12-02 14:30:00.000000

"""

from alembic import op

revision = "3f6a2d1c8b90"
down_revision = "9d41c2b7e5a8"
branch_labels = None
depends_on = None


def rebuild_users(autoincrement):
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("users", recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}):
            pass


def upgrade():
    rebuild_users(True)


def downgrade():
    rebuild_users(False)
