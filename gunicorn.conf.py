"""gunicorn settings; `gunicorn wsgi:app` reads this file from the working directory.

Environment: HOST and PORT (default 127.0.0.1:8000), WEB_CONCURRENCY (workers), GUNICORN_TIMEOUT.
Command-line options override all of these.
"""

import ctypes
import json
import multiprocessing
import os
import subprocess
import sys
import uuid
from http import HTTPStatus
from pathlib import Path

import gunicorn
import gunicorn.util

HERE = Path(__file__).resolve().parent

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
# Sync workers: each serves one request at a time; two per core keeps the cores busy while
# one waits on the database.
workers = int(os.environ.get("WEB_CONCURRENCY", 2 * multiprocessing.cpu_count()))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", 30))  # a worker silent this long is replaced
graceful_timeout = 30  # on SIGTERM, in-flight requests get this long to finish
keepalive = 5
max_requests = 10_000  # recycle workers now and then, with jitter so they do not all restart together
max_requests_jitter = 1_000
# The master imports the app once; a new or recycled worker is a fork of it, serving at once
# (importing the app takes a worker ~1 s, which its first requests would wait for).
preload_app = True
limit_request_line = 8190
# gunicorn 27's control socket defaults to one path per user (~/.gunicorn/gunicorn.ctl), which a
# second instance on the host would take over; nothing here uses it.
control_socket_disable = True

# Access log: the app writes one JSON line per request (id, method, path, status, duration) to
# stderr, so gunicorn's own access log stays off; its error log goes to stderr too.
accesslog = None
errorlog = "-"
loglevel = "info"


def migrate_once():
    """Apply the database migrations once, in a process of their own, before the master loads the
    app (preload_app) or any worker starts: neither then runs Alembic, nor keeps it in memory.
    FLASK_AUTO_MIGRATE=false skips it here too. Run as this file is read: gunicorn reads its
    settings before it preloads the app, and no server hook comes earlier."""
    if os.environ.get("FLASK_AUTO_MIGRATE", "true").lower() in {"false", "0"}:
        return
    subprocess.run([sys.executable, "-c", "from todo_api import create_app; create_app()"], cwd=HERE, check=True)
    os.environ["FLASK_AUTO_MIGRATE"] = "false"  # the master's app and its workers skip it


migrate_once()


def dispose_engines(server, close):
    """Drop the app's pooled database connections (the bare Flask floor of `make bench` has none)."""
    app = getattr(server.app, "callable", None)
    if app is not None and "sqlalchemy" in getattr(app, "extensions", {}):
        from todo_api import db

        with app.app_context():
            for engine in db.engines.values():
                engine.dispose(close=close)


def post_fork(server, worker):
    """In each worker: no database connection shared with the master (SQLAlchemy's advice for
    forked processes), and memory that argon2 frees goes back to the system.

    argon2 takes 19 MiB per hash. glibc raises its mmap threshold after freeing a block that
    large, so every later hash would stay in the heap: ~19 MB more per worker for good. A fixed
    threshold (mallopt M_MMAP_THRESHOLD, 1 MiB) keeps such blocks mmapped, returned when freed."""
    dispose_engines(server, close=False)  # the master's connections stay the master's
    try:
        ctypes.CDLL(None).mallopt(-3, 1024 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc


def worker_exit(server, worker):
    """A worker that retires cleanly (max_requests, or a graceful stop) leaves at once.

    Python's own teardown of a forked worker frees every object of the app one by one, copying
    each page it shares with the master first: ~0.5 s on this app, during which the worker
    serves no one and the master has not yet replaced it. With both workers retiring together
    that was a half-second stall for every client. Its database connections are closed cleanly
    first; any other exit (a failed boot, a crash) keeps its status and Python's teardown."""
    error = sys.exc_info()[1]
    if not (isinstance(error, SystemExit) and error.code in (0, None)):
        return
    dispose_engines(server, close=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# --- gunicorn adapter, written for gunicorn 27.0.1 ---
# gunicorn answers some requests before the app sees them: a request line past
# limit_request_line (414), headers past limit_request_field_size or limit_request_fields (431),
# malformed framing (400, 501). Its workers send those answers through gunicorn.util.write_error,
# in HTML; this replaces it with the API's JSON error shape, a request id and nosniff, and a
# message for people instead of the parser's. tests/test_processes.py provokes each and
# checks the shape; it fails if gunicorn stops calling write_error.
GUNICORN_VERSION = "27.0.1"
GUNICORN_MESSAGES = {
    400: "The request is malformed HTTP.",
    403: "The request is forbidden.",
    414: f"The request line is too long (at most {limit_request_line} bytes).",
    417: "The Expect header is not supported.",
    431: "The request headers are too large or too many.",
    501: "This Transfer-Encoding is not supported.",
}


def write_json_error(sock, status_int, _reason, _mesg):
    phrase = HTTPStatus(status_int).phrase
    message = GUNICORN_MESSAGES.get(status_int, "Internal server error." if status_int >= 500 else phrase + ".")
    body = json.dumps({"code": status_int, "status": phrase, "message": message}).encode()
    head = (
        f"HTTP/1.1 {status_int} {phrase}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nX-Request-ID: {uuid.uuid4().hex}\r\nX-Content-Type-Options: nosniff\r\n\r\n"
    )
    gunicorn.util.write_nonblock(sock, head.encode("latin-1") + body)


if gunicorn.__version__ != GUNICORN_VERSION:
    print(f"gunicorn.conf.py: error answers adapted for gunicorn {GUNICORN_VERSION}, running {gunicorn.__version__}", file=sys.stderr)
gunicorn.util.write_error = write_json_error
