"""The service as separate gunicorn processes on loopback: instances sharing a database and
Redis, workers killed under load, a graceful stop, the database going away, many writers."""

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from http import HTTPStatus
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import delete, func, select

from helpers import bearer
from scripts.loopback import call, free_port, rss_mb, wait_until_healthy
from scripts.scratch import drop_everything
from todo_api import Task, TaskTag, User, create_app, db

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).parent / "gunicorn"
REDIS_URI = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
# The outage test needs a database server to lose: the suite's PostgreSQL, or the local one.
POSTGRES_URL = (
    os.environ.get("TEST_DATABASE_URL", "").startswith("postgres")
    and os.environ["TEST_DATABASE_URL"]
    or "postgresql://postgres@127.0.0.1:5432/test"
)


def require(service, url):
    """Skip (with the reason) when a server a test needs is not running here; in CI, fail instead."""
    parts = urlsplit(url)
    try:
        socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORTS[parts.scheme.split("+")[0]]), timeout=2
        ).close()
    except OSError as error:
        message = f"{service} at {parts.hostname}:{parts.port} is not reachable ({error}); start it, or point {ENV_NAMES[service]} at one"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


DEFAULT_PORTS = {"redis": 6379, "postgresql": 5432, "postgres": 5432}
ENV_NAMES = {"Redis": "TEST_REDIS_URL", "PostgreSQL": "TEST_DATABASE_URL"}


class Server:
    """One gunicorn instance of the app on a loopback port, its stderr in a file."""

    def __init__(self, tmp_path, database_url, secret, workers, settings):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"gunicorn-{self.port}.log"
        env = {**os.environ, "DATABASE_URL": database_url, "JWT_SECRET_KEY": secret, **{k: str(v) for k, v in settings.items()}}
        command = [GUNICORN, "--workers", str(workers), "--bind", f"127.0.0.1:{self.port}", "wsgi:app"]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True)
        self.wait_until_healthy()

    def wait_until_healthy(self, seconds=30):
        if not wait_until_healthy(self.base, seconds):
            raise AssertionError(f"gunicorn on {self.base} is not healthy:\n{self.log.read_text()[-3000:]}")

    def workers(self):
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return [int(pid) for pid in children]

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=40)


@pytest.fixture
def serve(app, config, tmp_path):
    """Start gunicorn instances of the app (on the suite's database); stopped after the test."""
    servers = []

    def start(workers=1, database_url=None, **settings):
        settings.setdefault("FLASK_AUTO_MIGRATE", "false")  # the app fixture made the tables
        server = Server(tmp_path, database_url or config["SQLALCHEMY_DATABASE_URI"], config["JWT_SECRET_KEY"], workers, settings)
        servers.append(server)
        return server.base

    start.servers = servers
    yield start
    for server in servers:
        server.stop()


def signup(base, email, password="right password"):
    status, _, body = call("POST", f"{base}/api/auth/signup", {"email": email, "password": password})
    assert status == 201, body
    return body


def login(base, email, password):
    return call("POST", f"{base}/api/auth/login", {"email": email, "password": password})


# --- several instances, one service ---


def test_tokens_and_logout_hold_across_instances(serve):
    first, second = serve(), serve()
    pair = signup(first, "both@example.com")
    assert call("GET", f"{second}/api/auth/me", headers=bearer(pair["access_token"]))[0] == 200
    status, _, refreshed = call("POST", f"{second}/api/auth/refresh", headers=bearer(pair["refresh_token"]))
    assert status == 200

    assert call("POST", f"{first}/api/auth/logout", headers=bearer(refreshed["access_token"]))[0] == 204
    for base in (first, second):
        assert call("GET", f"{base}/api/auth/me", headers=bearer(pair["access_token"]))[0] == 401
        assert call("POST", f"{base}/api/auth/refresh", headers=bearer(refreshed["refresh_token"]))[0] == 401

    # A rotated refresh token replayed on one instance ends the session on every instance.
    status, _, session = login(first, "both@example.com", "right password")
    assert status == 200
    status, _, rotated = call("POST", f"{second}/api/auth/refresh", headers=bearer(session["refresh_token"]))
    assert status == 200
    assert call("POST", f"{first}/api/auth/refresh", headers=bearer(session["refresh_token"]))[0] == 401
    for base in (first, second):
        assert call("GET", f"{base}/api/auth/me", headers=bearer(rotated["access_token"]))[0] == 401


