"""issuer accounts: users gain issuer and subject; email is unique among local accounts

An account made by a token of the frontend's identity provider (AUTH_ISSUER) is known by its
issuer and subject, has no password, and may have no email or share a local account's email:
email uniqueness holds among local accounts (a partial unique index), and (issuer, subject) is
unique. SQLite rebuilds the table (batch mode) to drop the email column's own UNIQUE.

Revision ID: 8c41d7e2b359
Revises: 5e2b8c7a1d94
Create Date: 2026-12-04 19:00:00.000000

"""

import sqlalchemy as sa
from alembic import op

revision = "8c41d7e2b359"
down_revision = "5e2b8c7a1d94"
branch_labels = None
depends_on = None

LOCAL = sa.text("issuer IS NULL")
# The email's UNIQUE was made without a name: this is the name batch mode gives it on SQLite.
NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def rebuilt_users(sqlite):
    """Batch mode on the users table: on SQLite a copy, which keeps AUTOINCREMENT."""
    if sqlite:
        return op.batch_alter_table("users", naming_convention=NAMES, recreate="always", table_kwargs={"sqlite_autoincrement": True})
    return op.batch_alter_table("users", recreate="never")


def upgrade():
    sqlite = op.get_bind().dialect.name == "sqlite"
    with rebuilt_users(sqlite) as batch:
        batch.add_column(sa.Column("issuer", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("subject", sa.String(length=255), nullable=True))
        batch.alter_column("email", existing_type=sa.String(length=254), nullable=True)
        batch.alter_column("password_hash", existing_type=sa.String(length=255), nullable=True)
        batch.drop_constraint("uq_users_email" if sqlite else "users_email_key", type_="unique")
    op.create_index("uq_users_local_email", "users", ["email"], unique=True, sqlite_where=LOCAL, postgresql_where=LOCAL)
    op.create_index("uq_users_issuer_subject", "users", ["issuer", "subject"], unique=True)


def downgrade():
    op.execute("DELETE FROM users WHERE issuer IS NOT NULL")  # they cannot exist without these columns
    op.drop_index("uq_users_issuer_subject", table_name="users")
    op.drop_index("uq_users_local_email", table_name="users")
    sqlite = op.get_bind().dialect.name == "sqlite"
    with rebuilt_users(sqlite) as batch:
        batch.create_unique_constraint("uq_users_email" if sqlite else "users_email_key", ["email"])
        batch.alter_column("password_hash", existing_type=sa.String(length=255), nullable=False)
        batch.alter_column("email", existing_type=sa.String(length=254), nullable=False)
        batch.drop_column("subject")
        batch.drop_column("issuer")
