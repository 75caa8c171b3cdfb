"""Interop with a real Better Auth server (tests/better_auth: better-auth 1.7.25 with its jwt()
plugin, on better-sqlite3, pinned by its package-lock.json), started by the suite itself: sign up
there, fetch /api/auth/token, and use this service's Phase II paths with that token. Skipped
where Node.js is missing, except under CI=true, where it fails instead."""

import json
import os
import shutil
import signal
import subprocess
import urllib.request

import pytest

from helpers import bearer
from scripts.loopback import free_port

HERE = os.path.join(os.path.dirname(__file__), "better_auth")


def node_or_skip():
    if shutil.which("node") and shutil.which("npm"):
        return
    if os.environ.get("CI") == "true":
        pytest.fail("Node.js and npm are needed for the Better Auth interop test (CI=true: not skipped)")
    pytest.skip("Node.js and npm are not installed: the Better Auth interop test needs them")


@pytest.fixture(scope="module")
def better_auth(tmp_path_factory):
    """A Better Auth server on loopback; its base URL (its tokens' iss and aud)."""
    node_or_skip()
    if not os.path.isdir(os.path.join(HERE, "node_modules")):
        # The first install compiles better-sqlite3 (a minute or two).
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True, timeout=900, capture_output=True)
    port = free_port()
    database = tmp_path_factory.mktemp("better-auth") / "auth.db"
    server = subprocess.Popen(
        ["node", "server.mjs", str(port), str(database)], cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        line = server.stdout.readline().decode()
        assert line.strip() == "ready", line + server.stdout.read(2000).decode(errors="replace")
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def call(url, body=None, cookie=None):
    headers = {"Content-Type": "application/json", **({"Cookie": cookie} if cookie else {})}
    request = urllib.request.Request(url, json.dumps(body).encode() if body is not None else None, headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read()), response.headers.get_all("Set-Cookie") or []


def sign_up_and_get_a_token(base, email):
    user, cookies = call(f"{base}/api/auth/sign-up/email", {"email": email, "password": "correct horse battery", "name": "Ada"})
    cookie = "; ".join(header.split(";", 1)[0] for header in cookies)
    token, _ = call(f"{base}/api/auth/token", cookie=cookie)
    return user["user"], token["token"]


@pytest.fixture
def config(config, better_auth):
    return {**config, "AUTH_ISSUER": better_auth}


def test_a_better_auth_token_works_on_the_phase_two_paths(client, better_auth):
    user, token = sign_up_and_get_a_token(better_auth, "ada@example.com")
    headers = bearer(token)
    me = client.get("/api/auth/me", headers=headers)
    assert me.status_code == 200, me.json
    assert (me.json["issuer"], me.json["subject"], me.json["email"], me.json["name"]) == (better_auth, user["id"], "ada@example.com", "Ada")
    created = client.post(f"/api/{user['id']}/tasks", json={"title": "From Better Auth", "tags": ["interop"]}, headers=headers)
    assert created.status_code == 201, created.json
    task = created.json
    listed = client.get(f"/api/{user['id']}/tasks", headers=headers)
    assert listed.status_code == 200 and listed.json == [task]
    completed = client.patch(f"/api/{user['id']}/tasks/{task['id']}/complete", headers=headers)
    assert completed.status_code == 200 and completed.json["completed"] is True
    assert client.delete(f"/api/{user['id']}/tasks/{task['id']}", headers=headers).status_code == 204
    assert client.get(f"/api/{user['id']}/tasks", headers=headers).json == []
    # Another Better Auth user is another account; their path is not this one's.
    other, other_token = sign_up_and_get_a_token(better_auth, "grace@example.com")
    assert client.get(f"/api/{user['id']}/tasks", headers=bearer(other_token)).status_code == 403
    assert client.get(f"/api/{other['id']}/tasks", headers=bearer(other_token)).json == []
    # What Better Auth manages is refused here.
    assert client.post("/api/auth/logout", headers=headers).status_code == 403
