"""todo-api: a multi-user Todo REST API in one module.

People sign up, log in with JWTs and manage their own tasks. The API is described in README.md,
served as OpenAPI at /openapi.json and browsable at /docs. The sections, top to bottom:

- Config: defaults, the environment, the JWT key
- Extensions: the database session, JWT, rate limits; SQLite's set-up, pings and timeouts
- Models: users, sessions, tasks, tag rows, tombstones, Idempotency-Key answers
- What a task's writes imply: change numbers, counters, tag rows, tombstones
- Recurring tasks: RFC 5545 rules and their next date
- marshmallow, held to the contract: field types, and a schema dumped in one step
- Schemas: inputs, then outputs
- Errors: messages and bounded error bodies
- flask-smorest and webargs, held to the contract
- OpenAPI document: examples, headers, errors per operation
- Auth helpers and JWT callbacks
- Write transactions and Idempotency-Key: every write view's one commit
- Auth routes
- Task helpers: the rows read, ownership, ETags
- Listing: filters, sorts, keyset cursors, pages
- Task routes
- Incremental sync
- The trash
- Phase II paths: the task routes under the caller's user id
- Service routes: health, Swagger UI's assets
- Migrations, and `flask purge`
- Request ids and logs
- App factory: create_app() wiring it all
"""

from __future__ import annotations

import base64
import calendar
import fcntl
import functools
import hashlib
import hmac
import json
import logging
import math
import operator
import os
import re
import secrets
import socket
import sqlite3
import threading
import time
import unicodedata
import uuid
from datetime import UTC, date, datetime, timedelta
from functools import wraps
from http import HTTPStatus
from pathlib import Path
from urllib.parse import urlencode

import click
import flask_jwt_extended.config
import flask_smorest
import flask_sqlalchemy.session
import marshmallow as ma
from apispec import BasePlugin
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from dateutil import rrule as rrule_module
from dateutil.relativedelta import relativedelta
from flask import Flask, current_app, g, has_request_context, request, send_from_directory, url_for
from flask.cli import with_appcontext
from flask.views import MethodView
from flask_cors import CORS
from flask_jwt_extended import (
    JWTManager,
    create_access_token,
    create_refresh_token,
    current_user,
    get_jwt,
    get_jwt_header,
    jwt_required,
    verify_jwt_in_request,
)
from flask_jwt_extended.exceptions import FreshTokenRequired, JWTDecodeError
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_smorest import abort
from flask_smorest.pagination import PaginationMetadataSchema, PaginationParameters
from flask_sqlalchemy import SQLAlchemy
from jwt import PyJWK, PyJWKClient
from jwt import decode as decode_unverified
from jwt.exceptions import PyJWKClientError, PyJWKError, PyJWTError
from marshmallow import fields, validate
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    and_,
    bindparam,
    cast,
    delete,
    event,
    exists,
    false,
    func,
    insert,
    inspect,
    null,
    or_,
    select,
    text,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, validates
from sqlalchemy.orm.exc import StaleDataError
from swagger_ui_bundle import swagger_ui_path
from webargs.flaskparser import FlaskParser
from werkzeug.http import quote_etag
from werkzeug.middleware.proxy_fix import ProxyFix

# --- Config ---


class Config:
    """Defaults; the environment overrides them (README: Configuration)."""

    # A relative SQLite path is resolved inside the instance folder by Flask-SQLAlchemy.
    SQLALCHEMY_DATABASE_URI = "sqlite:///todo.db"
    # hide_parameters: SQL errors never carry values (a password hash, a token id) into logs.
    SQLALCHEMY_ENGINE_OPTIONS = {"hide_parameters": True}
    AUTO_MIGRATE = True  # apply migrations at start (one process at a time); see create_app
    DB_POOL_SIZE = 5  # connections kept open per process
    DB_MAX_OVERFLOW = 5  # extra connections under bursts
    DB_PING_AFTER_IDLE = 30.0  # seconds: a pooled connection idle this long is checked before reuse
    DATABASE_TIMEOUT = 5.0  # seconds: the longest a request waits on the database (see limit_database_waits)

    JWT_SECRET_KEY = None  # generated once into the instance folder when not configured
    # The service's own tokens are HS256; an identity provider's (AUTH_ISSUER) one of these.
    JWT_DECODE_ALGORITHMS = ["HS256", "EdDSA", "ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
    AUTH_ISSUER = ""  # the frontend's identity provider, its tokens' iss exactly; "": only the service's own tokens
    AUTH_JWKS_URL = ""  # where it publishes its keys; "": <AUTH_ISSUER>/api/auth/jwks (Better Auth's)
    AUTH_AUDIENCE = ""  # the aud its tokens carry; "": AUTH_ISSUER (Better Auth's default)
    LOCAL_ACCOUNTS = True  # false: signup, login, refresh and password change answer 403
    JWT_TOKEN_LOCATION = ["headers"]
    JWT_COOKIE_CSRF_PROTECT = False  # no cookies, so no CSRF claim in the tokens
    JWT_ENCODE_NBF = False  # "nbf" would equal "iat": shorter tokens are parsed faster
    JWT_ACCESS_TOKEN_EXPIRES = 900
    JWT_REFRESH_TOKEN_EXPIRES = 2_592_000
    MAX_CONTENT_LENGTH = 1024 * 1024
    TRASH_RETENTION_DAYS = 30.0  # a deleted task stays restorable this long
    SYNC_RETENTION_DAYS = 30.0  # a sync cursor stays usable this long (tombstones are kept a day longer)
    IDEMPOTENCY_TTL = 86_400  # seconds an Idempotency-Key's answer is kept

    CORS_ORIGINS = ""
    TRUSTED_PROXIES = 0  # how many reverse proxies in front may set X-Forwarded-*

    RATELIMIT_ENABLED = True
    RATELIMIT_STORAGE_URI = "memory://"
    LOGIN_EMAIL_LIMIT = "10 per minute"  # failed logins for one email
    LOGIN_ADDRESS_LIMIT = "60 per minute"  # all logins from one client address
    SIGNUP_ADDRESS_LIMIT = "20 per hour"

    API_TITLE = "Todo API"
    API_VERSION = "1.0.0"
    OPENAPI_VERSION = "3.0.3"
    OPENAPI_URL_PREFIX = "/"
    OPENAPI_JSON_PATH = "openapi.json"
    OPENAPI_SWAGGER_UI_PATH = "/docs"
    OPENAPI_SWAGGER_UI_URL = "/docs/assets/"  # bundled copy: /docs works offline
    # The token pasted into "Authorize" lives only as long as the page: not in browser storage.
    OPENAPI_SWAGGER_UI_CONFIG = {"persistAuthorization": False}
    API_SPEC_OPTIONS = {
        "info": {"description": "A multi-user Todo API. Log in, then Authorize with the access token."},
        "security": [{"bearerAuth": []}],
    }


def read_environment(config):
    """Every setting of Config with a plain default (text, a number, true or false) is also read
    from the environment variable of its name, as that default's type."""
    for name, default in vars(Config).items():
        if name.isupper() and name in os.environ and (default is None or isinstance(default, str | int | float)):
            value = os.environ[name]
            if isinstance(default, bool):
                config[name] = value.strip().lower() not in {"0", "false", "no", "off"}
            elif isinstance(default, int | float):
                config[name] = type(default)(value)
            else:
                config[name] = value


class ConfigError(RuntimeError):
    """The configuration cannot run a safe service; raised at start."""


def database_uri(url):
    """Accept DATABASE_URL as hosting providers hand it out, on psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def load_jwt_secret(app):
    """Check a configured key, or share one generated key between all workers of this host."""
    key = app.config.get("JWT_SECRET_KEY")
    if key:
        if len(key.encode()) < 32:
            raise ConfigError("JWT_SECRET_KEY must be at least 32 bytes long; use e.g. `openssl rand -hex 32`.")
        return key
    path = Path(app.instance_path) / "jwt-secret.key"
    if not path.exists():
        # Write aside, then link into place: concurrent workers never see a half-written key.
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()


# --- Extensions ---


class Base(DeclarativeBase):
    pass


SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def is_read_request():
    """Serving a GET, HEAD or OPTIONS request, which only reads."""
    return has_request_context() and request.method in SAFE_METHODS


class RequestSession(flask_sqlalchemy.session.Session):
    """Flask-SQLAlchemy's session; on a database server, a read request's statements run in
    autocommit: the driver sends no BEGIN and no ROLLBACK, two of a small read's four round
    trips. Each statement still sees one committed state (PostgreSQL's READ COMMITTED gives no
    more inside a transaction). SQLite: see begin_sqlite_transaction."""

    def get_bind(self, *args, **kwargs):
        engine = super().get_bind(*args, **kwargs)
        if engine.dialect.name != "sqlite" and is_read_request():
            return current_app.extensions["autocommit_engines"].setdefault(engine, engine.execution_options(isolation_level="AUTOCOMMIT"))
        return engine


# expire_on_commit=False: a committed object is serialised without being read back.
db = SQLAlchemy(model_class=Base, session_options={"class_": RequestSession, "expire_on_commit": False})
jwt = JWTManager()
limiter = Limiter(get_remote_address)
password_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)  # OWASP argon2id


DUMMY_HASH = password_hasher.hash(secrets.token_hex(16))  # verified for unknown emails: same cost


@event.listens_for(Engine, "connect")
def configure_sqlite(dbapi_connection, _record):
    """SQLite: cascades need foreign_keys per connection; WAL and a busy timeout serve several workers."""
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    dbapi_connection.isolation_level = None  # the driver begins nothing; begin_sqlite_transaction does
    cursor = dbapi_connection.cursor()
    for pragma in ("foreign_keys=ON", "journal_mode=WAL", "synchronous=NORMAL"):  # busy timeout: engine_options
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


@event.listens_for(Engine, "begin")
def begin_sqlite_transaction(connection):
    """SQLite (SQLAlchemy's documented pysqlite recipe): a read runs in the driver's autocommit,
    no BEGIN; anything that may write begins at once with the write lock, BEGIN IMMEDIATE.

    A transaction that reads first and writes later fails at once with "database is locked" if
    another writer committed in between; BEGIN IMMEDIATE makes it wait its turn instead
    (the busy timeout) and see the latest data. (On PostgreSQL reads skip the transaction too:
    see RequestSession.)"""
    if connection.dialect.name == "sqlite" and not is_read_request():
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def ping_connections_idle_for(engine, seconds):
    """Check a pooled connection before reuse only when it sat idle longer than `seconds`: the
    server or the network may have dropped it meanwhile. A dead one is replaced (the pool
    retries on DisconnectionError); one in steady use is not pinged, which spares every request
    a round trip. A connection that dies mid-use is a 503 once and then replaced, as SQLAlchemy
    invalidates it on the disconnect error."""

    @event.listens_for(engine, "checkin")
    def note_idle_since(_dbapi_connection, record):
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def ping_if_idle(dbapi_connection, record, _proxy):
        idle_since = record.info.get("idle_since")
        if idle_since is not None and time.monotonic() - idle_since >= seconds:
            try:
                engine.dialect.do_ping(dbapi_connection)
            except engine.dialect.loaded_dbapi.Error as error:
                raise DisconnectionError("a pooled connection failed its ping") from error


class ConnectionDeadlines:
    """Request connections held past their deadline, cut by one watcher thread per process (for
    every engine of it: the test suite makes many)."""

    TICK = 0.1  # seconds between looks: a connection is cut at most this late

    def __init__(self):
        self.held, self.lock, self.pid = {}, threading.Lock(), None

    def start(self, record, dbapi_connection, seconds, driver_error):
        if self.pid != os.getpid():  # this process's first request (gunicorn forks after loading the app)
            self.pid = os.getpid()
            threading.Thread(target=self.cut_overdue, name="database-timeout", daemon=True).start()
        with self.lock:
            self.held[record] = (time.monotonic() + seconds, dbapi_connection, driver_error)

    def stop(self, record):
        with self.lock:
            self.held.pop(record, None)

    def cut_overdue(self):
        while True:
            time.sleep(self.TICK)
            with self.lock:
                now = time.monotonic()
                for record in [record for record, (deadline, *_) in self.held.items() if deadline <= now]:
                    shut_down(*self.held.pop(record)[1:])


CONNECTION_DEADLINES = ConnectionDeadlines()


def limit_database_waits(engine, seconds):
    """A request holds a database connection at most `seconds` (DATABASE_TIMEOUT): past that, its
    socket is shut down. A database that stalls (connections open, no bytes back) leaves the
    request blocked in a read that no server-side timeout can end; the shut socket ends it at
    once, the driver reports the connection lost (a 503), and the pool replaces it. Connections
    used outside requests (migrations, the CLI) are not watched."""

    @event.listens_for(engine, "checkout")
    def start_clock(dbapi_connection, record, _proxy):
        if has_request_context():
            CONNECTION_DEADLINES.start(record, dbapi_connection, seconds, engine.dialect.loaded_dbapi.Error)

    @event.listens_for(engine, "checkin")
    def stop_clock(_dbapi_connection, record):
        CONNECTION_DEADLINES.stop(record)


def shut_down(dbapi_connection, driver_error):
    """Shut a driver connection's socket down, both ways (its file descriptor stays the driver's to close)."""
    try:
        with socket.socket(fileno=os.dup(dbapi_connection.fileno())) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except (OSError, driver_error):
        pass  # already closed


# --- Models ---

# Ids are 64-bit on PostgreSQL; SQLite's INTEGER PRIMARY KEY already is.
Id = BigInteger().with_variant(Integer(), "sqlite")
MAX_ID = 2**63 - 1
TASK_ID = f"<int(max={MAX_ID}):task_id>"  # in a route: werkzeug answers 404 for an id no database holds
PRIORITIES = ("low", "medium", "high")  # stored as their index, so they sort low < medium < high
DEFAULT_PRIORITY = PRIORITIES.index("medium")


def utcnow():
    """Now in UTC, naive: every stored time is naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


LOCAL_ONLY = {"sqlite_where": text("issuer IS NULL"), "postgresql_where": text("issuer IS NULL")}


class User(db.Model):
    """A local account (email and password) or an issuer account (AUTH_ISSUER's issuer and
    subject, made by its first accepted token; no password, its email as the tokens say)."""

    __tablename__ = "users"
    __table_args__ = (
        Index("uq_users_local_email", "email", unique=True, **LOCAL_ONLY),  # an issuer account may share a local one's
        Index("uq_users_issuer_subject", "issuer", "subject", unique=True),
        {"sqlite_autoincrement": True},  # never reuse a deleted account's id
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    email: Mapped[str | None] = mapped_column(String(254))
    name: Mapped[str] = mapped_column(String(100), default="")
    password_hash: Mapped[str | None] = mapped_column(String(255))
    issuer: Mapped[str | None] = mapped_column(String(255))
    subject: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # How many tasks the user has, changed in the transaction that creates or deletes one: an
    # unfiltered listing's total without counting its rows (docs/performance.md).
    task_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The number of the user's latest change to their tasks (see next_change): sync cursors
    # count in it.
    change_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")

    def set_password(self, password):
        self.password_hash = password_hasher.hash(password)

    def verify_password(self, password):
        try:
            password_hasher.verify(self.password_hash, password)
        except (VerificationError, InvalidHashError):
            return False
        if password_hasher.check_needs_rehash(self.password_hash):
            self.set_password(password)
        return True


class UserSession(db.Model):
    """One login: its access tokens and its current refresh token live while this row does."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    refresh_jti: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime)


# The listing indexes hold live tasks only (partial indexes): a listing's `deleted_at IS NULL`
# is then the index's own condition, and rows it steps over (a page by number, a count) are
# read from the index alone, never from the table.
LIVE_ONLY = {"sqlite_where": text("deleted_at IS NULL"), "postgresql_where": text("deleted_at IS NULL")}
TRASH_ONLY = {"sqlite_where": text("deleted_at IS NOT NULL"), "postgresql_where": text("deleted_at IS NOT NULL")}


class Task(db.Model):
    __tablename__ = "tasks"
    # One index per listing order, each led by user_id: a page is read in order from one
    # user's slice, never sorted in memory, never scanning other users' rows. (The due-date
    # ones are added after the class: they index an expression.)
    __table_args__ = (
        Index("ix_tasks_user_created", "user_id", "created_at", "id", **LIVE_ONLY),
        Index("ix_tasks_user_updated", "user_id", "updated_at", "id", **LIVE_ONLY),
        # deleted_at, always null in these two, lets SQLite count by priority or by completed from
        # the index alone: it checks a partial index's condition against the query's columns.
        Index("ix_tasks_user_priority", "user_id", "priority", "id", "deleted_at", **LIVE_ONLY),
        Index("ix_tasks_user_completed", "user_id", "completed", "deleted_at", **LIVE_ONLY),
        Index("ix_tasks_user_title", "user_id", "title_key", "id", **LIVE_ONLY),
        Index("ix_tasks_user_changes", "user_id", "change_seq", "id"),  # sync reads changes in order
        Index("ix_tasks_user_deleted", "user_id", "deleted_at", "id", **TRASH_ONLY),  # the trash, newest first
        {"sqlite_autoincrement": True},  # never reuse a deleted task's id
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    completed: Mapped[bool] = mapped_column(Boolean, default=False)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime)
    priority: Mapped[int] = mapped_column(SmallInteger, default=DEFAULT_PRIORITY)  # its rank in PRIORITIES
    due_date: Mapped[datetime | None] = mapped_column(DateTime)
    tags: Mapped[list] = mapped_column(JSON, default=list)  # sorted; its tag rows follow it (see below)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    version: Mapped[int] = mapped_column(Integer)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime)  # set while the task is in the trash
    recurrence: Mapped[str | None] = mapped_column(String(500))  # an RFC 5545 RRULE value, as sent
    recurred: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())  # it made its next occurrence
    change_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")  # its owner's change that wrote it last
    # Lower-cased in Python so that sorting and search agree on SQLite and PostgreSQL. Unbounded:
    # lower-casing can lengthen text ("İ" becomes two code points). SQLite enforces no length, so
    # its column keeps the type it was made with (changing it would copy the table).
    title_key: Mapped[str] = mapped_column(String(200).with_variant(Text(collation="C"), "postgresql"))
    # The description's, lower-cased alike.
    search_key: Mapped[str] = mapped_column(Text)

    # Every UPDATE checks the version it read: concurrent writers cannot both win.
    __mapper_args__ = {"version_id_col": version}

    def __init__(self, **fields):
        now = utcnow()  # one instant: a new task's updated_at equals its created_at
        super().__init__(**{"created_at": now, "updated_at": now, "recurred": False, **fields})

    @validates("title", "description")
    def _keep_search_keys(self, key, value):
        title = value if key == "title" else self.title or ""
        description = value if key == "description" else self.description or ""
        for name, key_value in search_keys(title, description).items():
            setattr(self, name, key_value)
        return value

    @validates("completed")
    def _keep_completed_at(self, _key, value):
        if value and not self.completed:
            self.completed_at = utcnow()
        elif not value:
            self.completed_at = None
        return value

    def apply(self, changes):
        """Set the given fields; return whether anything changed (and so moved updated_at)."""
        changed = False
        for name, value in changes.items():
            if getattr(self, name) != value:
                setattr(self, name, value)
                changed = True
        if changed:
            self.updated_at = utcnow()
        return changed


def search_keys(title, description):
    """The lower-cased copies that title order and search read (a search matches each field on its own)."""
    return {"title_key": title.lower(), "search_key": description.lower()}


# Tasks without a due date sort last in both directions: the order is (due_date IS NULL),
# due_date, id, which both databases read straight from these expression indexes.
Index("ix_tasks_user_due", Task.user_id, Task.due_date.is_(None), Task.due_date, Task.id, **LIVE_ONLY)
Index("ix_tasks_user_due_desc", Task.user_id, Task.due_date.is_(None), Task.due_date.desc(), Task.id.desc(), **LIVE_ONLY)


class TaskTag(db.Model):
    __tablename__ = "task_tags"
    # A tag filter reads one user's slice of this index (or checks each of the user's tasks by
    # the primary key), never other users' tag rows.
    __table_args__ = (Index("ix_task_tags_user_tag", "user_id", "tag", "task_id"),)

    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(50).with_variant(Text(), "postgresql"), primary_key=True)  # lower-cased: see title_key
    # The task's owner, copied when the row is written (tasks never change owner); the rows go
    # with their task.
    user_id: Mapped[int] = mapped_column(Id)


class TaskTombstone(db.Model):
    """A task deleted for good, as incremental sync reports it until SYNC_RETENTION_DAYS pass."""

    __tablename__ = "task_tombstones"
    __table_args__ = (Index("ix_task_tombstones_user_changes", "user_id", "change_seq", "task_id"),)

    task_id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=False)  # task ids are never reused
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    change_seq: Mapped[int] = mapped_column(BigInteger)
    deleted_at: Mapped[datetime] = mapped_column(DateTime, index=True)


class IdempotencyKey(db.Model):
    """The first 2xx answer to a request sent with an Idempotency-Key, replayed to its retries."""

    __tablename__ = "idempotency_keys"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))  # method, path and body
    status: Mapped[int] = mapped_column(SmallInteger)
    body: Mapped[str] = mapped_column(Text)
    location: Mapped[str | None] = mapped_column(String(255))
    etag: Mapped[str | None] = mapped_column(String(100))
    link: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime, index=True)

    @classmethod
    def answer(cls, response, user_id, key, request_hash):
        """The row that keeps a response, to replay it."""
        return cls(
            user_id=user_id,
            key=key,
            request_hash=request_hash,
            status=response.status_code,
            body=response.get_data(as_text=True),
            location=response.headers.get("Location"),
            etag=response.headers.get("ETag"),
            link=response.headers.get("Link"),
            created_at=utcnow(),
        )


# --- What a task's writes imply: its owner's change number and counter, its tag rows, tombstones ---
#
# Every path that writes tasks calls one of three functions, and nothing else writes them:
# write_tasks (create, a successor, update, trash, restore), delete_for_good (from the trash, the
# purge) and delete_account. Each numbers the change on the owner's row first (next_change), then
# writes the tasks, then their tag rows or tombstones.

task_tags, users_table, tombstones_table = TaskTag.__table__, User.__table__, TaskTombstone.__table__
# With RETURNING, SQLAlchemy sends many rows as one multi-row INSERT ("insertmanyvalues", 1,000
# rows per statement) on both databases, from one compiled and cached statement.
INSERT_TAG_ROWS = insert(task_tags).returning(task_tags.c.tag)
INSERT_TASK = insert(Task.__table__).returning(Task.__table__.c.id)
NEXT_CHANGE = (
    update(users_table)
    .where(users_table.c.id == bindparam("owner"))
    .values(change_seq=users_table.c.change_seq + 1, task_count=users_table.c.task_count + bindparam("live"))
    .returning(users_table.c.change_seq)
)


def next_change(connection, user_id, live=0):
    """Number a transaction's change to a user's tasks, and move their live-task counter by `live`.

    The UPDATE takes the user's row lock (SQLite: the database's write lock) until the commit,
    so the next change of this user gets a higher number and commits after this one: the user's
    change numbers are in commit order, which is what lets a sync cursor be a number. Called
    before the tasks are written, so that each row carries its number.

    No row: the account was deleted after this request's token was checked (the UPDATE waited
    for that deletion to commit), and the token's user no longer exists: a 401."""
    change = connection.execute(NEXT_CHANGE, {"owner": user_id, "live": live}).scalar()
    if change is None:
        abort_revoked()
    return change


