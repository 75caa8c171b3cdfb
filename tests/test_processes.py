"""The service as separate gunicorn processes on loopback, sharing a database and Redis."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).parent / "gunicorn"
REDIS_URI = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(method, url, body=None, headers=None):
    """(status, headers, JSON body) of one request."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, {"Content-Type": "application/json", **(headers or {})}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            return response.status, response.headers, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        raw = error.read()
        return error.code, error.headers, json.loads(raw) if raw else None


@pytest.fixture
def serve(app, config, tmp_path):
    """Start a gunicorn instance of the app on a free loopback port; stopped after the test."""
    servers = []

    def start(workers=1, **settings):
        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": config["SQLALCHEMY_DATABASE_URI"],
            "JWT_SECRET_KEY": config["JWT_SECRET_KEY"],
            "FLASK_AUTO_MIGRATE": "false",  # the app fixture made the tables
            **{key: str(value) for key, value in settings.items()},
        }
        command = [GUNICORN, "--workers", str(workers), "--bind", f"127.0.0.1:{port}", "--log-level", "warning", "wsgi:app"]
        server = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
        servers.append(server)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if call("GET", f"{base}/health")[0] == 200:
                    return base
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"gunicorn on {base} did not start")

    yield start
    for server in servers:
        os.killpg(server.pid, signal.SIGTERM)
    for server in servers:
        server.wait(timeout=30)


def login(base, email, password):
    return call("POST", f"{base}/api/auth/login", {"email": email, "password": password})


def test_redis_shares_one_login_limit_between_processes(serve):
    limits = {
        "RATELIMIT_STORAGE_URI": REDIS_URI,
        "FLASK_RATELIMIT_KEY_PREFIX": f"test-{uuid.uuid4().hex}",
        "FLASK_LOGIN_EMAIL_LIMIT": "4 per minute",
    }
    first, second = serve(**limits), serve(**limits)
    assert call("POST", f"{first}/api/auth/signup", {"email": "shared@example.com", "password": "right password"})[0] == 201

    for base in (first, second, first, second):
        assert login(base, "shared@example.com", "wrong password")[0] == 401
    # Four failures in all, two on each: both processes now refuse this email.
    for base in (first, second):
        status, headers, body = login(base, "shared@example.com", "right password")
        assert status == 429
        assert body["code"] == 429
        assert 1 <= int(headers["Retry-After"]) <= 60


def test_memory_storage_counts_per_process(serve):
    limits = {"RATELIMIT_STORAGE_URI": "memory://", "FLASK_LOGIN_EMAIL_LIMIT": "2 per minute"}
    first, second = serve(**limits), serve(**limits)
    assert call("POST", f"{first}/api/auth/signup", {"email": "apart@example.com", "password": "right password"})[0] == 201
    for _ in range(2):
        assert login(first, "apart@example.com", "wrong password")[0] == 401
    assert login(first, "apart@example.com", "right password")[0] == 429
    # The other process has its own count, as the README warns.
    assert login(second, "apart@example.com", "right password")[0] == 200
