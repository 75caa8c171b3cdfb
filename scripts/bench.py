"""Benchmark todo-api against a bare Flask JSON route served the same way, in the same run.

Starts gunicorn (2 workers, rate limits off) on loopback for the app and for the floor
(scripts/bench_floor.py), seeds data through the app's own models, then measures in rounds:
each round drives the floor and every endpoint once, in turn, with a load generator (wrk when
installed, else a Python client), so that the machine's noise falls on all of them alike.
Prints, per endpoint, the median and range over the rounds of req/s, p50, p99, server CPU per
request (master and workers from /proc, plus PostgreSQL's backends on PostgreSQL) and its ratio
to the same round's floor; RSS per worker; and p99 while workers are being recycled
(max_requests). SQLite by default; PostgreSQL with DATABASE_URL.

    .venv/bin/python scripts/bench.py [--rounds 4] [--seconds 3] [--scale-tasks 200000]
"""

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from scripts.loopback import free_port, rss_mb, wait_until_healthy  # noqa: E402  (needs ROOT on the path)

BIN = Path(sys.executable).parent
TICKS = os.sysconf("SC_CLK_TCK")
PASSWORD = "benchmark password"
SECRET = "bench-secret-key-that-is-long-enough-0123456789"


class Gunicorn:
    def __init__(self, target, env, workers=2, extra=()):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # --max-requests 0: no worker is recycled mid-measurement (its CPU time would vanish with it).
        command = [
            BIN / "gunicorn",
            "--workers",
            str(workers),
            "--bind",
            f"127.0.0.1:{self.port}",
            "--max-requests",
            "0",
            "--log-level",
            "warning",
            *extra,
            target,
        ]
        self.process = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **env}, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
        )
        if not wait_until_healthy(self.base, 60, self.process):
            raise SystemExit(f"{target} did not start")

    def workers(self):
        return [int(pid) for pid in Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()]

    def pids(self):
        return [self.process.pid, *self.workers()]

    def stop(self):
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def request(method, url, body=None, headers=None, answer_headers=False):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data, {"Content-Type": "application/json", **(headers or {})}, method=method)
    with urllib.request.urlopen(req, timeout=30) as response:
        raw = response.read()
        body = json.loads(raw) if raw else None
        return (body, response.headers) if answer_headers else body


def sync_to_the_end(base, headers, cursor=None):
    """Follow GET /api/tasks/changes until has_more is false; the cursor it ends with."""
    while True:
        answer = request("GET", base + "/api/tasks/changes" + (f"?cursor={cursor}" if cursor else ""), None, headers)
        cursor = answer["cursor"]
        if not answer["has_more"]:
            return cursor


# --- load generators ---

WRK_SCRIPT = """
wrk.method = "{method}"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{headers}
done = function(summary, latency, requests)
  local errors = summary.errors
  local failed = errors.status + errors.connect + errors.read + errors.write + errors.timeout
  io.write(string.format("RESULT %d %d %f %f\\n", summary.requests, failed, latency:percentile(50), latency:percentile(99)))
end
"""


def run_wrk(url, method, body, headers, seconds, connections, tmp):
    script = Path(tmp) / "request.lua"
    header_lines = "\n".join(f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items())
    script.write_text(
        WRK_SCRIPT.format(method=method, body=json.dumps(json.dumps(body)) if body is not None else "nil", headers=header_lines)
    )
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", str(connections), "-d", f"{max(1, round(seconds))}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("RESULT"))
    _, count, errors, p50, p99 = line.split()
    return int(count), int(errors), float(p50) / 1000, float(p99) / 1000