def keep_tag_rows(connection, created=(), retagged=()):
    """The tag rows of created tasks and of tasks whose tags changed (`retagged`: (task, tags
    before) pairs); a deleted task's rows go with it (ON DELETE CASCADE). One INSERT for all the
    added rows, and one DELETE per retagged task that lost tags."""
    added = []
    for task in created:
        added += [{"task_id": task.id, "user_id": task.user_id, "tag": tag} for tag in task.tags]
    for task, before in retagged:
        added += [{"task_id": task.id, "user_id": task.user_id, "tag": tag} for tag in sorted(set(task.tags) - set(before))]
        if gone := sorted(set(before) - set(task.tags)):
            connection.execute(delete(task_tags).where(task_tags.c.task_id == task.id, task_tags.c.tag.in_(gone)))
    if added:
        connection.execute(INSERT_TAG_ROWS, added)


def is_live(deleted_at):
    return deleted_at is None


def live_change(task):
    """How a changed task moves its owner's live-task counter: -1 into the trash, +1 out of it."""
    before = inspect(task).attrs.deleted_at.history.deleted
    return is_live(task.deleted_at) - is_live(before[0]) if before else 0


def write_tasks(user_id, created=(), changed=()):
    """One numbered change to a user's tasks, returning the new ones (with their ids). `created`:
    new tasks' fields, stored with Core statements, cheaper than the ORM's unit of work (the row
    as the model builds it: defaults, derived fields, version 1). `changed`: the ORM tasks a view
    changed, flushed (each UPDATE checks the version it read). Then the tag rows of both."""
    connection = db.session.connection()
    change = next_change(connection, user_id, len(created) + sum(live_change(task) for task in changed))
    retagged = []
    for task in changed:
        history = inspect(task).attrs.tags.history
        if history.added or history.deleted:
            retagged.append((task, history.deleted[0] if history.deleted else ()))
        task.change_seq = change
    db.session.flush()
    new = [Task(user_id=user_id, version=1, change_seq=change, **fields) for fields in created]
    for task in new:
        # The fields the task has; the columns' defaults fill in the rest, as the ORM's would.
        values = {attr.columns[0].key: getattr(task, attr.key) for attr in inspect(Task).column_attrs if attr.key != "id"}
        task.id = connection.execute(INSERT_TASK, {key: value for key, value in values.items() if value is not None}).scalar_one()
    keep_tag_rows(connection, new, retagged)
    return new


def delete_for_good(connection, where, user_id=None):
    """Delete trashed tasks for good (those matching `where`; they are no longer counted), each
    leaving a tombstone: with `user_id`, numbered as that user's change now (deleted from the
    trash; numbered after the delete, so that, like every write, it locks the tasks before their
    owner's row), or, without, with the number and time of the change that trashed it (a purge
    past the retention: clients saw it go then). Returns how many were deleted."""
    gone = (
        delete(Task.__table__)
        .where(Task.deleted_at.is_not(None), *where)
        .returning(Task.__table__.c.id, Task.__table__.c.user_id, Task.__table__.c.change_seq, Task.__table__.c.deleted_at)
    )
    rows, now = connection.execute(gone).all(), utcnow()
    if rows:
        change = next_change(connection, user_id) if user_id is not None else None
        connection.execute(
            insert(tombstones_table),
            [
                {
                    "task_id": row.id,
                    "user_id": row.user_id,
                    "change_seq": change or row.change_seq,
                    "deleted_at": row.deleted_at if change is None else now,
                }
                for row in rows
            ],
        )
    return len(rows)


def delete_account(connection, user_id):
    """Delete a user and all of theirs. The tasks go first, then the account (its sessions, tag
    rows, tombstones and keys cascade): a task write locks its task before its owner's row, and
    so does this, so neither waits on the other. No change number or tombstone outlives it."""
    connection.execute(delete(Task.__table__).where(Task.user_id == user_id))
    connection.execute(delete(users_table).where(users_table.c.id == user_id))


# --- Recurring tasks: RFC 5545 rules, as far as the contract goes ---
#
# The rule is checked here against the parts the contract supports (dateutil's own parser
# accepts more and raises on other things), then handed to dateutil's rrule to compute dates.

FREQUENCIES = {"DAILY": rrule_module.DAILY, "WEEKLY": rrule_module.WEEKLY, "MONTHLY": rrule_module.MONTHLY, "YEARLY": rrule_module.YEARLY}
WEEKDAYS = dict(zip(("MO", "TU", "WE", "TH", "FR", "SA", "SU"), rrule_module.weekdays, strict=True))
BYDAY_ITEM = re.compile(r"([+-]?[0-9]{1,2})?(MO|TU|WE|TH|FR|SA|SU)")
INTEGER = re.compile(r"[+-]?[0-9]{1,4}")
UNTIL_VALUE = re.compile(r"([0-9]{8})(T[0-9]{6}Z)?")
# How far after the due date a rule's next date is looked for. The Gregorian calendar repeats
# itself every 400 years (146,097 days, a whole number of weeks): a rule with INTERVAL=1 that
# ever produces a date produces one within this horizon; one that does not is refused.
SEARCH_HORIZON = relativedelta(years=400)


class RecurrenceError(ValueError):
    """Why a recurrence rule is refused (the message names the part)."""


def integers(low, high, negative=False):
    """A part's reader: comma-separated whole numbers from `low` to `high` (or their negatives)."""

    def read(name, text, _parts):
        values = []
        for item in text.split(","):
            if not INTEGER.fullmatch(item) or not (low <= abs(int(item)) <= high) or (int(item) < 0 and not negative):
                span = f"{low} to {high}" + (f" or -{high} to -{low}" if negative else "")
                raise RecurrenceError(f"{name} takes {span}{', comma-separated' if name.startswith('BY') else ''}.")
            values.append(int(item))
        return values

    return read


def frequency(_name, text, _parts):
    if text not in FREQUENCIES:
        raise RecurrenceError("FREQ is DAILY, WEEKLY, MONTHLY or YEARLY.")
    return FREQUENCIES[text]


def weekdays(_name, text, parts):
    """BYDAY's days; an ordinal counts within the month, or within the year for a yearly rule
    without BYMONTH."""
    days = []
    for item in text.split(","):
        match = BYDAY_ITEM.fullmatch(item)
        if not match:
            raise RecurrenceError(
                "BYDAY takes MO, TU, WE, TH, FR, SA or SU, comma-separated (with an ordinal such as 2TU or -1FR for MONTHLY and YEARLY)."
            )
        ordinal, day = match.groups()
        if ordinal is None:
            days.append(WEEKDAYS[day])
            continue
        freq = parts["FREQ"]
        limit = {"MONTHLY": 5, "YEARLY": 5 if "BYMONTH" in parts else 53}.get(freq)
        if limit is None:
            raise RecurrenceError("An ordinal in BYDAY (such as 2TU) needs FREQ=MONTHLY or FREQ=YEARLY.")
        if not 1 <= abs(int(ordinal)) <= limit:
            within = " and BYMONTH" if freq == "YEARLY" and limit == 5 else ""
            raise RecurrenceError(f"A BYDAY ordinal is 1 to {limit} or -{limit} to -1 with FREQ={freq}{within}.")
        days.append(WEEKDAYS[day](int(ordinal)))
    return days


def until_time(_name, text, _parts):
    """UNTIL as a naive UTC time; a date means up to the end of that day."""
    match = UNTIL_VALUE.fullmatch(text)
    try:
        if not match:
            raise ValueError
        until = datetime.strptime(match.group(0), "%Y%m%dT%H%M%SZ" if match.group(2) else "%Y%m%d")
    except ValueError:
        raise RecurrenceError("UNTIL is a UTC date-time such as 20270101T000000Z, or a date such as 20270101.") from None
    return until if match.group(2) else until + timedelta(days=1, microseconds=-1)


# The parts the contract supports, in the order they are checked, each with its reader (which
# bounds its value) and the rrule argument it becomes (None: COUNT and UNTIL end the rule).
RULE_PARTS = {
    "FREQ": (frequency, "freq"),
    "INTERVAL": (integers(1, 1000), "interval"),
    "BYMONTH": (integers(1, 12), "bymonth"),
    "BYMONTHDAY": (integers(1, 31, negative=True), "bymonthday"),
    "BYDAY": (weekdays, "byweekday"),
    "COUNT": (integers(1, 1000), None),
    "UNTIL": (until_time, None),
}


def rule_parts(text):
    """A rule's NAME=VALUE parts (names and values upper-cased), each a supported part, once."""
    parts = {}
    for part in text.split(";"):
        name, equals, value = part.partition("=")
        name = name.upper()
        if not equals or not value:
            raise RecurrenceError(f"Each part is NAME=VALUE, separated by semicolons; not {part!r}.")
        if name not in RULE_PARTS:
            raise RecurrenceError(f"{name} is not supported: use FREQ, INTERVAL, BYDAY, BYMONTHDAY, BYMONTH, COUNT or UNTIL.")
        if name in parts:
            raise RecurrenceError(f"{name} is given twice.")
        parts[name] = value.upper()
    return parts


