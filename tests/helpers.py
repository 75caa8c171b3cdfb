"""Helpers shared by the test modules (fixtures live in conftest.py)."""

import base64
import contextlib
import json
import os
import sqlite3
import threading
import time

from psycopg.pq import TransactionStatus
from sqlalchemy import create_engine, text

from todo_api import database_uri, db

PASSWORD = "correct horse battery"
POSTGRES = os.environ.get("TEST_DATABASE_URL", "").startswith("postgres")  # the suite runs on PostgreSQL
# Every field of a task answer (the Task schema's required fields).
TASK_KEYS = {
    "id",
    "title",
    "description",
    "completed",
    "completed_at",
    "priority",
    "due_date",
    "tags",
    "created_at",
    "updated_at",
    "recurrence",
}


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def pagination(response):
    """A listing answer's X-Pagination header, decoded."""
    return json.loads(response.headers["X-Pagination"])


def b64(text):
    """Text as base64url without padding: what a cursor looks like, but not one the service made."""
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


LOCK_WAITS = text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()")


@contextlib.contextmanager
def another_worker():
    """A connection of its own to the PostgreSQL test database, as another worker's: what it
    locks, the app's requests wait for until the test commits or rolls back."""
    engine = create_engine(database_uri(os.environ["TEST_DATABASE_URL"]))
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


@contextlib.contextmanager
def request_held_up(call):
    """Start `call` (a request) in a thread and return once it waits on a lock someone else holds
    on the PostgreSQL test database (or once it has answered); on leaving the block, wait for its
    answer, which is appended to the list yielded."""
    answers = []
    thread = threading.Thread(target=lambda: answers.append(call()))
    engine = create_engine(database_uri(os.environ["TEST_DATABASE_URL"]), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as watcher:
            thread.start()
            deadline = time.monotonic() + 30
            while thread.is_alive() and not watcher.execute(LOCK_WAITS).scalar() and time.monotonic() < deadline:
                time.sleep(0.01)
        yield answers
    finally:
        thread.join(timeout=30)
        engine.dispose()


@contextlib.contextmanager
def recorded_selects(app):
    """The SELECT statements the app's database runs inside the block."""
    selects = []

    def record(_conn, _cursor, statement, *_args):
        if statement.lstrip().upper().startswith("SELECT"):
            selects.append(statement)

    with app.app_context():
        db.event.listen(db.engine, "before_cursor_execute", record)
        try:
            yield selects
        finally:
            db.event.remove(db.engine, "before_cursor_execute", record)


def in_transaction(driver_connection):
    if isinstance(driver_connection, sqlite3.Connection):
        return driver_connection.in_transaction
    return driver_connection.info.transaction_status != TransactionStatus.IDLE


@contextlib.contextmanager
def database_round_trips(app):
    """Everything the app sends its database inside the block, one entry per round trip: each
    statement SQLAlchemy executes (before_cursor_execute), and what the drivers send on their own,
    seen through SQLAlchemy's transaction and pool events: psycopg's implicit BEGIN before the first
    statement outside autocommit, and a COMMIT or ROLLBACK wherever a transaction is open.
    (SQLite's BEGIN IMMEDIATE is a statement of the app's, counted as one.)"""
    sent = []

    def statement(conn, _cursor, text, parameters, _context, executemany):
        driver = conn.connection.driver_connection
        if not isinstance(driver, sqlite3.Connection) and not driver.autocommit and not in_transaction(driver):
            sent.append("BEGIN")
        # psycopg sends an executemany as one statement per row (SQLAlchemy's multi-row
        # "insertmanyvalues" batches arrive here as one statement with one set of parameters).
        rows = len(parameters) if executemany and isinstance(parameters, list) else 1
        sent.extend([text] * (1 if isinstance(driver, sqlite3.Connection) else rows))

    def ending(word):
        def listener(conn):
            if in_transaction(conn.connection.driver_connection):
                sent.append(word)

        return listener

    def reset(dbapi_connection, _record, _state):
        if in_transaction(getattr(dbapi_connection, "driver_connection", dbapi_connection)):
            sent.append("ROLLBACK")

    listeners = [("before_cursor_execute", statement), ("commit", ending("COMMIT")), ("rollback", ending("ROLLBACK"))]
    with app.app_context():
        engine = db.engine
    # Requests outside this app context: each request's own ends with it, and its session closes.
    for name, listener in listeners:
        db.event.listen(engine, name, listener)
    db.event.listen(engine.pool, "reset", reset)
    try:
        yield sent
    finally:
        for name, listener in listeners:
            db.event.remove(engine, name, listener)
        db.event.remove(engine.pool, "reset", reset)
