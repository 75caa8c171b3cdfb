"""The README's curl walk-through, run as written, twice, against the development server that
`make run` starts; and that server logs each request once."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.loopback import free_port, wait_until_healthy

ROOT = Path(__file__).resolve().parent.parent
FLASK = Path(sys.executable).parent / "flask"


def walk_through():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## A walk through with curl", 1)[1]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def dev_server(tmp_path):
    """`flask --app todo_api run` (what `make run` starts) on a free port with a fresh SQLite file."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'readme.db'}",
        "JWT_SECRET_KEY": "readme-secret-key-that-is-long-enough-0123",
    }
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [FLASK, "--app", "todo_api", "run", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    try:
        assert wait_until_healthy(f"http://127.0.0.1:{port}", 60, process), log.read_text()[-3000:]
        yield f"http://127.0.0.1:{port}", log
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_the_walk_through_runs_twice_as_written_and_each_request_is_logged_once(dev_server, tmp_path):
    base, log = dev_server
    script = walk_through()
    runs = []
    for _ in range(2):
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            env={**os.environ, "API": base},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stderr == ""
        runs.append(result.stdout)
    statuses = [re.findall(r"^(?:HTTP/1\.1|status) (\d{3})", output, re.M) for output in runs]
    # signup, login, create, list, 304, If-Match 200, stale If-Match 412, complete, delete, trash,
    # restore, keyed create and its replay, full sync, sync with its cursor, keyset page,
    # recurring create and its completion, refresh, me, logout, me after logout
    expected = ["201", "200", "201", "200", "304", "200", "412", "200", "204", "200", "200", "201", "201", "200", "200", "200"]
    expected += ["201", "200", "200", "200", "204", "401"]
    assert statuses[0] == expected
    assert statuses[1] == ["409", *expected[1:]]  # the account exists the second time
    for output in runs:
        assert re.search(r"^Location: /api/tasks/\d+\r?$", output, re.M | re.I)
        assert re.search(r"^ETag: \S+", output, re.M | re.I)
        assert re.search(r"^X-Pagination: \{", output, re.M | re.I)
        assert len(re.findall(r"^Idempotent-Replayed: true\r?$", output, re.M | re.I)) == 1  # the retry only
        assert '{"changes":[],' in output.replace(" ", "")  # the sync with an up-to-date cursor
        assert re.search(r'^X-Pagination: \{"total": \d+, "total_pages": \d+', output, re.M | re.I)
        assert re.search(r'^Link: </api/tasks/\d+>; rel="next-occurrence"\r?$', output, re.M | re.I)

    # One line per request, the app's JSON one: the development server's own line is dropped.
    # (The ETag and next_cursor lookups are two more requests than the statuses above; /health
    # polls come first.)
    lines = [line for line in log.read_text().splitlines() if "/api/" in line]
    assert len(lines) == 2 * (len(expected) + 2)
    assert all(json.loads(line)["message"] == "request" for line in lines)