def parse_recurrence(text):
    """The rule's parts, as rrule's keyword arguments (without dtstart), and its COUNT/UNTIL.

    Raises RecurrenceError for anything the contract does not support."""
    parts = rule_parts(text)
    if "FREQ" not in parts:
        raise RecurrenceError("FREQ is required.")
    frequency(None, parts["FREQ"], parts)
    if "COUNT" in parts and "UNTIL" in parts:
        raise RecurrenceError("Give COUNT or UNTIL, not both.")
    if "BYMONTHDAY" in parts and parts["FREQ"] == "WEEKLY":
        raise RecurrenceError("BYMONTHDAY cannot be used with FREQ=WEEKLY (RFC 5545).")
    values = {name: RULE_PARTS[name][0](name, parts[name], parts) for name in RULE_PARTS if name in parts}
    rule = {argument: values[name] for name, (_, argument) in RULE_PARTS.items() if argument and name in values}
    rule["interval"] = rule.get("interval", [1])[0]
    return rule, values.get("COUNT", [None])[0], values.get("UNTIL")


def counted_down(recurrence, count):
    """The rule with its COUNT set to `count`, every other part as sent."""
    return ";".join(
        f"{part.partition('=')[0]}={count}" if part.partition("=")[0].upper() == "COUNT" else part for part in recurrence.split(";")
    )


def with_start_defaults(rule, start):
    """The rule with the days rrule takes from its start when the rule names none spelled out
    (dateutil's defaults: the start's day of the month, and month, or weekday), so that its days
    can be found in any month or year alone. (The time of day is the start's too.)"""
    rule = dict(rule)
    if "bymonthday" not in rule and "byweekday" not in rule:
        if rule["freq"] == rrule_module.YEARLY:
            rule.setdefault("bymonth", [start.month])
            rule["bymonthday"] = [start.day]
        elif rule["freq"] == rrule_module.MONTHLY:
            rule["bymonthday"] = [start.day]
        elif rule["freq"] == rrule_module.WEEKLY:
            rule["byweekday"] = [rrule_module.weekdays[start.weekday()]]
    return rule


def admitted_days(rule, year, month=None):
    """The days of a month (or, without `month`, of a year) that a rule's BY parts admit, as
    offsets from its first day; filtered as rrule filters a period's days: every part given
    must hold, and BYDAY's ordinals count within the month, or within the year for a yearly
    rule without BYMONTH. Which periods the rule visits (its INTERVAL) is not asked here."""
    days = rule.get("byweekday") or ()
    plain = {day.weekday for day in days if not day.n}
    nth = {(day.weekday, day.n) for day in days if day.n}
    in_year = rule["freq"] == rrule_module.YEARLY and "bymonth" not in rule
    monthdays = set(rule.get("bymonthday") or ())
    year_length = 366 if calendar.isleap(year) else 365
    admitted, offset = [], 0
    for number in [month] if month else range(1, 13):
        first_weekday, length = calendar.monthrange(year, number)
        if "bymonth" in rule and number not in rule["bymonth"]:
            offset += length
            continue
        for day in range(1, length + 1):
            weekday = (first_weekday + day - 1) % 7
            if plain and weekday not in plain:
                continue
            place, span = (offset + day, year_length) if in_year else (day, length)
            if nth and (weekday, (place - 1) // 7 + 1) not in nth and (weekday, -((span - place) // 7 + 1)) not in nth:
                continue
            if monthdays and day not in monthdays and day - length - 1 not in monthdays:
                continue
            admitted.append(offset + day - 1)
        offset += length
    return admitted


def first_after(rule, due):
    """The rule's first date strictly after `due` (the rule starting there, UTC), or None within
    SEARCH_HORIZON: rrule's dates, without its walk. Each kind of month (or a yearly rule's year)
    is filtered once; the periods the INTERVAL visits, at most 4,801 months, by arithmetic."""
    start = due.replace(microsecond=0)  # rrule works in whole seconds; the fraction is kept
    try:
        end = start + SEARCH_HORIZON
    except (OverflowError, ValueError):
        end = datetime.max.replace(microsecond=0)
    rule = with_start_defaults(rule, start)
    freq, interval, today = rule["freq"], rule["interval"], start.toordinal()
    kinds = {}

    def days_of(year, month=None):
        """The admitted days, by the month's or year's kind: (offsets, the same as a set)."""
        kind = (month, *calendar.monthrange(year, month)) if month else (calendar.isleap(year), calendar.weekday(year, 1, 1))
        if kind not in kinds:
            offsets = admitted_days(rule, year, month)
            kinds[kind] = (offsets, frozenset(offsets))
        return kinds[kind]

    def first_of(candidates, first):
        """The first of a period's candidate days after the due date, within the horizon."""
        for offset in candidates:
            if first + offset > today:
                found = datetime.combine(date.fromordinal(first + offset), start.time())
                return found.replace(microsecond=due.microsecond) if found <= end else None
        return None

    if freq == rrule_module.YEARLY:
        for year in range(start.year, end.year + 1, interval):
            if (found := first_of(days_of(year)[0], date(year, 1, 1).toordinal())) is not None:
                return found
        return None
    monday = today - start.weekday()  # weekly: the periods are weeks from the start's Monday (rrule's default WKST)
    months = range(start.year * 12 + start.month - 1, end.year * 12 + end.month, interval if freq == rrule_module.MONTHLY else 1)
    for index in months:
        year, month = divmod(index, 12)
        offsets, admitted = days_of(year, month + 1)
        if not offsets:
            continue
        first = date(year, month + 1, 1).toordinal()
        if freq == rrule_module.DAILY and interval > 1:  # the days the interval visits, then whether admitted
            length = calendar.monthrange(year, month + 1)[1]
            offsets = [day for day in range((today - first) % interval, length, interval) if day in admitted]
        elif freq == rrule_module.WEEKLY and interval > 1:
            offsets = [day for day in offsets if (first + day - monday) % (7 * interval) < 7]
        if (found := first_of(offsets, first)) is not None:
            return found
    return None


def check_recurrence(recurrence, due_date):
    """A 422 naming recurrence when the rule cannot stand with this due date."""
    message = None
    if recurrence is not None and due_date is None:
        message = "A recurring task needs a due_date: its next occurrence is due a rule's step after it."
    elif recurrence is not None and first_after(parse_recurrence(recurrence)[0], due_date) is None:
        message = "This rule produces no date within 400 years after the task's due_date."
    if message is not None:
        abort(422, message="Validation failed.", errors={"json": {"recurrence": [message]}})


def next_occurrence(task):
    """The fields of a recurring task's next occurrence, or None when its rule has ended."""
    rule, count, until = parse_recurrence(task.recurrence)
    due = first_after(rule, task.due_date)
    if due is None or count == 1 or (until is not None and due > until):
        return None
    recurrence = task.recurrence if count is None else counted_down(task.recurrence, count - 1)
    return {
        "title": task.title,
        "description": task.description,
        "priority": task.priority,
        "tags": list(task.tags),
        "due_date": due,
        "recurrence": recurrence,
    }


# --- marshmallow, held to the contract: field types, and a schema dumped in one step ---


def utc_iso(value):
    """A stored (naive UTC) time as ISO 8601 with its +00:00 offset."""
    return None if value is None else f"{value.isoformat()}+00:00"


# White space as Python's str.strip() sees it, spelled out: regex engines disagree on \s.
SPACE_CHARS = r"\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
SPACE = f"[{SPACE_CHARS}]"


class PlainText(fields.String):
    """A string of valid Unicode (no lone surrogate). With `stored`, no NUL either, which
    PostgreSQL cannot store. With `trimmed=(min, max)`, surrounding white space is dropped and
    the length counted after that; as sent, it may be at most twice `max` long. The OpenAPI
    pattern (the trimmed rule) and lengths (as sent) tell clients exactly the same."""

    def __init__(self, *, trimmed=None, stored=True, **kwargs):
        metadata = {}
        if trimmed:
            low, high = trimmed  # low is 1: at least one visible character
            metadata["pattern"] = rf"^{SPACE}*[^{SPACE_CHARS}\u0000](?:[^\u0000]{{0,{high - 2}}}[^{SPACE_CHARS}\u0000])?{SPACE}*$"
            metadata.update(minLength=low, maxLength=2 * high)
        elif stored:
            metadata["pattern"] = r"^[^\u0000]*$"
        kwargs["metadata"] = {**metadata, **kwargs.get("metadata", {})}
        super().__init__(**kwargs)
        self.trimmed, self.stored = trimmed, stored

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        if self.stored and "\x00" in value:
            raise ma.ValidationError("Must not contain NUL characters.")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ma.ValidationError("Must be valid Unicode text.") from None
        if self.trimmed:
            low, high = self.trimmed
            if len(value) > 2 * high:
                raise ma.ValidationError(f"Longer than {2 * high} characters.")
            value = value.strip()
            # Checked here, not with validate.Length, which would count the untrimmed length.
            if not low <= len(value) <= high:
                raise ma.ValidationError(f"Length must be between {low} and {high} after trimming white space.")
        return value


class StrictBoolean(fields.Boolean):
    """JSON true or false only: 0, 1 and "yes" are not booleans."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class QueryInteger(fields.Integer):
    """A whole number in a query string: ASCII digits only (Python's int() also takes "２",
    " 2", "+2" and "2_0")."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not (isinstance(value, str) and value.isascii() and value.isdigit()):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class UTCDateTime(fields.DateTime):
    """ISO 8601; input without an offset is UTC; output always carries +00:00."""

    to_json = staticmethod(utc_iso)  # see OneStepDump

    def _serialize(self, value, attr, obj, **kwargs):
        return self.to_json(value)

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        try:
            value = value.astimezone(UTC) if value.tzinfo else value
        except OverflowError:
            raise ma.ValidationError("Date is out of range.") from None
        return value.replace(tzinfo=None)


class Email(fields.Email):
    """Stored and compared lower-cased. No invisible or direction-changing character anywhere
    (Unicode categories Cc, Cf, Co, Cn: zero-width spaces, bidi overrides, a BOM): an address
    must not look exactly like another one."""

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs).strip().lower()
        if any(unicodedata.category(char) in ("Cc", "Cf", "Co", "Cn") for char in value):
            raise ma.ValidationError("Must not contain invisible or direction-changing characters.")
        return value


class TagList(fields.List):
    """Tags trimmed, lower-cased, de-duplicated and sorted; at most 20 after that."""

    MAX_SENT = 100  # repeats allowed, but a list this long is refused before its items are read

    def __init__(self, **kwargs):
        tag = PlainText(trimmed=(1, 50))
        description = (
            "Up to 20 tags of 1-50 characters each after trimming (at most 100 as sent); stored lower-cased, de-duplicated "
            "and sorted. Default on POST and PUT: []."
        )
        super().__init__(tag, metadata={"maxItems": 20, "description": description}, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, list) and len(value) > self.MAX_SENT:  # refused before any item is validated
            raise ma.ValidationError(f"At most {self.MAX_SENT} tags may be sent (20 distinct).")
        tags = sorted({tag.lower() for tag in super()._deserialize(value, attr, data, **kwargs)})
        if len(tags) > 20:
            raise ma.ValidationError("At most 20 distinct tags.")
        return tags


class PriorityName(fields.Field):
    """A priority, stored as its rank in PRIORITIES (0, 1, 2: they sort low < medium < high), read and written by name."""

    to_json = staticmethod(PRIORITIES.__getitem__)  # see OneStepDump

    def __init__(self, **kwargs):
        kwargs["metadata"] = {"type": "string", "enum": list(PRIORITIES), **kwargs.get("metadata", {})}
        super().__init__(**kwargs)

    def _serialize(self, value, attr, obj, **kwargs):
        return self.to_json(value)

    def _deserialize(self, value, attr, data, **kwargs):
        if value not in PRIORITIES:  # the words of marshmallow's OneOf
            raise ma.ValidationError(f"Must be one of: {', '.join(PRIORITIES)}.")
        return PRIORITIES.index(value)


class OneStepDump(ma.Schema):
    """A schema dumped in one step per object, from its own declared fields: each field's value
    read by its attribute and passed through the field's `to_json` where it declares one; the
    database already gives every other field its JSON type. Written for marshmallow 4.4, whose
    generic dump calls three methods per field: much of a page's cost (docs/performance.md).
    tests/test_tasks.py holds it equal to marshmallow's own dump for every field, set or not, of
    every schema that uses it (none has hooks; `only` and `exclude` are refused)."""

    def dump(self, obj, *, many=None):
        if self.many if many is None else many:
            return [self.dump(item, many=False) for item in obj]
        values = ((key, get(obj), convert) for key, get, convert in self.plan)
        return {key: value if convert is None or value is None else convert(value) for key, value, convert in values}

    @functools.cached_property
    def plan(self):
        if self.only or self.exclude:
            raise TypeError(f"{type(self).__name__} has only or exclude: dump it with marshmallow's own dump")
        return [
            (field.data_key or name, operator.attrgetter(field.attribute or name), getattr(field, "to_json", None))
            for name, field in self.dump_fields.items()
        ]


# --- Schemas ---


class StrictSchema(ma.Schema):
    class Meta:
        unknown = ma.RAISE


# Passwords are hashed, never stored: any Unicode will do.
Password = PlainText(
    required=True, stored=False, validate=validate.Length(8, 128), load_only=True, metadata={"description": "8 to 128 characters."}
)
EMAIL_RULE = "At most 254 characters; compared and stored lower-cased."


class SignupSchema(StrictSchema):
    email = Email(required=True, validate=validate.Length(max=254), metadata={"description": EMAIL_RULE})
    password = Password
    name = PlainText(
        allow_none=True,
        validate=validate.Length(max=100),
        metadata={"description": "Optional, at most 100 characters; null or missing means no name."},
    )


class LoginSchema(StrictSchema):
    email = Email(required=True, validate=validate.Length(max=254), metadata={"description": EMAIL_RULE})
    password = PlainText(required=True, stored=False, load_only=True, validate=validate.Length(max=128))


class ProfileSchema(StrictSchema):
    name = PlainText(required=True, validate=validate.Length(max=100), metadata={"description": 'At most 100 characters; "" for no name.'})


class PasswordChangeSchema(StrictSchema):
    current_password = PlainText(required=True, stored=False, load_only=True, validate=validate.Length(max=128))
    new_password = Password


# What POST and PUT give the fields they are not sent. Applied on load, not declared as marshmallow
# defaults: those would become OpenAPI defaults, which generated clients send or require.
TASK_DEFAULTS = {
    "description": "",
    "completed": False,
    "priority": DEFAULT_PRIORITY,
    "due_date": None,
    "tags": (),
    "recurrence": None,
}
RECURRENCE_EXAMPLE = "FREQ=WEEKLY;BYDAY=MO"


def supported_recurrence(text):
    """A validator: an RFC 5545 RRULE value within the parts the contract supports."""
    try:
        parse_recurrence(text)
    except RecurrenceError as error:
        raise ma.ValidationError(str(error)) from None


class TaskInSchema(StrictSchema):
    """TaskIn: every writable field. Loaded whole for POST and PUT, partially for PATCH."""

    title = PlainText(
        required=True,
        trimmed=(1, 200),
        metadata={"description": "1-200 characters after trimming surrounding white space; at most 400 as sent."},
    )
    description = PlainText(
        allow_none=True,
        validate=validate.Length(max=2000),
        metadata={"description": 'At most 2000 characters; null is taken as "". Default on POST and PUT: "".'},
    )
    completed = StrictBoolean(metadata={"description": "JSON true or false. Default on POST and PUT: false."})
    priority = PriorityName(metadata={"description": "Default on POST and PUT: medium."})
    due_date = UTCDateTime(
        allow_none=True, metadata={"description": "ISO 8601; without an offset it is UTC. Default on POST and PUT: null."}
    )
    tags = TagList()
    recurrence = fields.String(
        allow_none=True,
        validate=[validate.Length(1, 500), supported_recurrence],
        metadata={
            "description": "An RFC 5545 recurrence rule without RRULE:, e.g. FREQ=WEEKLY;BYDAY=MO,WE, or null (the default "
            "on POST and PUT): FREQ (DAILY, WEEKLY, MONTHLY, YEARLY) and, in any order, INTERVAL (1-1000), BYDAY (MO..SU; "
            "with an ordinal such as 2TU or -1FR for MONTHLY and YEARLY), BYMONTHDAY (1 to 31, -31 to -1), BYMONTH (1-12), "
            "and COUNT (1-1000) or UNTIL (20270101T000000Z or 20270101). Needs a due_date. Completing the task creates its "
            "next occurrence, due at the rule's first date after this due_date.",
            "example": RECURRENCE_EXAMPLE,
            "pattern": "^[A-Za-z]+=[A-Za-z0-9,+-]+(;[A-Za-z]+=[A-Za-z0-9,+-]+)*$",
        },
    )

    @ma.post_load
    def fill_in_defaults(self, data, partial, **_kwargs):
        """PATCH keeps what it was sent; POST and PUT fill in every default."""
        if "description" in data and data["description"] is None:
            data["description"] = ""
        if not partial:
            data = {**TASK_DEFAULTS, **data}
            data["tags"] = list(data["tags"])
        return data