def run_python(url, method, body, headers, seconds, connections, _tmp):
    latencies, errors, lock = [], [0], threading.Lock()
    deadline = time.monotonic() + seconds
    data = json.dumps(body).encode() if body is not None else None

    def client():
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                req = urllib.request.Request(url, data, {"Content-Type": "application/json", **headers}, method=method)
                with urllib.request.urlopen(req, timeout=30) as response:
                    response.read()
                ok = True
            except OSError:
                ok = False
            with lock:
                latencies.append((time.perf_counter() - started) * 1000) if ok else errors.__setitem__(0, errors[0] + 1)

    threads = [threading.Thread(target=client) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0.0  # noqa: E731
    return len(latencies), errors[0], p(0.50), p(0.99)


# The filtered lists of issue 20, after the unfiltered one they are compared with.
FILTERED_QUERIES = ["", "?tag=work", "?completed=false", "?priority=medium", "?due_after=2020-01-01T00:00:00Z", "?q=T1"]


# --- seeding ---


def seed_scale(database_url, big_user_tasks, total_tasks):
    """A user with big_user_tasks tasks among total_tasks, written through the app's own write
    path: the tag rows and task counters are kept by the same code as for the API's writes."""
    from todo_api import PRIORITIES, User, create_app, db, password_hasher

    app = create_app(
        # Seeding and VACUUM are no requests: they may take longer than a request may wait.
        {"SQLALCHEMY_DATABASE_URI": database_url, "JWT_SECRET_KEY": SECRET, "AUTO_MIGRATE": False, "DATABASE_TIMEOUT": 3600},
        instance_path=tempfile.mkdtemp(),
    )
    password_hash = password_hasher.hash(PASSWORD)
    others = 99
    per_other = (total_tasks - big_user_tasks) // others
    with app.app_context():
        users = [User(email="big@bench.example.com", name="big", password_hash=password_hash)]
        users += [User(email=f"other{n}@bench.example.com", password_hash=password_hash) for n in range(others)]
        db.session.add_all(users)
        db.session.commit()
        start, rng = datetime(2026, 1, 1), random.Random(7)
        for user, count in [(users[0], big_user_tasks), *((user, per_other) for user in users[1:])]:
            fields = [
                {
                    "title": f"Task {i} of user {user.id}",
                    "completed": i % 3 == 0,
                    "priority": rng.randrange(len(PRIORITIES)),
                    "due_date": start + timedelta(seconds=i, days=rng.randrange(60)) if i % 2 else None,
                    "tags": [f"tag{i % 10}"],
                    "created_at": start + timedelta(seconds=i),
                    "updated_at": start + timedelta(seconds=i),
                }
                for i in range(count)
            ]
            write_in_batches(user.id, fields)
        db.session.commit()
        settle(db.engine)
        db.engine.dispose()


def seed_filtered(database_url, tasks):
    """A user with `tasks` tasks, all tagged "work", open, of medium priority and due never: every
    filter but a due range matches them all (issue 20's account for filtered lists)."""
    from todo_api import User, create_app, db, password_hasher

    app = create_app(
        {"SQLALCHEMY_DATABASE_URI": database_url, "JWT_SECRET_KEY": SECRET, "AUTO_MIGRATE": False, "DATABASE_TIMEOUT": 3600},
        instance_path=tempfile.mkdtemp(),
    )
    with app.app_context():
        user = User(email="filters@bench.example.com", name="filters", password_hash=password_hasher.hash(PASSWORD))
        db.session.add(user)
        db.session.commit()
        start = datetime(2026, 1, 1)
        times = [start + timedelta(seconds=i) for i in range(tasks)]
        write_in_batches(user.id, [{"title": f"T{i}", "tags": ["work"], "created_at": t, "updated_at": t} for i, t in enumerate(times)])
        db.session.commit()
        settle(db.engine)
        db.engine.dispose()


def write_in_batches(user_id, fields, size=5_000):
    """New tasks through the app's own write path (write_tasks: counters, change numbers, tag
    rows), committed `size` at a time."""
    from todo_api import db, write_tasks

    for start in range(0, len(fields), size):
        write_tasks(user_id, created=fields[start : start + size])
        db.session.commit()


def settle(engine):
    """As autovacuum would leave a settled table: statistics, and on PostgreSQL a visibility map
    that lets counts and deep pages read the index alone. VACUUM runs outside a transaction."""
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM ANALYZE")
    else:
        with engine.begin() as connection:
            connection.exec_driver_sql("ANALYZE")


def postgres_backends(database_url):
    """PIDs of the PostgreSQL backends serving the app (application_name todo-api)."""
    from sqlalchemy import create_engine, text

    from todo_api import database_uri

    engine = create_engine(database_uri(database_url))
    with engine.connect() as connection:
        pids = [row[0] for row in connection.execute(text("SELECT pid FROM pg_stat_activity WHERE application_name = 'todo-api'"))]
    engine.dispose()
    return pids


def spread(values, digits=2):
    """A median and its range: '3.41 (3.20-3.77)'."""
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (at least 3)")
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per endpoint and round")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--scale-tasks", type=int, default=200_000, help="tasks in the scale data set (0: skip)")
    parser.add_argument("--big-user-tasks", type=int, default=100_000)
    parser.add_argument("--deep-page", type=int, default=2000, help="the big user's page compared with their page 1")
    parser.add_argument("--filter-tasks", type=int, default=20_000, help="tasks of the account whose filtered lists are measured (0: skip)")
    parser.add_argument("--recycle-after", type=int, default=500, help="max_requests of the recycling run (0: skip it)")
    parser.add_argument("--python-client", action="store_true", help="use the Python client even if wrk is installed")
    args = parser.parse_args()
    if args.rounds < 3:
        parser.error("--rounds must be at least 3: a median of fewer says little on a shared machine")
    generate = run_python if args.python_client or not shutil.which("wrk") else run_wrk

    from scripts.scratch import drop_everything

    with tempfile.TemporaryDirectory(prefix="todo-bench-") as tmp:
        database_url = os.environ.get("DATABASE_URL") or f"sqlite:///{Path(tmp) / 'bench.db'}"
        postgres = database_url.startswith("postgres")
        drop_everything(database_url)
        env = {"DATABASE_URL": database_url, "JWT_SECRET_KEY": SECRET, "RATELIMIT_ENABLED": "false"}
        app = Gunicorn("wsgi:app", env)  # migrates the empty database at start
        floor = Gunicorn("bench_floor:app", {"FLASK_AUTO_MIGRATE": "false"}, extra=["--pythonpath", "scripts"])
        servers = [app, floor]
        try:
            if args.scale_tasks:
                print(f"seeding {args.scale_tasks:,} tasks ...", file=sys.stderr, flush=True)
                started = time.monotonic()
                seed_scale(database_url, args.big_user_tasks, args.scale_tasks)
                print(f"seeded in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
            if args.filter_tasks:
                print(f"seeding {args.filter_tasks:,} tasks to filter ...", file=sys.stderr, flush=True)
                seed_filtered(database_url, args.filter_tasks)
            small = request("POST", app.base + "/api/auth/signup", {"email": "small@bench.example.com", "password": PASSWORD})
            small_headers = {"Authorization": f"Bearer {small['access_token']}"}
            for n in range(100):
                task = request(
                    "POST",
                    app.base + "/api/tasks",
                    {"title": f"Task {n}", "tags": ["work", f"t{n % 5}"], "priority": "high"},
                    small_headers,
                )
            writer = request("POST", app.base + "/api/auth/signup", {"email": "writer@bench.example.com", "password": PASSWORD})
            writer_headers = {"Authorization": f"Bearer {writer['access_token']}"}
            # A syncing user of its own: nothing else writes their tasks, so a cursor stays up to date.
            syncer = request("POST", app.base + "/api/auth/signup", {"email": "syncer@bench.example.com", "password": PASSWORD})
            syncer_headers = {"Authorization": f"Bearer {syncer['access_token']}"}
            before_changes = sync_to_the_end(app.base, syncer_headers)
            for n in range(100):
                request("POST", app.base + "/api/tasks", {"title": f"Synced {n}", "tags": ["sync"]}, syncer_headers)
            up_to_date = sync_to_the_end(app.base, syncer_headers, before_changes)
            # The first keyed POST runs here; every one the load generator sends is its replay.
            fresh_body = {"title": "Benchmark task", "tags": ["bench", "load"]}
            keyed_headers = {**writer_headers, "Idempotency-Key": "bench-replayed-post"}
            request("POST", app.base + "/api/tasks", fresh_body, keyed_headers)

            scenarios = [
                ("floor: bare Flask JSON route", floor, "GET", "/", None, {}),
                ("GET /api/tasks (page of 20 tagged)", app, "GET", "/api/tasks", None, small_headers),
                ("POST /api/tasks (two tags)", app, "POST", "/api/tasks", fresh_body, writer_headers),
                ("POST /api/tasks, replayed Idempotency-Key", app, "POST", "/api/tasks", fresh_body, keyed_headers),
                ("GET /api/tasks/<id>", app, "GET", f"/api/tasks/{task['id']}", None, small_headers),
                ("GET /api/tasks/changes, up-to-date cursor", app, "GET", f"/api/tasks/changes?cursor={up_to_date}", None, syncer_headers),
                ("GET /api/tasks/changes, page of 100 changes", app, "GET", f"/api/tasks/changes?cursor={before_changes}&limit=100",
                 None, syncer_headers),
                ("PATCH /api/tasks/<id>/complete", app, "PATCH", f"/api/tasks/{task['id']}/complete", None, small_headers),
                ("POST /api/auth/login (argon2id)", app, "POST", "/api/auth/login",
                 {"email": "small@bench.example.com", "password": PASSWORD}, {}),
            ]  # fmt: skip
            if args.scale_tasks:
                big = request("POST", app.base + "/api/auth/login", {"email": "big@bench.example.com", "password": PASSWORD})
                big_headers = {"Authorization": f"Bearer {big['access_token']}"}
                # The page before the deep one, by number, gives the next_cursor that reaches it by `after`.
                _, answer = request("GET", f"{app.base}/api/tasks?page={args.deep_page - 1}", None, big_headers, answer_headers=True)
                deep_cursor = json.loads(answer["X-Pagination"])["next_cursor"]
                scenarios += [
                    ("scale: 100-task user, page 1", app, "GET", "/api/tasks", None, small_headers),
                    (f"scale: {args.big_user_tasks:,}-task user, page 1", app, "GET", "/api/tasks", None, big_headers),
                    (f"scale: {args.big_user_tasks:,}-task user, page {args.deep_page:,}", app, "GET",
                     f"/api/tasks?page={args.deep_page}", None, big_headers),
                    (f"scale: same page {args.deep_page:,} by after", app, "GET", f"/api/tasks?after={deep_cursor}", None, big_headers),
                ]  # fmt: skip

            if args.filter_tasks:
                login = request("POST", app.base + "/api/auth/login", {"email": "filters@bench.example.com", "password": PASSWORD})
                filter_headers = {"Authorization": f"Bearer {login['access_token']}"}
                scenarios += [
                    (
                        f"filters: {args.filter_tasks:,} tasks, {query or 'unfiltered'}",
                        app,
                        "GET",
                        f"/api/tasks{query}",
                        None,
                        filter_headers,
                    )
                    for query in FILTERED_QUERIES
                ]

            results = {name: [] for name, *_ in scenarios}
            for number in range(1, args.rounds + 1):
                print(f"round {number} of {args.rounds} ...", file=sys.stderr, flush=True)
                for name, server, method, path, body, headers in scenarios:
                    if number == 1:
                        generate(server.base + path, method, body, headers, 1, args.connections, tmp)  # warm up
                    pids = server.pids() + (postgres_backends(database_url) if postgres and server is app else [])
                    before = cpu_seconds(pids)
                    count, errors, p50, p99 = generate(server.base + path, method, body, headers, args.seconds, args.connections, tmp)
                    used = cpu_seconds(pids) - before
                    results[name].append(
                        {"rps": count / args.seconds, "p50": p50, "p99": p99, "cpu_ms": used * 1000 / max(count, 1), "errors": errors}
                    )
            rss = [rss_mb(pid) for pid in app.workers()]

            recycling = None
            if args.recycle_after:
                # Workers replaced every ~recycle_after requests: with preload_app a new worker is a
                # fork of the master, ready at once; p99 shows whether its users notice.
                recycling = ["--max-requests", str(args.recycle_after), "--max-requests-jitter", str(args.recycle_after // 10)]
                recycler = Gunicorn("wsgi:app", {**env, "FLASK_AUTO_MIGRATE": "false"}, extra=recycling)
                servers.append(recycler)
                path = f"/api/tasks/{task['id']}"
                generate(recycler.base + path, "GET", None, small_headers, 1, args.connections, tmp)
                seen, p99s, counts = set(recycler.workers()), [], 0
                for _ in range(args.rounds):
                    count, errors, _p50, p99 = generate(
                        recycler.base + path, "GET", None, small_headers, args.seconds, args.connections, tmp
                    )
                    p99s.append(p99)
                    counts += count
                    seen.update(recycler.workers())
                recycling = {"p99": p99s, "requests": counts, "workers": len(seen), "errors": errors}
        finally:
            for server in servers:
                server.stop()

    floors = [r["cpu_ms"] for r in results["floor: bare Flask JSON route"]]
    ratios = {name: [r["cpu_ms"] / floor for r, floor in zip(runs, floors, strict=True)] for name, runs in results.items()}
    print(f"\ntodo-api benchmark — {'PostgreSQL' if postgres else 'SQLite'}, gunicorn 2 workers, {generate.__name__[4:]} client, "
          f"{args.connections} connections, {args.rounds} interleaved rounds of {args.seconds:g} s per endpoint, "
          f"{os.cpu_count()} cores")  # fmt: skip
    print("Medians over the rounds, (ranges); the CPU ratio is to the same round's floor.\n")
    print(f"{'endpoint':44} {'req/s':>16} {'p50 ms':>18} {'p99 ms':>18} {'CPU ms/req':>20} {'x floor':>18} {'errors':>6}")
    for name, runs in results.items():
        column = lambda key, digits=2, runs=runs: spread([r[key] for r in runs], digits)  # noqa: E731
        print(
            f"{name:44} {column('rps', 0):>16} {column('p50'):>18} {column('p99'):>18} {column('cpu_ms', 3):>20} "
            f"{spread(ratios[name]):>18} {sum(r['errors'] for r in runs):6d}"
        )
    print(f"\nRSS per worker after the run: {', '.join(f'{mb:.1f} MB' for mb in rss)}")
    if recycling:
        print(
            f"GET /api/tasks/<id> with max_requests {args.recycle_after}: {recycling['requests']:,} requests served by "
            f"{recycling['workers']} workers in turn (2 at a time); p99 {spread(recycling['p99'])} ms, errors {recycling['errors']}"
        )

    median = lambda name: statistics.median(ratios[name])  # noqa: E731
    cpu = lambda name: statistics.median(r["cpu_ms"] for r in results[name])  # noqa: E731
    checks = [
        ("GET /api/tasks ≤ 6.0× floor (issue 11)", median("GET /api/tasks (page of 20 tagged)"), 6.0),
        ("POST /api/tasks (two tags) ≤ 7.5× floor (issue 20)", median("POST /api/tasks (two tags)"), 7.5),
        ("GET /api/tasks/<id> ≤ 4.8× floor (issue 11)", median("GET /api/tasks/<id>"), 4.8),
        ("RSS per worker ≤ 64 MB", max(rss), 64.0),
        ("sync, up-to-date cursor ÷ GET /api/tasks/<id> ≤ 1.2 (issue 13)",
         cpu("GET /api/tasks/changes, up-to-date cursor") / cpu("GET /api/tasks/<id>"), 1.2),
        ("replayed keyed POST ÷ fresh POST ≤ 1.0 (issue 13)",
         cpu("POST /api/tasks, replayed Idempotency-Key") / cpu("POST /api/tasks (two tags)"), 1.0),
    ]  # fmt: skip
    if postgres:
        checks = checks[3:]  # the floor bounds are SQLite's; on PostgreSQL the round trips are the measure
        checks.insert(0, ("POST /api/tasks (two tags) ≤ 11× floor on PostgreSQL (issue 20)", median("POST /api/tasks (two tags)"), 11.0))
    if args.scale_tasks:
        names = [name for name in results if name.startswith("scale:")]
        small_page, big_page, big_last, big_after = (cpu(name) for name in names)
        checks += [
            ("scale: big user's page 1 ≤ 2.5× 100-task user's page 1", big_page / small_page, 2.5),
            (f"scale: big user's page {args.deep_page:,} ÷ their page 1 (by page number)", big_last / big_page, float("inf")),
            (f"scale: page {args.deep_page:,} by after ÷ their page 1 ≤ 1.3 (issue 13)", big_after / big_page, 1.3),
        ]
    if args.filter_tasks:
        names = [name for name in results if name.startswith("filters:")]
        unfiltered = cpu(names[0])
        for name, query in zip(names[1:], FILTERED_QUERIES[1:], strict=True):
            limit = float("inf") if query.startswith("?q=") else 3.0  # a text search may scan
            checks.append((f"filters: {query} ÷ unfiltered{' ≤ 3' if limit == 3.0 else ''} (issue 20)", cpu(name) / unfiltered, limit))
    print(f"\n{'target':64} {'median':>9}  verdict")
    for name, value, limit in checks:
        print(f"{name:64} {value:9.2f}  {'met' if value <= limit else 'MISSED' if limit != float('inf') else '-'}")
    login_rps = statistics.median(r["rps"] for r in results["POST /api/auth/login (argon2id)"])
    print(f"{'POST /api/auth/login ≥ 20 per second':64} {login_rps:9.1f}  {'met' if login_rps >= 20 else 'MISSED'}")


if __name__ == "__main__":
    main()
