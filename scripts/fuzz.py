"""Fuzz the running service with schemathesis, as a black box, from its own OpenAPI document.

Starts gunicorn (2 workers, rate limits off) on loopback with a throw-away database, signs up
two users as peers (so object-level authorization is checked between them), and runs
`st run --checks all` with a fixed seed and a time budget. Exits with schemathesis's status.

    .venv/bin/python scripts/fuzz.py [--max-time SECONDS] [--seed N] [--port N]
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from scripts.loopback import wait_until_healthy  # noqa: E402  (needs ROOT on the path)

BIN = Path(sys.executable).parent
PEERS = {"alice": "alice@fuzz.example.com", "bob": "bob@fuzz.example.com"}
PASSWORD = "fuzzing password 1"
# Logout and account deletion revoke the peers' tokens; tests/test_auth.py covers them.
EXCLUDED = ["POST /api/auth/logout", "DELETE /api/auth/me"]
# schemathesis's defaults for schema-valid requests, plus 412.
POSITIVE_STATUSES = ["2xx", "3xx", "401", "403", "404", "409", "412", "429"]


def post_json(url, body):
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def empty_database(url):
    """Start from no tables, so the peers can sign up again on a database used before."""
    from scripts.scratch import drop_everything

    drop_everything(url)


def show_server_errors(log):
    """The server's log is one JSON line per request; print only what went wrong."""
    lines = log.read_text(errors="replace").splitlines()
    errors = [line for line in lines if '"level": "INFO"' not in line and "[INFO]" not in line]
    print(f"server: {len(lines) - len(errors)} access lines, {len(errors)} other lines", flush=True)
    for line in errors[:50]:
        print("  " + line[:2000], flush=True)


def summarise(report_dir):
    """One closing line, per API operation, from schemathesis's JUnit report."""
    tests = failures = 0
    for report in report_dir.glob("*.xml"):
        for suite in ElementTree.parse(report).getroot().iter("testsuite"):
            tests += int(suite.get("tests", 0))
            failures += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    print(f"schemathesis: {tests - failures} passed, {failures} failed", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-time", type=int, default=180)
    parser.add_argument("--seed", type=int, default=20261121)
    parser.add_argument("--port", type=int, default=5077)
    args = parser.parse_args()
    base = f"http://127.0.0.1:{args.port}"

    with tempfile.TemporaryDirectory(prefix="todo-fuzz-") as tmp:
        tmp = Path(tmp)
        database_url = os.environ.get("FUZZ_DATABASE_URL") or f"sqlite:///{tmp / 'fuzz.db'}"
        empty_database(database_url)
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "JWT_SECRET_KEY": "fuzz-secret-key-that-is-long-enough-0123456789",
            "RATELIMIT_ENABLED": "false",
        }
        server_log = open(tmp / "server.log", "wb")  # closed with the server, below
        server = subprocess.Popen(
            [BIN / "gunicorn", "--workers", "2", "--bind", f"127.0.0.1:{args.port}", "--log-level", "warning", "wsgi:app"],
            cwd=ROOT,
            env=env,
            stdout=server_log,
            stderr=server_log,
            start_new_session=True,
        )
        try:
            if not wait_until_healthy(base, 30, server):
                raise SystemExit(f"{base}/health did not come up in 30 s")
            for email in PEERS.values():
                post_json(f"{base}/api/auth/signup", {"email": email, "password": PASSWORD})
            auth = {
                "auth": [
                    {
                        "name": name,
                        "loginEndpointAuth": {
                            "endpoint": "/api/auth/login",
                            "verb": "POST",
                            "contentType": "application/json",
                            "payloadUserPwd": {
                                "username": email,
                                "usernameField": "email",
                                "password": PASSWORD,
                                "passwordField": "password",
                            },
                            "token": {
                                "extractFrom": "body",
                                "extractSelector": "/access_token",
                                "sendIn": "header",
                                "sendName": "Authorization",
                                "sendTemplate": "Bearer {token}",
                            },
                        },
                    }
                    for name, email in PEERS.items()
                ]
            }
            (tmp / "auth.json").write_text(json.dumps(auth))
            (tmp / "schemathesis.toml").write_text(
                f"seed = {args.seed}\n"
                "[auth.wfc]\n"
                f'path = "{tmp / "auth.json"}"\n'
                f"peers = {json.dumps(list(PEERS))}\n"
                # A schema-valid If-Match that is not the task's ETag is rightly a 412.
                "[checks.positive_data_acceptance]\n"
                f"expected-statuses = {json.dumps(POSITIVE_STATUSES)}\n"
            )
            # One schemathesis worker: with two threads, hypothesis's concurrent ast.parse calls (it
            # describes lambdas) hit CPython 3.11's shared AST recursion counter and fail with
            # "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905).
            command = [
                BIN / "st", "--config-file", tmp / "schemathesis.toml", "run", f"{base}/openapi.json",
                "--checks", "all", "--max-time", str(args.max_time), "--workers", "1",
                "--report", "junit", "--report-dir", tmp / "report",
            ]  # fmt: skip
            for operation in EXCLUDED:
                command += ["--exclude-name", operation]
            print("$", " ".join(map(str, command)), flush=True)
            hooks = {"SCHEMATHESIS_HOOKS": str(ROOT / "scripts" / "fuzz_hooks.py")}
            status = subprocess.call(command, cwd=tmp, env={**os.environ, **hooks})
            summarise(tmp / "report")
            return status
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
            server_log.close()
            show_server_errors(tmp / "server.log")


if __name__ == "__main__":
    sys.exit(main())