class TaskPatchSchema(TaskInSchema):
    """Any subset of TaskIn: only the fields sent change."""

    def __init__(self, **kwargs):
        super().__init__(partial=True, **kwargs)


SORT_KEYS = ("created_at", "updated_at", "due_date", "priority", "title")
SORTS = [*SORT_KEYS, *(f"-{key}" for key in SORT_KEYS)]


# A cursor is its values as JSON behind a MAC made with the app's key over those values, its
# kind and its owner's id: a cursor the service did not make, or made for another account, is
# told apart before any of its values is read. Sized for the longest the service makes: a title
# key of 200 control characters, each escaped in JSON as six bytes.
CURSOR_ALPHABET = re.compile(r"[A-Za-z0-9_-]{1,2048}")
CURSOR_MAC_SIZE = 16


def cursor_mac(payload):
    key = current_app.config["JWT_SECRET_KEY"].encode()
    return hmac.new(key, b"todo-api cursor\0" + payload, hashlib.sha256).digest()[:CURSOR_MAC_SIZE]


def encode_cursor(kind, owner, *values):
    """An opaque cursor of one kind ("after" or "sync") for one user: base64url, no padding."""
    payload = json.dumps([kind, owner, *values], ensure_ascii=False, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(cursor_mac(payload) + payload).rstrip(b"=").decode()


def decode_cursor(text, kind):
    """The values of a cursor of `kind` this service made (owner's id first); ValueError for any other text."""
    if not CURSOR_ALPHABET.fullmatch(text):
        raise ValueError("not base64url")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))  # ValueError for a length no base64 has
    mac, payload = raw[:CURSOR_MAC_SIZE], raw[CURSOR_MAC_SIZE:]
    if not hmac.compare_digest(mac, cursor_mac(payload)):
        raise ValueError("not made by this service")
    found, *values = json.loads(payload)  # the service's own JSON, as the MAC proves
    if found != kind:
        raise ValueError("another kind of cursor")
    return values


class Cursor(fields.String):
    """A cursor of `kind` this service made: loads as [owner's id, *values]; anything else is invalid."""

    default_error_messages = {"invalid": "Not a cursor this service made: use one from an earlier answer as it is."}

    def __init__(self, kind, **kwargs):
        kwargs["metadata"] = {"minLength": 1, "maxLength": 2048, "pattern": "^[A-Za-z0-9_-]+$", **kwargs.get("metadata", {})}
        super().__init__(**kwargs)
        self.kind = kind

    def _deserialize(self, value, attr, data, **kwargs):
        try:
            return decode_cursor(super()._deserialize(value, attr, data, **kwargs), self.kind)
        except ValueError:
            raise self.make_error("invalid") from None


def is_json_count(value, top=MAX_ID):
    """A JSON integer (not a boolean) from 0 to `top`."""
    return type(value) is int and 0 <= value <= top


class TaskQueryArgsSchema(StrictSchema):
    page = QueryInteger(validate=validate.Range(1, 2_147_483_647), metadata={"description": "1-based page number; default 1."})
    page_size = QueryInteger(load_default=20, validate=validate.Range(1, 100), metadata={"description": "Tasks per page."})
    after = Cursor(
        "after",
        metadata={
            "description": "Continue after the page whose X-Pagination gave this next_cursor, with the same filters and sort "
            "(not with page). Unlike page numbers, deep pages cost no more and nothing is repeated or skipped when tasks "
            "come and go meanwhile."
        },
    )
    completed = fields.Boolean(truthy={"true"}, falsy={"false"}, metadata={"description": "Only completed (true) or open (false) tasks."})
    priority = fields.String(validate=validate.OneOf(PRIORITIES), metadata={"description": "Only tasks of this priority."})
    tag = PlainText(trimmed=(1, 50), metadata={"description": "Only tasks carrying this tag (any case; 1-50 characters after trimming)."})
    q = PlainText(validate=validate.Length(1, 200), metadata={"description": "Text found in the title or the description (any case)."})
    due_before = UTCDateTime(metadata={"description": "Only tasks due before this time (exclusive); tasks with no due date are left out."})
    due_after = UTCDateTime(metadata={"description": "Only tasks due after this time (exclusive); tasks with no due date are left out."})
    sort = fields.String(
        load_default="-created_at",
        validate=validate.OneOf(SORTS),
        metadata={
            "description": "Order: a field, ascending, or descending with a leading '-'. Ties are broken by id in the same "
            "direction; tasks with no due date come last; priority orders low < medium < high; titles ignore case.",
            "x-enum-varnames": [key.upper() for key in SORT_KEYS] + [f"{key.upper()}_DESC" for key in SORT_KEYS],
        },
    )

    @ma.post_load
    def page_or_after(self, data, **_kwargs):
        """A page by number (1 when neither is given) or the one after a cursor, not both."""
        if "after" not in data:
            return {"page": 1, **data}
        if "page" in data:
            raise ma.ValidationError("Give either after or page, not both.", "after")
        return {**data, "page": None}


class TrashQueryArgsSchema(StrictSchema):
    page = QueryInteger(load_default=1, validate=validate.Range(1, 2_147_483_647), metadata={"description": "1-based page number."})
    page_size = QueryInteger(load_default=20, validate=validate.Range(1, 100), metadata={"description": "Deleted tasks per page."})


class SyncArgsSchema(StrictSchema):
    cursor = Cursor(
        "sync",
        metadata={"description": "The cursor of your last sync answer, as it is; leave it out to start with a full sync of every task."},
    )
    limit = QueryInteger(
        load_default=100, validate=validate.Range(1, 1000), metadata={"description": "At most this many changes per answer."}
    )

    @ma.validates("cursor")
    def check_cursor(self, values, **_kwargs):
        """The MAC proves the service made it; what it holds is still checked before it reaches SQL."""
        if len(values) != 5 or not all(is_json_count(value) for value in values):
            raise ma.ValidationError(Cursor.default_error_messages["invalid"])


class UserSchema(ma.Schema):
    id = fields.Integer(required=True)
    email = fields.String(required=True, allow_none=True, metadata={"description": "null for an issuer account whose tokens carry none."})
    name = fields.String(required=True, metadata={"description": '"" when the user gave none.'})
    created_at = UTCDateTime(required=True)
    issuer = fields.String(
        required=True, allow_none=True, metadata={"description": "AUTH_ISSUER for an issuer account; null for a local one."}
    )
    subject = fields.String(
        required=True, allow_none=True, metadata={"description": "The issuer's sub for this person; null for a local account."}
    )


class TokenPairSchema(ma.Schema):
    access_token = fields.String(required=True)
    refresh_token = fields.String(required=True)
    token_type = fields.String(required=True, metadata={"enum": ["Bearer"]})
    expires_in = fields.Integer(required=True, metadata={"description": "Lifetime of the access token in seconds."})
    user = fields.Nested(UserSchema, required=True)


class TaskSchema(OneStepDump):
    id = fields.Integer(required=True)
    title = fields.String(required=True)
    description = fields.String(required=True)
    completed = fields.Boolean(required=True)
    completed_at = UTCDateTime(required=True, allow_none=True, metadata={"description": "When it was completed; null while open."})
    priority = PriorityName(required=True)
    due_date = UTCDateTime(required=True, allow_none=True)
    tags = fields.List(fields.String(), required=True, metadata={"description": "Sorted."})
    created_at = UTCDateTime(required=True)
    updated_at = UTCDateTime(required=True, metadata={"description": "Moves on every change."})
    recurrence = fields.String(
        required=True, allow_none=True, metadata={"description": "Its RFC 5545 recurrence rule, or null.", "example": RECURRENCE_EXAMPLE}
    )


class DeletedTaskSchema(TaskSchema):
    deleted_at = UTCDateTime(required=True, metadata={"description": "When it went to the trash."})


class TombstoneSchema(ma.Schema):
    id = fields.Integer(required=True)
    deleted = fields.Boolean(required=True, metadata={"enum": [True], "description": "Always true: drop your copy of this task."})


class SyncPageSchema(ma.Schema):
    changes = fields.List(
        fields.Raw(metadata={"oneOf": [{"$ref": "#/components/schemas/Task"}, {"$ref": "#/components/schemas/Tombstone"}]}),
        required=True,
        metadata={
            "description": "In the order they were committed; a live task whole, a deleted one as a tombstone. Apply them in "
            "order: replace by id, drop on deleted."
        },
    )
    cursor = fields.String(required=True, metadata={"description": "Send it with your next sync call, as it is."})
    has_more = fields.Boolean(required=True, metadata={"description": "True: call again at once with the new cursor."})


class ListPageMetadataSchema(PaginationMetadataSchema):
    next_cursor = fields.String(
        metadata={"description": "Present when more tasks follow this page: send it as after= to get the next page by keyset."}
    )


class HealthSchema(ma.Schema):
    status = fields.String(required=True, metadata={"enum": ["ok"]})
    database = fields.String(required=True, metadata={"enum": ["ok"]})


class ErrorSchema(ma.Schema):
    """The one error shape of every layer."""

    code = fields.Integer(required=True, metadata={"description": "HTTP status code"})
    status = fields.String(required=True, metadata={"description": "HTTP reason phrase"})
    message = fields.String(required=True, metadata={"description": "For humans"})
    errors = fields.Dict(
        keys=fields.String(),
        values=fields.Dict(keys=fields.String(), values=fields.List(fields.String())),
        metadata={"description": "422 only: location (json, query, headers) -> field -> messages"},
    )


# --- Errors ---

MESSAGES = {
    400: "Request body is not valid JSON.",
    404: "Resource not found.",
    405: "Method not allowed on this route.",
    412: "The task has changed: If-Match does not match its current ETag.",
    413: "Request body is too large.",
    415: "Request body must be JSON (Content-Type: application/json).",
    422: "Validation failed.",
    500: "Internal server error.",
    503: "The database is unavailable; try again shortly.",
}


def error_body(code, message, **extra):
    return {"code": code, "status": HTTPStatus(code).phrase, "message": message, **extra}


def flat_messages(messages, prefix=""):
    """One field's messages as a list of strings, as the error schema says: marshmallow nests
    the messages of a list's items (and of nested fields) in dicts; each keeps its item's name."""
    if isinstance(messages, dict):
        return [
            message
            for key, nested in messages.items()
            for message in flat_messages(nested, f"{prefix}{f'item {key}' if isinstance(key, int) else key}: ")
        ]
    if isinstance(messages, list):
        return [message for nested in messages for message in flat_messages(nested, prefix)]
    return [f"{prefix}{messages}"]


# An error body stays small whatever the input: so many fields, messages, characters of a name.
MAX_ERROR_FIELDS, MAX_FIELD_MESSAGES, MAX_FIELD_NAME = 20, 5, 100


def bounded_messages(by_field):
    """One location's field -> messages, cut to a few KB: the first fields and messages, and
    how many more there were."""
    shown = {}
    for name, messages in list(by_field.items())[:MAX_ERROR_FIELDS]:
        messages = flat_messages(messages)
        if len(messages) > MAX_FIELD_MESSAGES:
            messages = [*messages[:MAX_FIELD_MESSAGES], f"... and {len(messages) - MAX_FIELD_MESSAGES} more."]
        shown[str(name)[:MAX_FIELD_NAME]] = messages
    if len(by_field) > MAX_ERROR_FIELDS:
        shown["_more"] = [f"{len(by_field) - MAX_ERROR_FIELDS} more fields have errors."]
    return shown


def retry_after_seconds():
    """Seconds until the breached limit's window resets, within 1 and the window's length."""
    limit = limiter.current_limit
    if limit is None:
        return 60
    return min(limit.limit.get_expiry(), max(1, math.ceil(limit.reset_at - time.time())))


# --- flask-smorest and webargs, held to the contract ---


class Api(flask_smorest.Api):
    """flask-smorest's Api, every error in the contract's one shape."""

    ERROR_SCHEMA = ErrorSchema

    def handle_http_exception(self, error):
        data = getattr(error, "data", None) or {}
        message = data.get("message") or MESSAGES.get(error.code) or error.description
        payload = error_body(error.code, message)
        if errors := data.get("errors") or data.get("messages"):
            payload["errors"] = {location: bounded_messages(by_field) for location, by_field in errors.items()}
        payload.update(data.get("also") or {})  # fields a view adds to the shape: /health's "database"
        # werkzeug's own headers (Allow on a 405), then those passed to abort().
        headers = {name: value for name, value in error.get_headers() if name.lower() != "content-type"}
        headers.update(data.get("headers") or {})
        if error.code == 429:
            payload["message"] = f"Too many requests ({error.description}); retry later."
            headers["Retry-After"] = str(retry_after_seconds())
        return payload, error.code, headers


class Parser(FlaskParser):
    """webargs' parser held to the contract: JSON bodies only; unknown or repeated query keys are errors."""

    # Query schemas say RAISE for unknown keys; let that stand (webargs excludes them by default).
    DEFAULT_UNKNOWN_BY_LOCATION = {**FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION, "query": None, "querystring": None}

    def load_json(self, req, schema):
        body = req.get_data(cache=True)  # raises 413 past MAX_CONTENT_LENGTH, when it is given
        # A body without Content-Length (chunked) is only cut at the limit: refuse one that goes on.
        if req.content_length is None and len(body) >= req.max_content_length and req.environ["wsgi.input"].read(1):
            abort(413)
        if not body:
            raise ma.ValidationError({"_schema": ["A JSON request body is required."]})
        if not req.is_json:
            abort(415)
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            abort(400)

    def load_querystring(self, req, schema):
        repeated = sorted(key for key, values in req.args.lists() if len(values) > 1)
        if repeated:
            raise ma.ValidationError({key: ["Given more than once."] for key in repeated})
        return super().load_querystring(req, schema)


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's Blueprint with the contract's parser."""

    ARGUMENTS_PARSER = Parser()

    def documents_errors(self, *codes):
        """Document error responses (in the one error shape) an operation can give."""

        def decorator(func):
            for code in codes:
                func = self.alt_response(code, response=HTTPStatus(code).name)(func)
            return func

        return decorator


# --- OpenAPI document ---

# A realistic body for each error status the service answers (500: the default response).
ERROR_EXAMPLES = {
    400: error_body(400, MESSAGES[400]),
    401: error_body(401, "Token has expired."),
    403: error_body(403, "This path belongs to another user."),
    404: error_body(404, "Task not found."),
    405: error_body(405, MESSAGES[405]),
    409: error_body(409, "This email is already registered."),
    410: error_body(410, "This cursor is too old: sync again from the start, without a cursor."),
    412: error_body(412, MESSAGES[412]),
    413: error_body(413, MESSAGES[413]),
    415: error_body(415, MESSAGES[415]),
    422: error_body(422, MESSAGES[422], errors={"json": {"title": ["Missing data for required field."]}}),
    429: error_body(429, "Too many requests (10 per 1 minute); retry later."),
    500: error_body(500, MESSAGES[500]),
    503: error_body(503, MESSAGES[503]),
}


def header_doc(description, *, always=True, **schema):
    """A response header's documentation; `always`: every such response carries it."""
    return {"description": description, "required": always, "schema": {"type": "string", **schema}}


REQUEST_ID_HEADER = header_doc("The request's id: the client's own X-Request-ID when it sent a sane one, else a new one.")
ERROR_HEADERS = {
    401: {"WWW-Authenticate": header_doc('The bearer challenge, e.g. Bearer realm="todo-api", error="invalid_token".')},
    405: {"Allow": header_doc("The methods the route allows.")},
    429: {"Retry-After": header_doc("Seconds until the limit resets.", type="integer")},
}
BEARER_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "JWT",
    "description": "The access_token from signup or login, alone: Swagger UI adds the 'Bearer ' prefix itself.",
}
NO_STORE_HEADER = {"Cache-Control": header_doc("no-store: the body holds tokens.", enum=["no-store"])}
ETAG_HEADER = {"ETag": header_doc("The task's current version; send it back in If-Match or If-None-Match.")}