def test_concurrent_puts_with_one_if_match_exactly_one_wins(serve):
    first, second = serve(workers=2), serve(workers=2)
    headers = bearer(signup(first, "race@example.com")["access_token"])
    for round in range(8):
        status, created, task = call("POST", f"{first}/api/tasks", {"title": f"race {round}"}, headers)
        assert status == 201
        etag = created["ETag"]
        start, outcomes = threading.Barrier(2), []

        def put(base, url, etag, start, outcomes):
            start.wait()
            outcomes.append(call("PUT", url, {"title": base}, {**headers, "If-Match": etag}))

        url = f"/api/tasks/{task['id']}"
        threads = [threading.Thread(target=put, args=(base, base + url, etag, start, outcomes)) for base in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(status for status, _, _ in outcomes) == [200, 412]
        winner = next(body for status, _, body in outcomes if status == 200)
        assert call("GET", f"{second}/api/tasks/{task['id']}", headers=headers)[2] == winner


def test_redis_shares_one_login_limit_between_instances(serve):
    require("Redis", REDIS_URI)
    limits = {
        "RATELIMIT_STORAGE_URI": REDIS_URI,
        "FLASK_RATELIMIT_KEY_PREFIX": f"test-{uuid.uuid4().hex}",
        "FLASK_LOGIN_EMAIL_LIMIT": "4 per minute",
    }
    first, second = serve(**limits), serve(**limits)
    signup(first, "shared@example.com")
    for base in (first, second, first, second):
        assert login(base, "shared@example.com", "wrong password")[0] == 401
    # Four failures in all, two on each: both instances now refuse this email.
    for base in (first, second):
        status, headers, body = login(base, "shared@example.com", "right password")
        assert status == 429
        assert body["code"] == 429
        assert 1 <= int(headers["Retry-After"]) <= 60


def test_memory_storage_counts_per_process(serve):
    limits = {"RATELIMIT_STORAGE_URI": "memory://", "FLASK_LOGIN_EMAIL_LIMIT": "2 per minute"}
    first, second = serve(**limits), serve(**limits)
    signup(first, "apart@example.com")
    for _ in range(2):
        assert login(first, "apart@example.com", "wrong password")[0] == 401
    assert login(first, "apart@example.com", "right password")[0] == 429
    # The other process has its own count, as the README warns.
    assert login(second, "apart@example.com", "right password")[0] == 200


# --- faults ---


def write_load(base, headers, seconds, threads=4):
    """POST tasks from several threads for a while; returns the acknowledged tasks and every outcome."""
    acknowledged, outcomes, lock = [], Counter(), threading.Lock()
    deadline = time.monotonic() + seconds

    def writer(n):
        i = 0
        while time.monotonic() < deadline:
            i += 1
            body = {"title": f"w{n}-{i}", "tags": [f"t{n}", f"i{i % 7}", "load"]}
            try:
                status, _, task = call("POST", f"{base}/api/tasks", body, headers, timeout=10)
            except (OSError, http.client.HTTPException) as error:  # the killed worker's connection
                with lock:
                    outcomes[type(error).__name__] += 1
                continue
            with lock:
                outcomes[status] += 1
                if status == 201:
                    acknowledged.append(task)

    pool = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    return pool, acknowledged, outcomes


def test_a_worker_killed_under_write_load_loses_no_acknowledged_write(app, serve):
    base = serve(workers=2, RATELIMIT_ENABLED="false")
    server = serve.servers[-1]
    headers = bearer(signup(base, "kill@example.com")["access_token"])
    pool, acknowledged, outcomes = write_load(base, headers, seconds=4)
    time.sleep(1.5)
    victim = server.workers()[0]
    os.kill(victim, signal.SIGKILL)
    for thread in pool:
        thread.join()

    assert outcomes[201] > 20, outcomes
    assert not [status for status in outcomes if isinstance(status, int) and status >= 500], outcomes
    # Every acknowledged write is there, whole.
    for task in acknowledged:
        status, _, stored = call("GET", f"{base}/api/tasks/{task['id']}", headers=headers)
        assert status == 200 and stored == task
    # No task exists half-written: its tags and its tag rows agree, for every task.
    with app.app_context():
        rows = {}
        for task_id, tag in db.session.execute(select(TaskTag.task_id, TaskTag.tag)):
            rows.setdefault(task_id, set()).add(tag)
        for task in db.session.scalars(select(Task)):
            assert set(task.tags) == rows.get(task.id, set()) and len(task.tags) == 3
        # Each user's task counter moved with the writes that landed, and only with them.
        counts = dict(db.session.execute(select(Task.user_id, func.count()).group_by(Task.user_id)).all())
        for user_id, task_count in db.session.execute(select(User.id, User.task_count)):
            assert task_count == counts.get(user_id, 0)
    # The master replaced the worker.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (victim in server.workers() or len(server.workers()) != 2):
        time.sleep(0.2)
    assert victim not in server.workers() and len(server.workers()) == 2
    assert call("GET", f"{base}/health")[0] == 200


def test_sigterm_lets_in_flight_requests_finish(serve):
    base = serve(workers=1)
    server = serve.servers[-1]
    token = signup(base, "term@example.com")["access_token"]
    body = json.dumps({"title": "finished after SIGTERM"}).encode()
    head = (
        f"POST /api/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head + body[:10])  # the request is in flight: its body has not all arrived
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        sock.sendall(body[10:])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 201"), answer[:200]
    assert b"finished after SIGTERM" in answer
    assert server.process.wait(timeout=35) == 0


class Proxy:
    """A TCP proxy on loopback in front of the database, which can be cut and restored, or
    stalled (connections stay open and are accepted, no byte goes through) and let flow again."""

    def __init__(self, target_port):
        self.target = ("127.0.0.1", target_port)
        self.port = free_port()
        self.connections = []
        self.listener = None
        self.flowing = threading.Event()
        self.flowing.set()
        self.restore()

    def stall(self):
        self.flowing.clear()

    def flow(self):
        self.flowing.set()

    def restore(self):
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(64)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def cut(self):
        """Refuse new connections and break the open ones, as a database host going away would."""
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone would not
        self.listener.close()
        for connection in self.connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            connection.close()
        self.connections.clear()

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.connections += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source, sink):
        try:
            while data := source.recv(65536):
                self.flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.close()
                except OSError:
                    pass


def behind_a_proxy(tmp_path):
    """The PostgreSQL server's tables made afresh, and a Proxy in front of it: (an app on the
    server itself, to clean up with; the proxy; the database URL through the proxy)."""
    require("PostgreSQL", POSTGRES_URL)
    target = create_app(
        {"SQLALCHEMY_DATABASE_URI": POSTGRES_URL, "JWT_SECRET_KEY": "x" * 32, "AUTO_MIGRATE": False}, instance_path=str(tmp_path)
    )
    drop_everything(POSTGRES_URL)  # whatever an earlier run, maybe of an older schema, left there
    with target.app_context():
        db.create_all()
        proxy = Proxy(db.engine.url.port or 5432)
        via_proxy = db.engine.url.set(port=proxy.port).render_as_string(hide_password=False)
        db.engine.dispose()
    return target, proxy, via_proxy


def forget(target, proxy, email):
    """Cut the proxy and delete the test's account on the server itself."""
    proxy.cut()
    with target.app_context():
        db.session.execute(delete(User).where(User.email == email))
        db.session.commit()
        db.engine.dispose()


def test_database_outage_is_a_503_and_the_service_recovers(serve, tmp_path):
    target, proxy, via_proxy = behind_a_proxy(tmp_path)
    base = serve(workers=2, database_url=via_proxy, DATABASE_TIMEOUT="2")
    email = f"outage-{uuid.uuid4().hex[:8]}@example.com"
    headers = bearer(signup(base, email)["access_token"])
    assert call("POST", f"{base}/api/tasks", {"title": "before"}, headers)[0] == 201

    proxy.cut()
    for _ in range(3):
        status, _, body = call("GET", f"{base}/api/tasks", headers=headers)
        assert status == 503
        assert body == {"code": 503, "status": "Service Unavailable", "message": body["message"]}
        status, _, body = call("GET", f"{base}/health")
        assert status == 503 and body["database"] == "unavailable"

    proxy.restore()  # and no restart of the service
    # A pooled connection that died answers one 503 and is replaced: soon every answer is a 200.
    deadline, in_a_row = time.monotonic() + 10, 0
    while in_a_row < 10 and time.monotonic() < deadline:
        status, _, tasks = call("GET", f"{base}/api/tasks", headers=headers)
        in_a_row = in_a_row + 1 if status == 200 else 0
        if status != 200:
            assert status == 503
            time.sleep(0.1)
    assert in_a_row == 10
    assert [task["title"] for task in tasks] == ["before"]
    assert call("POST", f"{base}/api/tasks", {"title": "after"}, headers)[0] == 201
    forget(target, proxy, email)


def test_a_database_that_stalls_is_a_503_within_the_timeout_and_the_service_recovers(serve, tmp_path):
    """Behind a proxy that holds the connections open and forwards nothing, no server-side
    timeout fires: the service's own bound (DATABASE_TIMEOUT) answers 503, for pooled
    connections and new ones alike, and serves again as soon as the database answers."""
    target, proxy, via_proxy = behind_a_proxy(tmp_path)
    base = serve(workers=2, database_url=via_proxy, DATABASE_TIMEOUT="2", GUNICORN_TIMEOUT="30")
    email = f"stall-{uuid.uuid4().hex[:8]}@example.com"
    headers = bearer(signup(base, email)["access_token"])
    assert call("POST", f"{base}/api/tasks", {"title": "before"}, headers)[0] == 201

    proxy.stall()
    answers = []
    for _ in range(3):  # a pooled connection first, then the new ones the pool makes
        for method, path in (("GET", "/api/tasks"), ("GET", "/health"), ("POST", "/api/tasks")):
            started = time.monotonic()
            status, _, body = call(method, f"{base}{path}", {"title": "during"} if method == "POST" else None, headers, timeout=20)
            answers.append((status, time.monotonic() - started))
            assert status == 503, body
            assert {key: body[key] for key in ("code", "status")} == {"code": 503, "status": "Service Unavailable"}
    assert max(seconds for _, seconds in answers) < 2 + 1.5, answers  # the bound, and a little for the watcher's tick

    proxy.flow()
    deadline, in_a_row = time.monotonic() + 15, 0
    while in_a_row < 10 and time.monotonic() < deadline:
        status, _, tasks = call("GET", f"{base}/api/tasks", headers=headers)
        in_a_row = in_a_row + 1 if status == 200 else 0
    assert in_a_row == 10
    assert [task["title"] for task in tasks] == ["before"]  # nothing half-written while it stalled
    assert call("POST", f"{base}/api/tasks", {"title": "after"}, headers)[0] == 201
    forget(target, proxy, email)


def test_sixteen_concurrent_writers_never_see_a_5xx_or_a_locked_database(serve):
    seconds = float(os.environ.get("TEST_WRITERS_SECONDS", 30))
    base = serve(workers=2, RATELIMIT_ENABLED="false")
    server = serve.servers[-1]
    users = [bearer(signup(base, f"writer{n}@example.com")["access_token"]) for n in range(16)]
    outcomes, lock = Counter(), threading.Lock()
    deadline = time.monotonic() + seconds

    def writer(headers):
        while time.monotonic() < deadline:
            status, _, task = call("POST", f"{base}/api/tasks", {"title": "write", "tags": ["a", "b"]}, headers)
            steps = [status]
            if status == 201:
                steps.append(call("PATCH", f"{base}/api/tasks/{task['id']}", {"tags": ["c"], "priority": "high"}, headers)[0])
                steps.append(call("PATCH", f"{base}/api/tasks/{task['id']}/complete", headers=headers)[0])
                steps.append(call("DELETE", f"{base}/api/tasks/{task['id']}", headers=headers)[0])
            with lock:
                outcomes.update(steps)

    pool = [threading.Thread(target=writer, args=(headers,)) for headers in users]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert set(outcomes) <= {200, 201, 204}, outcomes
    assert outcomes[201] > 16
    for headers in users:  # every task written was deleted again, and counted both ways
        status, response_headers, body = call("GET", f"{base}/api/tasks", headers=headers)
        assert (status, body, json.loads(response_headers["X-Pagination"])["total"]) == (200, [], 0)
    log = server.log.read_text()
    assert "database is locked" not in log and "Traceback" not in log


def test_gunicorn_migrates_a_fresh_database_before_its_workers_start(serve, tmp_path):
    base = serve(workers=2, database_url=f"sqlite:///{tmp_path / 'fresh.db'}", FLASK_AUTO_MIGRATE="true")
    assert signup(base, "fresh@example.com")["user"]["email"] == "fresh@example.com"
    app = create_app(
        {"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'fresh.db'}", "JWT_SECRET_KEY": "x" * 32, "AUTO_MIGRATE": False},
        instance_path=str(tmp_path),
    )
    with app.app_context():
        assert db.session.execute(db.text("SELECT count(*) FROM alembic_version")).scalar() == 1
        db.engine.dispose()


def test_a_worker_gives_back_the_memory_of_password_hashes(serve):
    # argon2 takes 19 MiB per hash; post_fork's mallopt keeps such blocks out of the heap, so a
    # worker's memory does not grow by one hash for good after its first login.
    base = serve(workers=1, RATELIMIT_ENABLED="false")
    (worker,) = serve.servers[-1].workers()
    assert call("GET", f"{base}/health")[0] == 200
    before = rss_mb(worker)  # no hash yet in this worker
    signup(base, "rss@example.com")
    for _ in range(5):
        assert login(base, "rss@example.com", "right password")[0] == 200
    assert rss_mb(worker) - before < 8, (before, rss_mb(worker))


def test_recycled_workers_are_replaced_at_once_and_drop_nothing(serve):
    # max_requests 10: the two workers retire every few requests, often together. A retiring
    # worker leaves at once (worker_exit), and every new one is a fork of the preloaded master.
    base = serve(workers=2, RATELIMIT_ENABLED="false", GUNICORN_CMD_ARGS="--max-requests 10 --max-requests-jitter 0")
    headers = bearer(signup(base, "recycled@example.com")["access_token"])
    statuses = Counter(call("POST", f"{base}/api/tasks", {"title": f"t{n}"}, headers)[0] for n in range(60))
    assert statuses == {201: 60}
    status, response_headers, _ = call("GET", f"{base}/api/tasks?page_size=1", headers=headers)
    assert status == 200 and json.loads(response_headers["X-Pagination"])["total"] == 60
    log = serve.servers[-1].log.read_text()
    assert log.count("Booting worker") >= 2 + 4, log[-2000:]  # 62 requests need 5 replacements, 4 of them served
    assert "Traceback" not in log and "Worker failed to boot" not in log


def test_instances_open_no_shared_control_socket(serve, tmp_path):
    # gunicorn 27 opens ~/.gunicorn/gunicorn.ctl by default, one path for every instance of a
    # user: a second instance would take it over. gunicorn.conf.py turns it off.
    home = tmp_path / "home"
    home.mkdir()
    for _ in range(2):
        assert call("GET", f"{serve(HOME=str(home))}/health")[0] == 200
    assert list(home.iterdir()) == []


@pytest.mark.parametrize("extra", [b"", b"trailing bytes past the limit"])
def test_a_chunked_body_is_read_whole_or_refused_with_413(serve, extra):
    base = serve(MAX_CONTENT_LENGTH="1000", RATELIMIT_ENABLED="false")
    token = signup(base, "chunked@example.com")["access_token"]
    body = b'{"title": "cut here"}'.ljust(1000) + extra  # valid JSON of exactly the limit, then more
    connection = http.client.HTTPConnection("127.0.0.1", int(base.rsplit(":", 1)[1]), timeout=10)
    connection.request(
        "POST",
        "/api/tasks",
        body=iter([body[:600], body[600:]]),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        encode_chunked=True,
    )
    response = connection.getresponse()
    answer = json.loads(response.read())
    connection.close()
    status, _, tasks = call("GET", f"{base}/api/tasks", headers=bearer(token))
    if extra:
        assert response.status == 413, answer
        assert answer["code"] == 413
        assert tasks == []  # nothing written from part of a body
    else:
        assert response.status == 201, answer
        assert [task["title"] for task in tasks] == ["cut here"]


def raw_exchange(base, data):
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(data)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        pytest.param(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, id="request line too long"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, id="header too large"),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % n for n in range(150)) + b"\r\n", 431, id="too many headers"
        ),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: x\r\n\r\n", 400, id="malformed header"),
        pytest.param(b"NOT HTTP AT ALL\r\n\r\n", 400, id="malformed request line"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: bogus\r\n\r\n", 501, id="unknown transfer coding"),
    ],
)
def test_answers_gunicorn_gives_before_the_app_are_the_contracts_json(serve, request_bytes, status):
    base = serve()
    got, headers, body = raw_exchange(base, request_bytes)
    assert got == status
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert re.fullmatch("[0-9a-f]{32}", headers["X-Request-ID"])
    assert set(body) == {"code", "status", "message"} and body["code"] == status
    assert body["status"] == HTTPStatus(status).phrase
    assert "<" not in body["message"] and "'" not in body["message"]


