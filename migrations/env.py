"""Alembic environment for Flask-Migrate: the app's engine and metadata, batch mode on SQLite."""

import logging
import warnings

from alembic import context
from flask import current_app
from sqlalchemy.exc import SAWarning

# Batch mode on SQLite reflects a table's foreign-key targets too, tasks among them: SQLAlchemy
# cannot reflect tasks' expression indexes (due-date order) and says so; batch mode never copies
# tasks through that reflection, so the indexes stay as they are.
warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based index", SAWarning)

logger = logging.getLogger("alembic.env")
config = context.config
migrate = current_app.extensions["migrate"]


def run_migrations_offline():
    """Emit SQL for the app's database URL instead of running it."""
    context.configure(url=migrate.db.engine.url, target_metadata=migrate.db.metadata, literal_binds=True, **migrate.configure_args)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    def skip_empty_revisions(_context, _revision, directives):
        if getattr(config.cmd_opts, "autogenerate", False) and directives[0].upgrade_ops.is_empty():
            directives[:] = []
            logger.info("No changes in schema detected.")

    args = {"process_revision_directives": skip_empty_revisions, **migrate.configure_args}
    with migrate.db.engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # Batch mode copies and drops tables; with foreign keys on, dropping a parent table
            # would cascade-delete its children's rows. The pragma is a no-op inside a
            # transaction, and SQLAlchemy begins one with its first statement: so it goes
            # straight to the driver, which begins nothing by itself here.
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql("SET statement_timeout = 0")  # DATABASE_TIMEOUT is for requests, not migrations
            connection.commit()  # a session setting: the migrations then begin their own transaction
        context.configure(connection=connection, target_metadata=migrate.db.metadata, **args)
        with context.begin_transaction():
            context.run_migrations()
        if sqlite:
            connection.commit()
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=ON")


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