def optional_header(name, description, **schema):
    """A request header parameter that clients may leave out."""
    return {"in": "header", "name": name, "required": False, "schema": {"type": "string", **schema}, "description": description}


IF_MATCH = optional_header(
    "If-Match", "Optional: the ETag the change is based on; a task that changed since answers 412 and is left as it is."
)
IF_NONE_MATCH = optional_header("If-None-Match", "Optional: the ETag of the copy you hold; an unchanged task answers 304 without a body.")


# Errors every operation of a blueprint (named by its tag) can answer.
BLUEPRINT_ERRORS = {"auth": [503], "tasks": [401, 503], "phase2": [401, 403, 503], "trash": [401, 503]}


class ClientDocPlugin(BasePlugin):
    """apispec plugin: what client generators need of the document beyond the decorators.

    Error responses (flask-smorest registers one component per status) get a realistic example
    and the headers sent with them; each operation lists its blueprint's errors (BLUEPRINT_ERRORS);
    every response documents X-Request-ID; Phase II operations
    get operation ids of their own (they share their views with /api/tasks), and their user_id
    says what it takes."""

    def response_helper(self, response, **kwargs):
        code = {status.phrase: status.value for status in HTTPStatus}.get(response.get("description"), 500)
        if "content" not in response or code not in ERROR_EXAMPLES:
            return None
        content = {media: {**body, "example": ERROR_EXAMPLES[code]} for media, body in response["content"].items()}
        return {"content": content, "headers": {"X-Request-ID": REQUEST_ID_HEADER, **ERROR_HEADERS.get(code, {})}}

    def path_helper(self, path=None, operations=None, parameters=None, **kwargs):
        for parameter in parameters or ():
            if parameter.get("name") == "user_id":
                parameter["description"] = "Your id, or for an identity provider's account its subject (its tokens' sub)."
                parameter["example"] = "1"
        return None

    def operation_helper(self, path=None, operations=None, **kwargs):
        for operation in (operations or {}).values():
            if path.startswith("/api/{user_id}/") and "operationId" in operation:
                operation["operationId"] = operation["operationId"].replace("Task", "UserTask", 1)
            responses = operation.setdefault("responses", {})
            for code in BLUEPRINT_ERRORS.get(operation.get("tags", [None])[0], ()):
                if code not in responses and str(code) not in responses:
                    responses[code] = HTTPStatus(code).name
            for response in responses.values():
                if isinstance(response, dict):
                    response.setdefault("headers", {})["X-Request-ID"] = REQUEST_ID_HEADER


def register_error_handlers(app):
    def database_unavailable(error):
        current_app.logger.error("database unavailable: %s", type(error.orig).__name__)
        db.session.rollback()
        return error_body(503, MESSAGES[503]), 503

    # The server cannot be reached, or the connection broke: a 503, and the pool reconnects.
    app.register_error_handler(OperationalError, database_unavailable)
    app.register_error_handler(InterfaceError, database_unavailable)

    @app.errorhandler(StaleDataError)
    def concurrent_change(_error):
        db.session.rollback()
        if request.if_match:
            return error_body(412, "The task changed while this request ran; fetch it again."), 412
        return error_body(409, "The task changed while this request ran; retry."), 409


# --- Auth helpers and JWT callbacks ---


def bearer_challenge(error="invalid_token"):
    """The WWW-Authenticate header of a 401 (RFC 6750: no error code when no token was sent)."""
    return {"WWW-Authenticate": f'Bearer realm="todo-api", error="{error}"' if error else 'Bearer realm="todo-api"'}


def unauthorized(message, error="invalid_token"):
    return error_body(401, message), 401, bearer_challenge(error)


def abort_revoked():
    """The 401 of a token whose session or account went away after the token was checked."""
    abort(401, message="Token has been revoked.", headers=bearer_challenge())


# flask-jwt-extended's reasons for the mistakes people make (its WrongTokenError and
# InvalidHeaderError messages), and what to send instead.
TOKEN_MISTAKES = {
    "Only non-refresh tokens are allowed": "This is a refresh token: send the access token here; the refresh token is "
    "only for POST /api/auth/refresh.",
    "Only refresh tokens are allowed": "This is an access token: POST /api/auth/refresh takes the refresh token "
    "(refresh_token from signup, login or the last refresh).",
    "Bad Authorization header": "The Authorization header is 'Bearer ' and the token alone: the word Bearer appears "
    "twice, or the token has spaces in it (in Swagger UI's Authorize, paste the token without 'Bearer').",
    "the signature's key is not one": "Invalid token: it is signed with a key the identity provider does not publish.",
    "the algorithm is not one": "Invalid token: an identity provider's token is signed with an asymmetric algorithm.",
}


def invalid_token_message(reason):
    """What is wrong with a token, for people: not PyJWT's parser internals."""
    for known, message in TOKEN_MISTAKES.items():
        if reason.startswith(known):
            return message
    if "signature" in reason.lower():
        return "Invalid token: its signature does not verify."
    if "claim" in reason.lower():
        return "Invalid token: a claim is missing or malformed."
    return "Invalid token: it is not a well-formed JWT."


# Every way a token can fail is the contract's 401, never the library's 422 {"msg": ...}.
jwt.unauthorized_loader(lambda _reason: unauthorized("Missing or malformed Authorization header.", None))
jwt.invalid_token_loader(lambda reason: unauthorized(invalid_token_message(reason)))
jwt.expired_token_loader(lambda _header, _claims: unauthorized("Token has expired."))
jwt.revoked_token_loader(lambda _header, _claims: unauthorized("Token has been revoked."))
jwt.needs_fresh_token_loader(lambda _header, _claims: unauthorized("A fresh token is needed: log in again."))
jwt.token_verification_failed_loader(lambda _header, _claims: unauthorized("Token was rejected."))
jwt.user_lookup_error_loader(lambda _header, _claims: unauthorized("Token has been revoked."))

# Identities are strings: PyJWT >= 2.10 rejects an integer "sub".
jwt.user_identity_loader(str)

# Every claim this service writes into a token, with its JSON type: a token without one of them,
# or with another type, is refused (flask-jwt-extended would take a missing "type" for "access").
TOKEN_CLAIMS = {"sub": str, "sid": str, "jti": str, "type": str, "iat": int, "exp": int}
USER_ID = re.compile(r"[1-9][0-9]{0,18}")  # ASCII digits only: no sign, space, "_" or other scripts


def has_every_claim(claims):
    return (
        all(type(claims.get(name)) is kind for name, kind in TOKEN_CLAIMS.items())
        and claims["type"] in ("access", "refresh")
        and USER_ID.fullmatch(claims["sub"]) is not None
        and int(claims["sub"]) <= MAX_ID
    )


ISSUER_ALGORITHMS = frozenset(Config.JWT_DECODE_ALGORITHMS) - {"HS256"}
ISSUER_FRESH_SECONDS = 300  # an issuer token this young counts as fresh (deleting the account)


class IssuerKeys:
    """AUTH_ISSUER's public keys (its JWKS, read with PyJWT's PyJWKClient), fetched when first
    needed and kept. A key the kept set lacks fetches the set again, at most once per
    REFETCH_AFTER seconds whatever tokens arrive; a fetch gives up after FETCH_TIMEOUT. Each
    fetch replaces the kept set: a key the issuer dropped stops verifying, a new one starts."""

    REFETCH_AFTER, FETCH_TIMEOUT = 30.0, 3.0

    def __init__(self, url):
        self.client = PyJWKClient(url, cache_jwk_set=False, cache_keys=False, timeout=self.FETCH_TIMEOUT)
        self.keys, self.lock, self.clock = {}, threading.Lock(), time.monotonic
        self.tried, self.down = None, False  # when the set was last fetched or tried; whether that failed

    def key(self, kid):
        """The issuer's key named `kid`, or None when the set, fetched, has none; a 503 while the
        set cannot be fetched and no kept key has that name."""
        with self.lock:
            if kid not in self.keys and (self.tried is None or self.clock() - self.tried >= self.REFETCH_AFTER):
                self.fetch()
            if kid in self.keys:
                return self.keys[kid]
            if self.down:
                retry = max(1, math.ceil(self.tried + self.REFETCH_AFTER - self.clock()))
                abort(
                    503, message="The identity provider's keys cannot be fetched; try again shortly.", headers={"Retry-After": str(retry)}
                )
            return None

    def fetch(self):
        self.tried, self.down = self.clock(), True
        try:
            entries = self.client.fetch_data().get("keys")
            if not isinstance(entries, list):
                raise ValueError("no keys array")
        except (PyJWKClientError, ValueError, AttributeError):
            current_app.logger.warning("the identity provider's keys could not be fetched")
            return
        self.keys = {}
        for entry in entries:
            try:
                key = PyJWK(entry)
            except (PyJWKError, PyJWTError, TypeError, ValueError, KeyError):
                continue  # a key of a kind PyJWT cannot use: no token verifies with it
            if isinstance(key.key_id, str) and key.algorithm_name in ISSUER_ALGORITHMS:
                self.keys[key.key_id] = key
        self.down = False


def is_issuer_token(claims):
    issuer = current_app.config["AUTH_ISSUER"]
    return bool(issuer) and claims.get("iss") == issuer


def is_claim_time(value):
    return type(value) in (int, float)


def has_issuer_claims(claims):
    """The claims an issuer token must carry: aud (AUTH_AUDIENCE, or a list with it), exp and
    iat, and a sub of 1-255 characters without control characters."""
    audience, subject = claims.get("aud"), claims.get("sub")
    wanted = current_app.config["AUTH_AUDIENCE"] or current_app.config["AUTH_ISSUER"]
    return (
        (audience == wanted or (isinstance(audience, list) and wanted in audience))
        and is_claim_time(claims.get("exp"))
        and is_claim_time(claims.get("iat"))
        and isinstance(subject, str)
        and 1 <= len(subject) <= 255
        and not any(unicodedata.category(char) == "Cc" for char in subject)
    )


def issuer_key(header, claims):
    """The issuer's key that verifies this token (the signature check follows): the token's
    alg must be asymmetric and its key's (PyJWT checks the latter), its kid one the issuer
    publishes, its claims complete."""
    if header.get("alg") not in ISSUER_ALGORITHMS:
        raise JWTDecodeError("the algorithm is not one an identity provider signs with")
    if not has_issuer_claims(claims):
        raise JWTDecodeError("a claim is missing or malformed")
    kid = header.get("kid")
    key = current_app.extensions["issuer_keys"].key(kid) if isinstance(kid, str) and kid else None
    if key is None:
        raise JWTDecodeError("the signature's key is not one the identity provider publishes")
    return key


@jwt.decode_key_loader
def key_for_a_complete_token(header, claims):
    """The key that verifies a token: the issuer's (issuer_key) for a token whose iss is
    AUTH_ISSUER; else the configured one, given only for an HS256 token that carries every
    claim of TOKEN_CLAIMS. Anything else is a 401 before its signature is even checked.
    (Nothing is accepted from these unverified claims; the signature check follows.)"""
    if is_issuer_token(claims):
        return issuer_key(header, claims)
    if header.get("alg") != "HS256" or not has_every_claim(claims):
        raise JWTDecodeError("a claim is missing or malformed")
    return flask_jwt_extended.config.config.decode_key


# Statements built once; requests bind values, and SQLAlchemy reuses the compiled SQL.
sessions_table = UserSession.__table__
SESSION_USER = (
    select(
        users_table.c.id,
        users_table.c.email,
        users_table.c.name,
        users_table.c.created_at,
        users_table.c.issuer,
        users_table.c.subject,
        users_table.c.task_count,
        users_table.c.change_seq,
        sessions_table.c.refresh_jti,
    )
    .join(sessions_table)
    .where(
        users_table.c.id == bindparam("user_id"),
        sessions_table.c.id == bindparam("sid"),
        sessions_table.c.expires_at > bindparam("now"),  # a session ends when its refresh lifetime does
    )
)


ACCOUNT_COLUMNS = [column for column in SESSION_USER.selected_columns if column.table is users_table]
ISSUER_ACCOUNT = select(*ACCOUNT_COLUMNS, null().label("refresh_jti")).where(
    users_table.c.issuer == bindparam("issuer"), users_table.c.subject == bindparam("subject")
)
DIALECT_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def claim_text(claims, name, longest):
    """A profile claim (email, name) as the account keeps it, or None: text without NUL, cut to `longest`."""
    value = claims.get(name)
    return value.replace("\x00", "")[:longest] if isinstance(value, str) else None


def issuer_account(claims):
    """The account of an issuer token's (issuer, sub), made by its first accepted token (one,
    however many requests arrive at once) and never joined to a local account; its email and
    name follow the token's claims."""
    params = {"issuer": claims["iss"], "subject": claims["sub"]}
    email, name = claim_text(claims, "email", 254), claim_text(claims, "name", 100) or ""
    connection = db.session.connection()
    row = connection.execute(ISSUER_ACCOUNT, params).first()
    if row is None:
        made = DIALECT_INSERTS[connection.dialect.name](users_table).on_conflict_do_nothing(index_elements=["issuer", "subject"])
        connection.execute(made, {**params, "email": email, "name": name, "created_at": utcnow()})
    elif (row.email, row.name) != (email, name):
        connection.execute(update(users_table).where(users_table.c.id == row.id).values(email=email, name=name))
    else:
        return row
    return connection.execute(ISSUER_ACCOUNT, params).first()


@jwt.user_lookup_loader
def load_session_user(_header, claims):
    """An issuer token's account (issuer_account); else one query checks the token's session
    (for a refresh token, that it is the session's current one) and loads its user. None makes
    the token a 401."""
    if is_issuer_token(claims):
        return issuer_account(claims)
    params = {"user_id": int(claims["sub"]), "sid": claims["sid"], "now": utcnow()}  # has_every_claim checked them
    # A row, not an ORM object: most requests only need the id. Views that change the user load it.
    row = db.session.connection().execute(SESSION_USER, params).first()
    if row is not None and claims["type"] == "refresh" and row.refresh_jti != claims["jti"]:
        # A refresh token that was already rotated away is being replayed: the signature of a
        # stolen one. End the session: its access and refresh tokens, the thief's and the owner's.
        db.session.execute(delete(UserSession).where(UserSession.id == claims["sid"]))
        db.session.commit()
        return None
    return row


def new_token_id():
    """128 random bits, URL-safe: session ids and token ids (short, for short tokens)."""
    return secrets.token_urlsafe(16)


def refresh_lifetime():
    return timedelta(seconds=current_app.config["JWT_REFRESH_TOKEN_EXPIRES"])


def token_pair(user, session_id, refresh_jti, *, fresh):
    """A TokenPair: an access token and the given refresh token of one session."""
    claims = {"sid": session_id}
    return (
        {
            "access_token": create_access_token(user.id, fresh=fresh, additional_claims={**claims, "jti": new_token_id()}),
            "refresh_token": create_refresh_token(user.id, additional_claims={**claims, "jti": refresh_jti}),
            "token_type": "Bearer",
            "expires_in": current_app.config["JWT_ACCESS_TOKEN_EXPIRES"],
            "user": user,
        },
        {"Cache-Control": "no-store"},
    )


def issue_token_pair(user):
    """Start a new session for a user who just proved their password."""
    db.session.flush()  # the user's id
    session = UserSession(id=new_token_id(), user_id=user.id, refresh_jti=new_token_id(), expires_at=utcnow() + refresh_lifetime())
    db.session.add(session)
    return token_pair(user, session.id, session.refresh_jti, fresh=True)


def own_account():
    """The caller's User, to change, locked until the commit (so an account deletion running
    meanwhile finishes first); a 401 when that deleted it."""
    user = db.session.get(User, current_user.id, with_for_update=True)
    if user is None:
        abort_revoked()
    return user


def login_email_key():
    """The email a login is for, as the per-email limit counts it (read before validation)."""
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # absurdly deep JSON; the parser answers it with a 400 next
        body = None
    email = body.get("email") if isinstance(body, dict) else None
    return f"login-email:{email.strip().lower() if isinstance(email, str) else ''}"