# --- clients that keep a copy ---


def pull(base, headers, replica, cursor, limit):
    """Sync until has_more is false, applying each answer to `replica`; returns the last cursor."""
    while True:
        query = f"?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        status, _, answer = call("GET", f"{base}/api/tasks/changes{query}", headers=headers)
        assert status == 200, answer
        for change in answer["changes"]:
            if change.get("deleted"):
                replica.pop(change["id"], None)
            else:
                replica[change["id"]] = change
        cursor = answer["cursor"]
        if not answer["has_more"]:
            return cursor


def every_task(base, headers):
    """The user's live tasks, read by keyset pages."""
    tasks, query = {}, "?page_size=100"
    while True:
        status, response_headers, page = call("GET", f"{base}/api/tasks{query}", headers=headers)
        assert status == 200
        tasks.update((task["id"], task) for task in page)
        meta = json.loads(response_headers["X-Pagination"])
        if "next_cursor" not in meta:
            return tasks
        query = f"?page_size=100&after={meta['next_cursor']}"


def test_a_syncing_client_ends_with_exactly_the_tasks_concurrent_writers_left(serve):
    """Writers on two workers create, change, complete, trash, restore and delete for good, while
    two clients sync (one from the start, one joining midway with a full sync), each in small
    pages; once the writers stop, one more sync makes each copy equal the live tasks."""
    seconds = float(os.environ.get("TEST_SYNC_SECONDS", 8))
    base = serve(workers=2, RATELIMIT_ENABLED="false")
    headers = bearer(signup(base, "syncing@example.com")["access_token"])
    outcomes, lock, done = Counter(), threading.Lock(), threading.Event()
    deadline = time.monotonic() + seconds

    def writer(n):
        steps = 0
        while time.monotonic() < deadline:
            steps += 1
            status, _, task = call("POST", f"{base}/api/tasks", {"title": f"w{n}-{steps}", "tags": ["a"]}, headers)
            results = [status]
            if status == 201 and steps % 2:
                path = f"{base}/api/tasks/{task['id']}"
                results.append(call("PATCH", path, {"tags": ["b"], "priority": "high"}, headers)[0])
                results.append(call("PATCH", f"{path}/complete", headers=headers)[0])
            if status == 201 and steps % 3 == 0:
                results.append(call("DELETE", f"{base}/api/tasks/{task['id']}", headers=headers)[0])
                if steps % 2:
                    results.append(call("POST", f"{base}/api/trash/{task['id']}/restore", headers=headers)[0])
                elif steps % 4 == 0:
                    results.append(call("DELETE", f"{base}/api/trash/{task['id']}", headers=headers)[0])
            with lock:
                outcomes.update(results)

    copies = [{}, {}]
    cursors = [None, None]

    def syncer(index, start_after):
        time.sleep(start_after)
        while not done.is_set():
            cursors[index] = pull(base, headers, copies[index], cursors[index], limit=7)

    writers = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    syncers = [threading.Thread(target=syncer, args=(0, 0)), threading.Thread(target=syncer, args=(1, seconds / 2))]
    for thread in writers + syncers:
        thread.start()
    for thread in writers:
        thread.join()
    done.set()
    for thread in syncers:
        thread.join()
    assert set(outcomes) <= {200, 201, 204}, outcomes
    assert outcomes[201] > 20 and outcomes[204] > 5, outcomes
    live = every_task(base, headers)
    for index in range(2):
        cursors[index] = pull(base, headers, copies[index], cursors[index], limit=7)
        assert copies[index] == live, f"copy {index}: {len(copies[index])} tasks, server: {len(live)}"
    assert "Traceback" not in serve.servers[-1].log.read_text()


def test_concurrent_retries_with_one_idempotency_key_create_one_task(serve):
    """Eight copies of one keyed POST at once, over two workers: one task; every answer is that
    task's 201 (the first, or its replay) or, on PostgreSQL while the first is in flight, a 409."""
    base = serve(workers=2, RATELIMIT_ENABLED="false")
    headers = {**bearer(signup(base, "retrying@example.com")["access_token"]), "Idempotency-Key": "one-task"}
    start, answers = threading.Barrier(8), []

    def send():
        start.wait()
        status, response_headers, body = call("POST", f"{base}/api/tasks", {"title": "once"}, headers)
        answers.append((status, body["id"] if status == 201 else body["message"], response_headers.get("Idempotent-Replayed")))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    created = {task_id for status, task_id, _ in answers if status == 201}
    assert len(created) == 1, answers
    assert {status for status, _, _ in answers} <= {201, 409}, answers
    assert [replayed for status, _, replayed in answers if status == 201].count(None) == 1, answers  # one was served, the rest replayed
    assert len(every_task(base, bearer(headers["Authorization"].split()[1]))) == 1