def local_accounts(view):
    """A route of local accounts: a 403 while LOCAL_ACCOUNTS is off (the identity provider signs people in)."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        if not current_app.config["LOCAL_ACCOUNTS"]:
            abort(403, message="Local accounts are off here: sign in with the identity provider (AUTH_ISSUER).")
        return view(*args, **kwargs)

    return wrapper


def bearer_claims():
    """The bearer token's claims, unverified, or {} (to tell an issuer token; verification follows)."""
    scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
    try:
        return decode_unverified(token.strip(), options={"verify_signature": False}) if scheme == "Bearer" else {}
    except PyJWTError:
        return {}


def issuer_manages(view):
    """A route of the service's own sessions and profiles: with a valid issuer token, a 403."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        if is_issuer_token(bearer_claims()):
            verify_jwt_in_request()
            abort(403, message="The identity provider (AUTH_ISSUER) manages this account's sessions and profile.")
        return view(*args, **kwargs)

    return wrapper


def require_fresh_token():
    """A fresh token (the service's own from signup or login; an issuer token at most
    ISSUER_FRESH_SECONDS old), else flask-jwt-extended's 401 for a token that is not fresh."""
    claims = get_jwt()
    fresh = time.time() - claims["iat"] <= ISSUER_FRESH_SECONDS if is_issuer_token(claims) else claims["fresh"] is True
    if not fresh:
        raise FreshTokenRequired("Fresh token required", get_jwt_header(), claims)


def config_limit(key):
    return lambda: current_app.config[key]


# --- Write transactions and Idempotency-Key ---

IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}")
IDEMPOTENCY_HEADER = optional_header(
    "Idempotency-Key",
    "Optional: 1-255 printable ASCII characters of your choice, new for each operation (HTTP drops spaces around a "
    "header value: they are not part of the key). A retry with the same key within IDEMPOTENCY_TTL (a day) gets the "
    "first success's answer again (with Idempotent-Replayed: true) and changes nothing; the same key on another request "
    "is a 422; while the first is still being served, a 409.",
    minLength=1,
    maxLength=255,
    pattern="^[!-~]([ -~]{0,253}[!-~])?$",
)
REPLAYED_HEADER = {
    "Idempotent-Replayed": header_doc(
        "true: this is the stored answer to an earlier request with the same Idempotency-Key.", always=False, enum=["true"]
    )
}
STORED_ANSWER = select(IdempotencyKey).where(IdempotencyKey.user_id == bindparam("user_id"), IdempotencyKey.key == bindparam("key"))


def idempotency_key():
    """The request's Idempotency-Key, checked; None when it has none."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
        message = "Must be 1-255 printable ASCII characters (0x20-0x7E)."
        abort(422, message=MESSAGES[422], errors={"headers": {"Idempotency-Key": [message]}})
    return key


def request_hash():
    """What makes a request the same request: method, path and body (JSON compared as data)."""
    body = request.get_data(cache=True)
    try:
        body = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except (ValueError, RecursionError):
        pass
    return hashlib.sha256(f"{request.method} {request.path}\n".encode() + body).hexdigest()


def in_flight_lock(user_id, key):
    """The PostgreSQL advisory lock (a signed 64-bit number) that marks a user's key in flight."""
    return int.from_bytes(hashlib.blake2b(f"{user_id}:{key}".encode(), digest_size=8).digest(), "big", signed=True)


def hold_key(key):
    """On PostgreSQL, mark this request as the one serving the caller's key until its transaction
    ends (a transaction-scoped advisory lock): a second request with the key meanwhile is a 409.
    SQLite runs writes one at a time: a second one waits its turn, then finds the answer."""
    connection = db.session.connection()
    if connection.dialect.name != "postgresql":
        return False
    if not connection.execute(select(func.pg_try_advisory_xact_lock(in_flight_lock(current_user.id, key)))).scalar():
        abort(409, message="A request with this Idempotency-Key is still being served; retry later.")
    return True


def is_fresh(stored):
    return stored is not None and stored.created_at > utcnow() - timedelta(seconds=current_app.config["IDEMPOTENCY_TTL"])


def earlier_answer(key):
    """The answer stored for the caller's key within IDEMPOTENCY_TTL, or None: then this request
    holds the key (hold_key), and an older answer makes way for its own, whether or not
    `flask purge` has run. Once the key is held, it is looked for again: the request that held
    it before may have committed in between."""
    params = {"user_id": current_user.id, "key": key}
    stored = db.session.scalar(STORED_ANSWER, params)
    if not is_fresh(stored) and hold_key(key):
        stored = db.session.scalar(STORED_ANSWER.execution_options(populate_existing=True), params)
    if stored is not None and not is_fresh(stored):
        db.session.delete(stored)  # the new answer takes its place in the same flush
        return None
    return stored


def replay(stored):
    headers = {"Idempotent-Replayed": "true", "Location": stored.location, "ETag": stored.etag, "Link": stored.link}
    response = current_app.response_class(stored.body, status=stored.status, mimetype="application/json")
    response.headers.extend({name: value for name, value in headers.items() if value is not None})
    return response


def idempotent(view):
    """A write view that honours Idempotency-Key: a request with a key already answered gets
    that answer again and runs nothing (a 422 if it answered another request); a new one stores
    its 2xx answer with the key, for the view's transaction to commit with the write."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        key = idempotency_key()
        if key is None:
            return view(*args, **kwargs)
        fingerprint = request_hash()
        if (stored := earlier_answer(key)) is not None:
            if stored.request_hash != fingerprint:
                message = "This Idempotency-Key was used for a different request; use a new key."
                abort(422, message=message, errors={"headers": {"Idempotency-Key": [message]}})
            return replay(stored)
        response = view(*args, **kwargs)
        if 200 <= response.status_code < 300:
            db.session.add(IdempotencyKey.answer(response, current_user.id, key, fingerprint))
        return response

    return wrapper


def transaction(view):
    """A write view's one transaction, committed when its answer is a success."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        response = view(*args, **kwargs)
        if 200 <= response.status_code < 300:
            db.session.commit()
        return response

    return wrapper


# --- Auth routes ---

auth = Blueprint("auth", __name__, url_prefix="/api/auth", description="Accounts, sessions and tokens.")
NO_AUTH = {"security": []}
# Request examples that succeed as they are, in this order (Swagger UI's "Try it out").
# Not the README walk-through's account (ada@): a reader who did both would meet a 409.
ACCOUNT = {"email": "grace@example.com", "password": "correct horse battery"}


@auth.route("/signup", methods=["POST"])
@local_accounts
@limiter.limit(config_limit("SIGNUP_ADDRESS_LIMIT"))
@transaction
@auth.arguments(SignupSchema(), description="The new account.", example={**ACCOUNT, "name": "Grace"})
@auth.response(201, TokenPairSchema, headers=NO_STORE_HEADER)
@auth.documents_errors(400, 403, 409, 413, 415, 429)
@auth.doc(operationId="signup", **NO_AUTH)
def signup(data):
    """Create an account and log in"""
    user = User(email=data["email"], name=data.get("name") or "")
    user.set_password(data["password"])
    db.session.add(user)
    try:
        body, headers = issue_token_pair(user)  # its flush meets the unique email
    except IntegrityError:
        db.session.rollback()
        abort(409, message="This email is already registered.")
    return body, 201, headers


@auth.route("/login", methods=["POST"])
@local_accounts
@limiter.limit(config_limit("LOGIN_ADDRESS_LIMIT"))
@limiter.limit(config_limit("LOGIN_EMAIL_LIMIT"), key_func=login_email_key, deduct_when=lambda r: r.status_code == 401)
@transaction
@auth.arguments(LoginSchema(), description="The account's credentials.", example=ACCOUNT)
@auth.response(200, TokenPairSchema, headers=NO_STORE_HEADER)
@auth.documents_errors(400, 401, 403, 413, 415, 429)
@auth.doc(operationId="login", **NO_AUTH)
def login(data):
    """Log in: start a session"""
    user = db.session.scalar(select(User).where(User.email == data["email"], User.issuer.is_(None)))
    db.session.commit()  # end the read: no database lock is held through the slow hash check
    # An unknown email is checked against a dummy hash: both failures cost the same.
    if not (user or User(password_hash=DUMMY_HASH)).verify_password(data["password"]) or user is None:
        abort(401, message="Invalid email or password.", headers=bearer_challenge(None))
    return issue_token_pair(user)


@auth.route("/refresh", methods=["POST"])
@local_accounts
@issuer_manages
@jwt_required(refresh=True)
@transaction
@auth.response(200, TokenPairSchema, headers=NO_STORE_HEADER)
@auth.documents_errors(401, 403)
@auth.doc(operationId="refreshTokens", description="Send the refresh token as the bearer token. The refresh token used is revoked.")
def refresh():
    """Trade a refresh token for a new pair"""
    claims = get_jwt()
    new_jti = new_token_id()
    # Compare-and-set: of two concurrent refreshes with one token, only one wins.
    rotated = db.session.execute(
        update(UserSession)
        .where(UserSession.id == claims["sid"], UserSession.refresh_jti == claims["jti"])
        .values(refresh_jti=new_jti, expires_at=utcnow() + refresh_lifetime())
    ).rowcount
    if rotated != 1:
        abort_revoked()
    return token_pair(current_user, claims["sid"], new_jti, fresh=False)


@auth.route("/logout", methods=["POST"])
@issuer_manages
@jwt_required()
@transaction
@auth.response(204)
@auth.documents_errors(401, 403)
@auth.doc(operationId="logout")
def logout():
    """Log out: revoke this session's access and refresh tokens"""
    db.session.execute(delete(UserSession).where(UserSession.id == get_jwt()["sid"]))


@auth.route("/me")
class Me(MethodView):
    @jwt_required()
    @auth.response(200, UserSchema)
    @auth.documents_errors(401)
    @auth.doc(operationId="getAccount")
    def get(self):
        """Show your account"""
        return current_user

    @issuer_manages
    @jwt_required()
    @transaction
    @auth.arguments(ProfileSchema(), description="Your new name.", example={"name": "Ada Lovelace"})
    @auth.response(200, UserSchema)
    @auth.documents_errors(400, 401, 403, 413, 415)
    @auth.doc(operationId="updateAccount")
    def patch(self, data):
        """Change your name"""
        user = own_account()
        user.name = data["name"]
        return user

    @jwt_required()
    @transaction
    @auth.response(204)
    @auth.documents_errors(401)
    @auth.doc(operationId="deleteAccount", description="Needs a fresh access token: one from signup or login, not from refresh.")
    def delete(self):
        """Delete your account and all your tasks"""
        require_fresh_token()
        delete_account(db.session.connection(), current_user.id)


@auth.route("/password", methods=["POST"])
@local_accounts
@issuer_manages
@jwt_required()
@transaction
@auth.arguments(
    PasswordChangeSchema(),
    description="The current password and the new one.",
    example={"current_password": ACCOUNT["password"], "new_password": "correct horse battery staple"},
)
@auth.response(200, TokenPairSchema, headers=NO_STORE_HEADER)
@auth.documents_errors(400, 401, 403, 413, 415)
@auth.doc(operationId="changePassword", description="Every earlier token of this user is revoked; a new session starts.")
def change_password(data):
    """Change your password"""
    user = own_account()
    if not user.verify_password(data["current_password"]):
        abort(403, message="The current password is wrong.")
    user.set_password(data["new_password"])
    db.session.execute(delete(UserSession).where(UserSession.user_id == user.id))
    return issue_token_pair(user)


# --- Task helpers: the rows read, ownership, ETags ---

# Reads select rows of these columns (by the names TaskSchema reads): cheaper than ORM objects.
tasks_table = Task.__table__
TASK_COLUMNS = [column for column in tasks_table.c if column.name not in ("user_id", "title_key", "search_key", "recurred")]

LIVE = Task.deleted_at.is_(None)  # not in the trash: every /api/tasks route sees only these


# FOR UPDATE (PostgreSQL; SQLite's BEGIN IMMEDIATE already runs writes one at a time): a write
# locks its task as it reads it, so a concurrent writer of the same task waits for this one to
# commit and then works on the task as it left it. Without the lock, the later write would read
# the earlier version and fail its version check. Every path that locks both takes its tasks'
# rows first and then their owner's (next_change): these reads, TRASHED_TASK, delete_for_good and
# account deletion; in the other order, two of them could each wait for the other (a deadlock).
OWN_TASK = select(Task).where(Task.id == bindparam("task_id"), Task.user_id == bindparam("user_id"), LIVE).with_for_update()
OWN_TASK_ROW = select(*TASK_COLUMNS).where(Task.id == bindparam("task_id"), Task.user_id == bindparam("user_id"), LIVE)


def found_or_404(task):
    if task is None:
        abort(404, message="Task not found.")
    return task


def lock_own_task_or_404(task_id):
    """The caller's task, to change, locked until the commit. Another user's task, or an id no
    database holds, is a 404."""
    return found_or_404(db.session.scalar(OWN_TASK, {"task_id": task_id, "user_id": current_user.id}))


def own_task_row_or_404(task_id):
    """The caller's task as a row, to read: cheaper than an ORM object. Else as lock_own_task_or_404."""
    params = {"task_id": task_id, "user_id": current_user.id}
    return found_or_404(db.session.connection().execute(OWN_TASK_ROW, params).first())


def caller_owns_path(view):
    """Phase II paths carry the caller's id (an issuer account's: its subject, or its id): any
    other is a 403 (after auth, before anything else)."""

    @wraps(view)
    def wrapper(*args, user_id=None, **kwargs):
        if user_id is not None and user_id not in (str(current_user.id), current_user.subject):
            abort(403, message="This path belongs to another user.")
        return view(*args, **kwargs)

    return wrapper


def task_etag(task):
    """A task's entity tag: its id and version, which moves on every write."""
    return f"{task.id}.{task.version}"


def with_etag(task):
    """A task answer's body and its ETag header."""
    return task, {"ETag": quote_etag(task_etag(task))}


def check_if_match(task):
    """412 unless the task still has the ETag the client sent, if it sent one (If-Match is optional)."""
    if request.if_match and not request.if_match.contains(task_etag(task)):
        abort(412)


class OwnTasksView(MethodView):
    """The caller's tasks: a valid access token first, then (on Phase II paths) the path's user."""

    decorators = [caller_owns_path, jwt_required()]  # the last one runs first


# --- Listing: filters, sorts, keyset cursors, pages ---

SORT_COLUMNS = {
    "created_at": Task.created_at,
    "updated_at": Task.updated_at,
    "due_date": Task.due_date,
    "priority": Task.priority,
    "title": Task.title_key,
}


# Filters as conditions on bound parameters of the same names, and how an argument binds.
FILTER_CONDITIONS = {
    "completed": Task.completed == bindparam("completed"),
    "priority": Task.priority == bindparam("priority"),
    "tag": exists().where(task_tags.c.task_id == Task.id, task_tags.c.user_id == bindparam("user_id"), task_tags.c.tag == bindparam("tag")),
    "q": or_(Task.title_key.like(bindparam("q"), escape="/"), Task.search_key.like(bindparam("q"), escape="/")),  # each on its own
    # Spelled as the due-date indexes lead, (due_date IS NULL) first: a range of one of them.
    "due_before": and_(Task.due_date.is_(None) == false(), Task.due_date < bindparam("due_before")),
    "due_after": and_(Task.due_date.is_(None) == false(), Task.due_date > bindparam("due_after")),
}
FILTER_VALUES = {
    "priority": PRIORITIES.index,
    "tag": str.lower,
    "q": lambda q: "%" + q.lower().replace("/", "//").replace("%", "/%").replace("_", "/_") + "%",  # a literal substring
}


def keyset_condition(sort, after):
    """The tasks that come after (value, id) in a listing's order, as an index range where the
    order allows one. `after`: "value", or "null" for a last task without a due date."""
    key, descending = sort.lstrip("-"), sort.startswith("-")
    column, value, tie = SORT_COLUMNS[key], bindparam("after_value", type_=SORT_COLUMNS[key].type), bindparam("after_id", type_=Id)
    beyond = operator.lt if descending else operator.gt
    if key != "due_date":
        return beyond(tuple_(column, Task.id), tuple_(value, tie))
    if after == "null":  # tasks without a due date come last either way, in id order
        return and_(Task.due_date.is_(None), beyond(Task.id, tie))
    return or_(Task.due_date.is_(None), beyond(tuple_(Task.due_date, Task.id), tuple_(value, tie)))


# A tag's count, from the index of the tag rows alone: the user's rows with the tag, less those
# of their tasks in the trash (which keep their rows; the trash, emptied as it ages, is small).
TAG_COUNT = select(
    select(func.count()).where(task_tags.c.user_id == bindparam("user_id"), task_tags.c.tag == bindparam("tag")).scalar_subquery()
    - select(func.count())
    .where(Task.user_id == bindparam("user_id"), Task.deleted_at.is_not(None), FILTER_CONDITIONS["tag"])
    .scalar_subquery()
)


@functools.cache
def listing_statements(filters, sort, after=None):
    """The page and count statements for one shape of listing (which filters, which order, a
    page by number or by keyset), built once per process: a request only binds its values."""
    conditions = [Task.user_id == bindparam("user_id"), LIVE, *(FILTER_CONDITIONS[name] for name in sorted(filters))]
    key = sort.lstrip("-")
    column, tie = SORT_COLUMNS[key], Task.id
    order = [column.desc(), tie.desc()] if sort.startswith("-") else [column.asc(), tie.asc()]
    if key == "due_date":
        order.insert(0, Task.due_date.is_(None))  # no due date: last either way
    page = select(*TASK_COLUMNS).where(*conditions).order_by(*order).limit(bindparam("size"))
    if after is None:
        page = page.offset(bindparam("offset"))
    else:
        page = page.where(keyset_condition(sort, after))
    if filters == {"tag"}:
        return page, TAG_COUNT
    return page, select(func.count()).select_from(tasks_table).where(*conditions)


def listing_fingerprint(args):
    """What a keyset cursor must be used with: the sort and the filters' values."""
    shape = [
        args["sort"],
        *sorted((name, str(FILTER_VALUES.get(name, str)(args[name]))) for name in FILTER_CONDITIONS.keys() & args.keys()),
    ]
    return hashlib.sha256(json.dumps(shape).encode()).hexdigest()[:16]


def sort_value(task, key):
    """A task's value for a sort key, as a cursor holds it (JSON)."""
    if key == "title":
        return search_keys(task.title, "")["title_key"]
    if key == "priority":
        return task.priority
    value = getattr(task, key)
    return None if value is None else value.isoformat()


def sort_value_from_json(key, value):
    """The inverse of sort_value; TypeError or ValueError when `value` cannot be one."""
    if key == "title":
        if not isinstance(value, str):
            raise TypeError(key)
        return value
    if key == "priority":
        if not is_json_count(value, len(PRIORITIES) - 1):
            raise TypeError(key)
        return value
    if value is None and key == "due_date":
        return None
    moment = datetime.fromisoformat(value)  # TypeError unless a string
    if moment.tzinfo is not None:
        raise ValueError(key)
    return moment


def keyset_position(args):
    """The (sort value, id) an `after` cursor continues from, once it proves to be this account's,
    for this sort and these filters; else a 422 naming `after`. (The MAC proves the service made
    it; what it holds is still checked before it reaches SQL.)"""

    def refuse(message):
        abort(422, message=MESSAGES[422], errors={"query": {"after": [message]}})

    try:
        owner, fingerprint, value, task_id = args["after"]
        position = (sort_value_from_json(args["sort"].lstrip("-"), value), task_id)
        if not is_json_count(task_id):
            raise TypeError(task_id)
    except (TypeError, ValueError):
        refuse(Cursor.default_error_messages["invalid"])
    if owner != current_user.id:
        refuse("This cursor was made for another account.")
    if fingerprint != listing_fingerprint(args):
        refuse("This cursor was made for another sort or other filters.")
    return position


# A due range often matches few of a user's tasks (none, for one who sets no due dates), where
# a page in another order would step over every task: its count, read from a due-date index,
# comes first, and a page that starts past it is not read.
COUNTED_FIRST = {"due_before", "due_after"}


def select_tasks(user, args):
    """One page of a user's tasks for validated query args, the total, and whether more tasks
    follow: one SQL statement for the page. The total is the user's task counter when nothing is
    filtered; else a due range is counted first; else a page by number tells it when it is short;
    else one more statement counts."""
    filters = FILTER_CONDITIONS.keys() & args.keys()
    after = keyset_position(args) if args["page"] is None else None
    shape = None if after is None else "null" if after[0] is None else "value"
    page_query, count_query = listing_statements(frozenset(filters), args["sort"], shape)
    params = {name: FILTER_VALUES.get(name, lambda value: value)(args[name]) for name in filters}
    params["user_id"] = user.id
    size = args["page_size"]
    connection = db.session.connection()
    count = lambda: connection.execute(count_query, params).scalar()  # noqa: E731
    total = user.task_count if not filters else count() if filters & COUNTED_FIRST else None
    if after is not None:
        page = connection.execute(page_query, {**params, "size": size + 1, "after_value": after[0], "after_id": after[1]}).all()
        return page[:size], count() if total is None else total, len(page) > size
    offset = PaginationParameters(args["page"], size).first_item
    page = [] if total is not None and offset >= total else connection.execute(page_query, {**params, "size": size, "offset": offset}).all()
    if total is None:
        total = offset + len(page) if 0 < len(page) < size or (offset == 0 and not page) else count()
    return page, total, bool(page) and offset + len(page) < total


def pagination_metadata(page, page_size, total):
    """flask-smorest's X-Pagination metadata, as its PaginationMetadataSchema documents it: the
    total, the page count, and the first, last, previous, next and current pages that exist; a
    keyset page (no page number) has the total and the page count. Not `@blp.paginate`: it parses
    page and page_size by a looser schema of its own, and its metadata has no keyset page."""
    meta = {"total": total, "total_pages": -(-total // page_size)}
    if total and page is not None:
        meta.update(first_page=1, last_page=meta["total_pages"])
        if page <= meta["last_page"]:
            meta["page"] = page
            if page > 1:
                meta["previous_page"] = page - 1
            if page < meta["last_page"]:
                meta["next_page"] = page + 1
    return meta


LINK_PAGES = {"first": "first_page", "prev": "previous_page", "next": "next_page", "last": "last_page"}
QUERY_SAFE = "!$'()*,/:;?@"  # what werkzeug's url_for leaves unquoted in a query string


def pagination_headers(args, total, next_cursor=None):
    """flask-smorest's X-Pagination (plus next_cursor when more tasks follow), and an RFC 8288
    Link header that keeps the query's filters. A keyset page (after=) has only total,
    total_pages and next_cursor, and links to the next page and the first."""
    meta = pagination_metadata(args["page"], args["page_size"], total)
    if next_cursor is not None:
        meta["next_cursor"] = next_cursor
    headers = {"X-Pagination": json.dumps(meta)}
    path, query = url_for(request.endpoint, **request.view_args), request.args.to_dict()
    link = lambda changes, rel: f'<{path}?{urlencode({**query, **changes}, safe=QUERY_SAFE)}>; rel="{rel}"'  # noqa: E731
    if args["page"] is None:
        query.pop("after")
        links = [link({"after": next_cursor}, "next")] if next_cursor is not None else []
        links.append(f'<{path}?{urlencode(query, safe=QUERY_SAFE)}>; rel="first"' if query else f'<{path}>; rel="first"')
    else:
        links = [link({"page": meta[field]}, rel) for rel, field in LINK_PAGES.items() if field in meta]
    if links:
        headers["Link"] = ", ".join(links)
    return headers


def listing_cursor(args, task):
    """The next_cursor after `task`, the last of a page."""
    return encode_cursor("after", current_user.id, listing_fingerprint(args), sort_value(task, args["sort"].lstrip("-")), task.id)


# --- Task routes ---


tasks = Blueprint("tasks", __name__, url_prefix="/api/tasks", description="Your tasks.")


LIST_HEADERS = {
    "X-Pagination": {
        "description": "flask-smorest's pagination metadata, as JSON; only total and total_pages when nothing matched.",
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ListPageMetadata"}}},
    },
    "Link": header_doc(
        'RFC 8288 links to the first, prev, next and last pages, filters kept: </api/tasks?page=2>; rel="next", ...; none when '
        "nothing matched. On a page by after=: next (by after) and first.",
        always=False,
    ),
}
CREATED_HEADERS = {**ETAG_HEADER, "Location": header_doc("The new task's URL: /api/tasks/<id>.")}
NEXT_OCCURRENCE_HEADER = {
    "Link": header_doc(
        'When this answer completed a recurring task: its new next occurrence, </api/tasks/<id>>; rel="next-occurrence".',
        always=False,
    )
}
TASK_EXAMPLE = {
    "title": "Write the report",
    "description": "Two pages",
    "priority": "high",
    "due_date": "2026-12-01T09:00:00Z",
    "tags": ["work"],
}  # not recurring: toggling it in "Try it out" would quietly create its next occurrence


def task_with_location(task):
    """A task answer with its ETag and Location."""
    task, headers = with_etag(task)
    return task, {**headers, "Location": url_for("tasks.TaskById", task_id=task.id)}


def update_task(task, changes):
    """Apply changes to a task unless If-Match says it moved on. A real change is written at
    once, so the answer carries its new version; the view's transaction commits it.

    Every path that completes a task comes here: a recurring task that becomes completed for
    the first time makes its next occurrence (from its fields after `changes`), in the same
    change, and the answer links it."""
    check_if_match(task)
    was_completed, successors = task.completed, []
    if task.apply(changes):
        if changes.keys() & {"recurrence", "due_date"}:
            check_recurrence(task.recurrence, task.due_date)
        created = []
        if task.completed and not was_completed and task.recurrence and not task.recurred:
            task.recurred = True  # once: completed again after a reopening, it makes none
            created = [fields] if (fields := next_occurrence(task)) is not None else []
        successors = write_tasks(task.user_id, created, [task])
    task, headers = with_etag(task)
    for successor in successors:
        headers["Link"] = f'<{url_for("tasks.TaskById", task_id=successor.id)}>; rel="next-occurrence"'
    return task, headers


@tasks.route("")
class Tasks(OwnTasksView):
    @tasks.arguments(TaskQueryArgsSchema(), location="query")
    @tasks.response(200, TaskSchema(many=True), headers=LIST_HEADERS)
    @tasks.doc(operationId="listTasks")
    def get(self, args):
        """List your tasks: filter, search, sort and page"""
        page, total, more = select_tasks(current_user, args)
        return page, pagination_headers(args, total, listing_cursor(args, page[-1]) if more else None)

    @transaction
    @idempotent
    @tasks.arguments(TaskInSchema(), description="The new task; only title is required.", example=TASK_EXAMPLE)
    @tasks.response(201, TaskSchema, headers={**CREATED_HEADERS, **REPLAYED_HEADER})
    @tasks.documents_errors(400, 409, 413, 415)
    @tasks.doc(operationId="createTask", parameters=[IDEMPOTENCY_HEADER])
    def post(self, data):
        """Create a task"""
        check_recurrence(data["recurrence"], data["due_date"])
        return task_with_location(write_tasks(current_user.id, created=[data])[0])


@tasks.route(f"/{TASK_ID}")
class TaskById(OwnTasksView):
    @tasks.response(200, TaskSchema, headers=ETAG_HEADER)
    @tasks.alt_response(304, description="Not Modified: If-None-Match names the task's current ETag.", headers=ETAG_HEADER)
    @tasks.documents_errors(404)
    @tasks.doc(operationId="getTask", parameters=[IF_NONE_MATCH])
    def get(self, task_id):
        """Show a task"""
        task = own_task_row_or_404(task_id)
        if request.if_none_match.contains_weak(task_etag(task)):
            return current_app.response_class(status=304, headers=with_etag(task)[1])
        return with_etag(task)

    @transaction
    @tasks.arguments(TaskInSchema(), description="Every writable field; only title is required.", example=TASK_EXAMPLE)
    @tasks.response(200, TaskSchema, headers={**ETAG_HEADER, **NEXT_OCCURRENCE_HEADER})
    @tasks.documents_errors(400, 404, 412, 413, 415)
    @tasks.doc(
        operationId="replaceTask",
        parameters=[IF_MATCH],
        description="Replaces every writable field: omitted optional fields go back to their defaults.",
    )
    def put(self, data, task_id):
        """Replace a task"""
        return update_task(lock_own_task_or_404(task_id), data)

    @transaction
    @tasks.arguments(
        TaskPatchSchema(), description="Only the fields to change; {} changes nothing.", example={"title": "Write the final report"}
    )
    @tasks.response(200, TaskSchema, headers={**ETAG_HEADER, **NEXT_OCCURRENCE_HEADER})
    @tasks.documents_errors(400, 404, 412, 413, 415)
    @tasks.doc(operationId="updateTask", parameters=[IF_MATCH])
    def patch(self, data, task_id):
        """Change some fields of a task"""
        return update_task(lock_own_task_or_404(task_id), data)

    @transaction
    @tasks.response(204)
    @tasks.documents_errors(404, 412)
    @tasks.doc(operationId="deleteTask", parameters=[IF_MATCH], description="Moves the task to the trash (see /api/trash).")
    def delete(self, task_id):
        """Delete a task: move it to the trash"""
        task = lock_own_task_or_404(task_id)
        check_if_match(task)
        task.deleted_at = utcnow()
        write_tasks(current_user.id, changed=[task])


@tasks.route(f"/{TASK_ID}/complete")
class TaskCompletion(OwnTasksView):
    @transaction
    @idempotent
    @tasks.response(200, TaskSchema, headers={**ETAG_HEADER, **NEXT_OCCURRENCE_HEADER, **REPLAYED_HEADER})
    @tasks.documents_errors(404, 409, 412)
    @tasks.doc(operationId="toggleTaskCompletion", parameters=[IF_MATCH, IDEMPOTENCY_HEADER])
    def patch(self, task_id):
        """Toggle whether a task is completed"""
        task = lock_own_task_or_404(task_id)
        return update_task(task, {"completed": not task.completed})


# --- Incremental sync ---


def sync_statement():
    """A user's changes after a position (change number, id), in that order: the tasks rows
    written since (a trashed one is a tombstone) and the tombstones of tasks deleted for good,
    at most `size`. One statement, so one snapshot of both tables (two could each miss a change
    the other saw). During a full sync (`full`: the change number it started from) rows up to
    that number are only the live tasks."""
    beyond = lambda number, task_id: tuple_(number, task_id) > tuple_(bindparam("seq"), bindparam("after_id"))  # noqa: E731
    rows = (
        select(*TASK_COLUMNS)
        .where(Task.user_id == bindparam("user_id"), beyond(Task.change_seq, Task.id), or_(LIVE, Task.change_seq > bindparam("full")))
        .order_by(Task.change_seq, Task.id)
        .limit(bindparam("size"))
        .subquery()
    )
    tombstone = TaskTombstone.__table__.c
    stand_in = {"id": tombstone.task_id, "change_seq": tombstone.change_seq, "deleted_at": tombstone.deleted_at}
    gone = (
        select(*(stand_in.get(column.key, cast(null(), column.type)).label(column.key) for column in TASK_COLUMNS))
        .where(
            tombstone.user_id == bindparam("user_id"),
            beyond(tombstone.change_seq, tombstone.task_id),
            tombstone.change_seq > bindparam("full"),
        )
        .order_by(tombstone.change_seq, tombstone.task_id)
        .limit(bindparam("size"))
        .subquery()
    )
    both = union_all(select(rows), select(gone)).subquery()
    return select(both).order_by(both.c.change_seq, both.c.id).limit(bindparam("size"))


SYNC_CHANGES = sync_statement()
TASK_SCHEMA = TaskSchema()


def sync_changes(user, cursor, limit):
    """The changes after `cursor` ([owner, change number, id, full sync's start or 0, issued at]),
    and the next cursor. An answer that ends the changes (no has_more) moves the cursor to the
    user's change number read with the token's session, before the changes were: every change
    up to it had committed, so none is left behind."""
    now = int(time.time())
    if cursor is None:
        seq, after_id, full = 0, 0, user.change_seq  # a full sync: every live task
    else:
        owner, seq, after_id, full, issued = cursor
        if owner != user.id:  # change numbers are per account: another's would skip this one's changes
            abort(410, message="This cursor belongs to another account: sync again from the start, without a cursor.")
        if issued < now - current_app.config["SYNC_RETENTION_DAYS"] * 86_400:
            abort(410, message="This cursor is too old: sync again from the start, without a cursor.")
        if not full and after_id == MAX_ID and seq >= user.change_seq:
            return [], encode_cursor("sync", user.id, seq, MAX_ID, 0, now), False  # up to date: nothing to read
    params = {"user_id": user.id, "seq": seq, "after_id": after_id, "full": full, "size": limit + 1}
    rows = db.session.connection().execute(SYNC_CHANGES, params).all()
    changes = [{"id": row.id, "deleted": True} if row.deleted_at else TASK_SCHEMA.dump(row) for row in rows[:limit]]
    if len(rows) > limit:
        return changes, encode_cursor("sync", user.id, rows[limit - 1].change_seq, rows[limit - 1].id, full, now), True
    last = rows[-1].change_seq if rows else seq
    return changes, encode_cursor("sync", user.id, max(last, user.change_seq), MAX_ID, 0, now), False


@tasks.route("/changes")
class TaskChanges(OwnTasksView):
    @tasks.arguments(SyncArgsSchema(), location="query")
    @tasks.response(200, SyncPageSchema)
    @tasks.documents_errors(410)
    @tasks.doc(
        operationId="syncTasks",
        description="Without a cursor: every task you have (a full sync). With the cursor of your last answer: what changed "
        "since, in commit order; a deleted task as {id, deleted: true}. Call again while has_more is true. Apply each answer "
        "in order (replace by id, drop on deleted) and your copy equals your tasks: no change is ever skipped. A cursor older "
        "than SYNC_RETENTION_DAYS, or given to another account, answers 410: start again without one.",
    )
    def get(self, args):
        """Sync: the tasks that changed since your last call"""
        changes, cursor, has_more = sync_changes(current_user, args.get("cursor"), args["limit"])
        return {"changes": changes, "cursor": cursor, "has_more": has_more}


# --- The trash ---

trash = Blueprint("trash", __name__, url_prefix="/api/trash", description="Deleted tasks: restore them, or delete them for good.")

IN_TRASH = Task.deleted_at > bindparam("cutoff")  # within TRASH_RETENTION_DAYS: older is as good as purged
TRASH_PAGE = (
    select(*TASK_COLUMNS)
    .where(Task.user_id == bindparam("user_id"), IN_TRASH)
    .order_by(Task.deleted_at.desc(), Task.id.desc())
    .limit(bindparam("size"))
    .offset(bindparam("offset"))
)
TRASH_COUNT = select(func.count()).select_from(tasks_table).where(Task.user_id == bindparam("user_id"), IN_TRASH)
# Locked as it is read, as OWN_TASK is: a concurrent restore or deletion of it goes first.
TRASHED_TASK = select(Task).where(Task.id == bindparam("task_id"), Task.user_id == bindparam("user_id"), IN_TRASH).with_for_update()


def trash_cutoff():
    return utcnow() - timedelta(days=current_app.config["TRASH_RETENTION_DAYS"])


TRASH_LIST_HEADERS = {
    **LIST_HEADERS,
    "X-Pagination": {
        **LIST_HEADERS["X-Pagination"],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PaginationMetadata"}}},
    },
}


@trash.route("")
class Trash(OwnTasksView):
    @trash.arguments(TrashQueryArgsSchema(), location="query")
    @trash.response(200, DeletedTaskSchema(many=True), headers=TRASH_LIST_HEADERS)
    @trash.doc(operationId="listTrash", description="Most recently deleted first. Deleted tasks stay TRASH_RETENTION_DAYS (30 days).")
    def get(self, args):
        """List your deleted tasks"""
        params = {"user_id": current_user.id, "cutoff": trash_cutoff()}
        size = args["page_size"]
        connection = db.session.connection()
        offset = PaginationParameters(args["page"], size).first_item
        page = connection.execute(TRASH_PAGE, {**params, "size": size, "offset": offset}).all()
        return page, pagination_headers(args, connection.execute(TRASH_COUNT, params).scalar())

    @transaction
    @trash.response(204)
    @trash.doc(operationId="emptyTrash")
    def delete(self):
        """Empty your trash: its tasks are gone for good"""
        delete_for_good(db.session.connection(), [Task.user_id == current_user.id], current_user.id)


@trash.route(f"/{TASK_ID}")
class TrashedTask(OwnTasksView):
    @transaction
    @trash.response(204)
    @trash.documents_errors(404)
    @trash.doc(operationId="deleteTrashedTask")
    def delete(self, task_id):
        """Delete a task in the trash for good"""
        connection = db.session.connection()
        where = [Task.id == task_id, Task.user_id == current_user.id, Task.deleted_at > trash_cutoff()]
        if not delete_for_good(connection, where, current_user.id):
            abort(404, message="No such task in your trash.")


@trash.route(f"/{TASK_ID}/restore")
class TaskRestore(OwnTasksView):
    @transaction
    @idempotent
    @trash.response(200, TaskSchema, headers={**CREATED_HEADERS, **REPLAYED_HEADER})
    @trash.documents_errors(404, 409)
    @trash.doc(operationId="restoreTask", parameters=[IDEMPOTENCY_HEADER], description="The task comes back with the same id and fields.")
    def post(self, task_id):
        """Restore a deleted task"""
        params = {"task_id": task_id, "user_id": current_user.id, "cutoff": trash_cutoff()}
        task = db.session.scalar(TRASHED_TASK, params)
        if task is None:
            abort(404, message="No such task in your trash.")
        task.deleted_at, task.updated_at = None, utcnow()
        write_tasks(current_user.id, changed=[task])
        return task_with_location(task)


# --- Phase II paths ---

# Phase II frontends call the same views under the caller's user id.
phase2 = Blueprint(
    "phase2", __name__, url_prefix="/api/<user_id>/tasks", description="Phase II paths: the same operations under your user id."
)
phase2.add_url_rule("", view_func=Tasks)
phase2.add_url_rule(f"/{TASK_ID}", view_func=TaskById)
phase2.add_url_rule(f"/{TASK_ID}/complete", view_func=TaskCompletion)


# --- Service routes ---

service = Blueprint("service", __name__, description="Health.")


@service.route("/health")
@service.response(200, HealthSchema)
@service.documents_errors(503)
@service.doc(operationId="checkHealth", **NO_AUTH)
def health():
    """Check the service and its database"""
    try:
        db.session.execute(text("SELECT 1"))
    except DBAPIError:
        db.session.rollback()
        abort(503, also={"database": "unavailable"})
    return {"status": "ok", "database": "ok"}


def docs_asset(filename):
    """Swagger UI's files, served from the swagger-ui-bundle package: /docs needs no internet."""
    return send_from_directory(swagger_ui_path, filename, max_age=86400)


# --- Migrations, and `flask purge` ---


def init_migrations(app):
    """Flask-Migrate, loaded only where migrations run (the `flask db` commands, the upgrade at
    start): importing Alembic costs every process memory. Batch mode: SQLite can only change a
    table by copying it."""
    from flask_migrate import Migrate

    if "migrate" not in app.extensions:
        Migrate(app, db, directory=str(Path(__file__).with_name("migrations")), render_as_batch=True, compare_type=True)


def migrate_database(app):
    """Bring the schema up to date at start: `flask db upgrade`, one process at a time.

    Workers and hosts starting together queue on a lock: a file lock beside the instance
    folder's SQLite database, a session-level advisory lock on PostgreSQL.
    """
    init_migrations(app)
    with app.app_context():
        engine = db.engine
        if engine.dialect.name == "postgresql":
            with engine.connect() as connection:
                connection.exec_driver_sql("SET statement_timeout = 0")  # waiting for another process's migrations
                connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
                try:
                    upgrade_database(engine)
                finally:
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
        else:
            with open(Path(app.instance_path) / "migrate.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                upgrade_database(engine)
        engine.dispose()  # no connection crosses a fork into gunicorn's workers


INITIAL_REVISION = "cc4d066f2606"  # the schema as it was before migrations existed


def upgrade_database(engine):
    """`flask db upgrade`; a database made before migrations existed is first marked as being
    at the initial revision, which is exactly its schema, so it is upgraded, never recreated."""
    from flask_migrate import stamp, upgrade

    tables = inspect(engine).get_table_names()
    if "users" in tables and "alembic_version" not in tables:
        stamp(revision=INITIAL_REVISION)
    upgrade()


MIGRATION_LOCK_KEY = 0x7D0_0A91  # any constant shared by every process of this service


@click.command()
@with_appcontext
def purge():
    """Delete what has outlived its retention: trashed tasks, tombstones, Idempotency-Key answers."""
    config, now = current_app.config, utcnow()
    connection = db.session.connection()
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("SET LOCAL statement_timeout = 0")  # a clean-up, not a request: it may take its time
    trashed = delete_for_good(connection, [Task.deleted_at <= now - timedelta(days=config["TRASH_RETENTION_DAYS"])])
    # A tombstone outlives the cursors that may need it (SYNC_RETENTION_DAYS) by a day: a change's
    # time is taken before its commit, a cursor's after.
    tombstones_before = now - timedelta(days=config["SYNC_RETENTION_DAYS"] + 1)
    tombstones = connection.execute(delete(tombstones_table).where(tombstones_table.c.deleted_at < tombstones_before)).rowcount
    answers_before = now - timedelta(seconds=config["IDEMPOTENCY_TTL"])
    answers = connection.execute(delete(IdempotencyKey.__table__).where(IdempotencyKey.created_at <= answers_before)).rowcount
    db.session.commit()
    click.echo(f"Purged {trashed} trashed tasks, {tombstones} tombstones and {answers} Idempotency-Key answers.")


# --- Request ids and logs ---

SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
access_log = logging.getLogger("todo_api.access")


class JSONFormatter(logging.Formatter):
    """One JSON object per line, with the request id while a request is served."""

    def format(self, record):
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if has_request_context() and "request_id" in g:
            entry["request_id"] = g.request_id
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def not_a_dev_server_access_line(record):
    """A logging filter: werkzeug's development server (`flask run`) logs each request as
    '"GET /path HTTP/1.1" 200 -'; the app's JSON line says that already."""
    return not (record.levelno == logging.INFO and str(record.msg).endswith('"%s" %s %s'))


def configure_logging(app):
    """The app's logs (errors, and one access line per request) as JSON lines on stderr; under
    `flask run` the development server's own line for each request is dropped, so a request is
    logged once."""
    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter())
    app.logger.handlers[:] = [handler]
    app.logger.setLevel(logging.INFO)
    app.logger.propagate = False
    werkzeug_log = logging.getLogger("werkzeug")
    werkzeug_log.addFilter(not_a_dev_server_access_line)  # addFilter ignores a filter it already has


def tidy_authorization_header():
    """Drop blank comma-separated parts of Authorization: flask-jwt-extended 4.7 raises
    IndexError (a 500) on a header such as ", ," instead of answering 401."""
    value = request.environ.get("HTTP_AUTHORIZATION")
    if value is not None:
        request.environ["HTTP_AUTHORIZATION"] = ",".join(part.strip() for part in value.split(",") if part.strip())


def start_request():
    """Adopt the client's X-Request-ID when it is sane, or make one up."""
    g.request_started = time.perf_counter()
    given = request.headers.get("X-Request-ID", "")
    g.request_id = given if SANE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def finish_request(response):
    """Name the request in the answer and log it: id, method, path (no query), status, duration."""
    if "request_id" not in g:  # a hook that ran before start_request failed
        start_request()
    response.headers["X-Request-ID"] = g.request_id
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if response.status_code in (204, 304):  # no body, so no media type (Flask gives every response one)
        del response.headers["Content-Type"]
    fields = {
        "method": request.method,
        "path": request.path,
        "status": response.status_code,
        "duration_ms": round((time.perf_counter() - g.request_started) * 1000, 2),
    }
    access_log.info("request", extra={"fields": fields})
    return response


# --- App factory ---


def engine_options(config):
    options = {**config["SQLALCHEMY_ENGINE_OPTIONS"]}
    if not config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        # A database server: a bounded pool (connections idle for long are pinged before reuse:
        # see ping_connections_idle_for). SQLite files get the defaults.
        options.update(
            pool_size=config["DB_POOL_SIZE"],
            max_overflow=config["DB_MAX_OVERFLOW"],
            pool_timeout=config["DATABASE_TIMEOUT"],
        )
    seconds = config["DATABASE_TIMEOUT"]
    if config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        # Connecting gives up after DATABASE_TIMEOUT (libpq's whole seconds, at least 2), and the
        # server cancels a statement that runs longer (its lock waits included).
        timeouts = {"connect_timeout": max(2, math.ceil(seconds)), "options": f"-c statement_timeout={round(seconds * 1000)}"}
        options["connect_args"] = {"application_name": "todo-api", **timeouts, **options.get("connect_args", {})}
    elif config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        options["connect_args"] = {"timeout": seconds, **options.get("connect_args", {})}  # waiting for the write lock
    return options


CORS_POLICY = {
    "methods": ["GET", "POST", "PUT", "PATCH", "DELETE"],
    "allow_headers": ["Authorization", "Content-Type", "If-Match", "If-None-Match", "Idempotency-Key", "X-Request-ID"],
    "expose_headers": [
        "ETag",
        "Location",
        "Link",
        "X-Pagination",
        "Retry-After",
        "WWW-Authenticate",
        "Idempotent-Replayed",
        "X-Request-ID",
    ],
}


def configure(app, test_config):
    """The app's settings: Config, the environment, then test_config; checked, and what follows
    from them (the JWT key, the identity provider's keys)."""
    app.config.from_object(Config)
    read_environment(app.config)
    if "DATABASE_URL" in os.environ:
        app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["DATABASE_URL"]
    app.config.from_prefixed_env()  # FLASK_<KEY> for every key
    app.config.update(test_config or {})
    if not app.config["DATABASE_TIMEOUT"] > 0:
        raise ConfigError("DATABASE_TIMEOUT must be a number of seconds above 0.")
    os.makedirs(app.instance_path, exist_ok=True)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_uri(app.config["SQLALCHEMY_DATABASE_URI"])
    app.config["JWT_SECRET_KEY"] = load_jwt_secret(app)
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = engine_options(app.config)
    if issuer := app.config["AUTH_ISSUER"]:
        app.extensions["issuer_keys"] = IssuerKeys(app.config["AUTH_JWKS_URL"] or f"{issuer.rstrip('/')}/api/auth/jwks")


def create_app(test_config=None, instance_path=None):
    """Build the app: its settings (configure), then extensions and routes."""
    app = Flask(__name__, instance_path=instance_path, instance_relative_config=True)
    configure(app, test_config)
    if app.config["TRUSTED_PROXIES"]:
        hops = app.config["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_prefix=hops)
    app.json.sort_keys = False  # objects keep their schema's field order; sorting costs every response
    configure_logging(app)
    # Registered before the extensions' hooks, so a request refused by one (a 429) has an id too.
    app.before_request(start_request)
    app.before_request(tidy_authorization_header)
    app.after_request(finish_request)

    # extensions
    db.init_app(app)
    app.extensions["autocommit_engines"] = {}  # see RequestSession
    with app.app_context():
        if db.engine.dialect.name != "sqlite":
            limit_database_waits(db.engine, app.config["DATABASE_TIMEOUT"])  # before the ping, which it bounds too
            ping_connections_idle_for(db.engine, app.config["DB_PING_AFTER_IDLE"])
    if click.get_current_context(silent=True):  # the flask command line: `flask db ...` needs it
        init_migrations(app)
    jwt.init_app(app)
    limiter.init_app(app)
    api = Api(app, spec_kwargs={"extra_plugins": [ClientDocPlugin()]})
    api.spec.components.security_scheme("bearerAuth", BEARER_SCHEME)
    api.spec.components.schema("ListPageMetadata", schema=ListPageMetadataSchema)
    api.spec.components.schema("Tombstone", schema=TombstoneSchema)
    app.cli.add_command(purge)

    # blueprints
    for blueprint in (auth, tasks, phase2, trash, service):
        api.register_blueprint(blueprint)
    app.add_url_rule("/docs/assets/<path:filename>", "docs_asset", docs_asset)
    if origins := [origin.strip() for origin in app.config["CORS_ORIGINS"].split(",") if origin.strip()]:
        # Bearer tokens, not cookies: no credentials, so an origin list never pairs "*" with them.
        CORS(app, resources={r"/api/*": {}}, origins=origins, supports_credentials=False, max_age=600, **CORS_POLICY)
    register_error_handlers(app)

    if app.config["AUTO_MIGRATE"]:
        migrate_database(app)
    return app
