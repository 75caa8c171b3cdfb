"""Idempotency-Key on POST /api/tasks, PATCH .../complete and POST /api/trash/<id>/restore: a
retry replays the first success and runs nothing."""

from datetime import timedelta

import pytest
from sqlalchemy import event, func, select, text, update

from helpers import POSTGRES, another_worker
from todo_api import IdempotencyKey, Task, User, db, in_flight_lock, utcnow


def keyed(headers, key):
    return {**headers, "Idempotency-Key": key}


def count_tasks(app):
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Task))


def test_a_retried_create_replays_the_first_answer_and_creates_nothing(app, client, auth_headers):
    body = {"title": "pay rent", "tags": ["home"]}
    first = client.post("/api/tasks", json=body, headers=keyed(auth_headers, "create-1"))
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    again = client.post("/api/tasks", json=body, headers=keyed(auth_headers, "create-1"))
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Content-Type"] == "application/json"
    assert (again.headers["Location"], again.headers["ETag"]) == (first.headers["Location"], first.headers["ETag"])
    assert again.json == first.json
    assert count_tasks(app) == 1
    with app.app_context():
        assert db.session.scalar(select(User.task_count)) == 1
    # The same JSON, spelled differently, is the same request.
    respelled = client.post(
        "/api/tasks",
        data='{"tags": ["home"],  "title": "pay rent"}',
        content_type="application/json",
        headers=keyed(auth_headers, "create-1"),
    )
    assert respelled.status_code == 201 and respelled.json == first.json
    assert client.post("/api/tasks", json=body, headers=keyed(auth_headers, "create-2")).json["id"] != first.json["id"]
    assert client.post("/api/tasks", json=body, headers=auth_headers).status_code == 201  # no key: served as usual
    assert count_tasks(app) == 3


def test_a_replay_gives_the_first_answer_even_after_the_task_changed(client, auth_headers):
    first = client.post("/api/tasks", json={"title": "a"}, headers=keyed(auth_headers, "k"))
    client.patch(first.headers["Location"], json={"title": "changed"}, headers=auth_headers)
    again = client.post("/api/tasks", json={"title": "a"}, headers=keyed(auth_headers, "k"))
    assert (again.status_code, again.json, again.headers["ETag"]) == (201, first.json, first.headers["ETag"])


def test_a_retried_toggle_does_not_toggle_again(client, auth_headers, make_task):
    task = make_task()
    path = f"/api/tasks/{task['id']}/complete"
    first = client.patch(path, headers=keyed(auth_headers, "toggle"))
    assert first.status_code == 200 and first.json["completed"] is True
    for _ in range(2):
        again = client.patch(path, headers=keyed(auth_headers, "toggle"))
        assert (again.status_code, again.json, again.headers["Idempotent-Replayed"]) == (200, first.json, "true")
    assert client.get(f"/api/tasks/{task['id']}", headers=auth_headers).json["completed"] is True
    user_id = client.get("/api/auth/me", headers=auth_headers).json["id"]
    phase2 = client.patch(f"/api/{user_id}/tasks/{task['id']}/complete", headers=keyed(auth_headers, "toggle"))
    assert phase2.status_code == 422  # another path: another request


def test_a_retried_restore_replays(client, auth_headers, make_task):
    task = make_task()
    client.delete(f"/api/tasks/{task['id']}", headers=auth_headers)
    first = client.post(f"/api/trash/{task['id']}/restore", headers=keyed(auth_headers, "restore"))
    assert first.status_code == 200
    again = client.post(f"/api/trash/{task['id']}/restore", headers=keyed(auth_headers, "restore"))
    assert (again.status_code, again.json, again.headers["Location"], again.headers["Idempotent-Replayed"]) == (
        200,
        first.json,
        f"/api/tasks/{task['id']}",
        "true",
    )


def test_the_same_key_on_a_different_request_is_a_422(app, client, auth_headers):
    assert client.post("/api/tasks", json={"title": "a"}, headers=keyed(auth_headers, "same")).status_code == 201
    for method, path, body in (
        ("POST", "/api/tasks", {"title": "b"}),
        ("POST", "/api/tasks", {"title": "a", "priority": "high"}),
        ("PATCH", "/api/tasks/1/complete", None),
        ("POST", "/api/trash/1/restore", None),
    ):
        response = client.open(path, method=method, json=body, headers=keyed(auth_headers, "same"))
        assert response.status_code == 422, (method, path)
        assert list(response.json["errors"]["headers"]) == ["Idempotency-Key"]
    assert count_tasks(app) == 1


def test_keys_are_per_user(app, client, auth_headers, other_auth_headers):
    mine = client.post("/api/tasks", json={"title": "a"}, headers=keyed(auth_headers, "shared"))
    theirs = client.post("/api/tasks", json={"title": "a"}, headers=keyed(other_auth_headers, "shared"))
    assert mine.status_code == theirs.status_code == 201 and "Idempotent-Replayed" not in theirs.headers
    assert mine.json["id"] != theirs.json["id"]
    assert client.get(theirs.headers["Location"], headers=other_auth_headers).status_code == 200


def test_an_error_is_not_kept_and_the_key_can_be_sent_again(app, client, auth_headers):
    assert client.post("/api/tasks", json={"title": ""}, headers=keyed(auth_headers, "retry")).status_code == 422
    assert client.post("/api/tasks", json={"title": "fixed"}, headers=keyed(auth_headers, "retry")).status_code == 201
    assert client.patch("/api/tasks/999/complete", headers=keyed(auth_headers, "gone")).status_code == 404
    assert client.post("/api/trash/999/restore", headers=keyed(auth_headers, "gone")).status_code == 404
    with app.app_context():
        assert db.session.scalars(select(IdempotencyKey.key)).all() == ["retry"]


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "caf\u00e9", "\x7f"])
def test_a_key_outside_1_to_255_printable_ascii_characters_is_a_422(client, auth_headers, make_task, key):
    task = make_task()
    for method, path in (
        ("POST", "/api/tasks"),
        ("PATCH", f"/api/tasks/{task['id']}/complete"),
        ("POST", f"/api/trash/{task['id']}/restore"),
    ):
        response = client.open(path, method=method, json={"title": "a"} if path == "/api/tasks" else None, headers=keyed(auth_headers, key))
        assert response.status_code == 422, (key, path)
        assert list(response.json["errors"]["headers"]) == ["Idempotency-Key"]


@pytest.mark.parametrize("key", ["a", " !~", "x" * 255, "550e8400-e29b-41d4-a716-446655440000"])
def test_keys_of_1_to_255_printable_ascii_characters_are_taken(client, auth_headers, key):
    assert client.post("/api/tasks", json={"title": "a"}, headers=keyed(auth_headers, key)).status_code == 201
    assert client.post("/api/tasks", json={"title": "a"}, headers=keyed(auth_headers, key)).headers["Idempotent-Replayed"] == "true"


@pytest.mark.config(IDEMPOTENCY_TTL=60)
def test_past_the_ttl_a_key_is_served_anew(app, client, auth_headers):
    first = client.post("/api/tasks", json={"title": "a"}, headers=keyed(auth_headers, "old"))
    with app.app_context():
        db.session.execute(update(IdempotencyKey).values(created_at=utcnow() - timedelta(seconds=61)))
        db.session.commit()
    again = client.post("/api/tasks", json={"title": "a"}, headers=keyed(auth_headers, "old"))
    assert again.status_code == 201 and "Idempotent-Replayed" not in again.headers and again.json["id"] != first.json["id"]
    assert client.post("/api/tasks", json={"title": "a"}, headers=keyed(auth_headers, "old")).json == again.json


def test_the_key_and_the_write_are_one_transaction(app, client, auth_headers):
    """A failure between the task and its key (here: storing the key fails) leaves neither."""

    def fail_on_key(_conn, _cursor, statement, *_args):
        if statement.startswith("INSERT INTO idempotency_keys"):
            raise RuntimeError("the worker dies here")

    with app.app_context():
        event.listen(db.engine, "before_cursor_execute", fail_on_key)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    try:
        assert client.post("/api/tasks", json={"title": "a"}, headers=keyed(auth_headers, "atomic")).status_code == 500
    finally:
        with app.app_context():
            event.remove(db.engine, "before_cursor_execute", fail_on_key)
    assert count_tasks(app) == 0
    with app.app_context():
        assert db.session.scalar(select(User.task_count)) == 0 and db.session.scalar(select(func.count()).select_from(IdempotencyKey)) == 0
    assert client.post("/api/tasks", json={"title": "a"}, headers=keyed(auth_headers, "atomic")).status_code == 201
    assert count_tasks(app) == 1


@pytest.mark.skipif(
    not POSTGRES,
    reason="an in-flight request is only observable on PostgreSQL: SQLite runs writes one at a time (tests/test_processes.py covers both)",
)
def test_a_key_whose_request_is_in_flight_is_a_409(app, client, auth_headers):
    user_id = client.get("/api/auth/me", headers=auth_headers).json["id"]
    lock = in_flight_lock(user_id, "busy")
    with another_worker() as connection:  # another worker serving the first request
        assert connection.execute(text("SELECT pg_try_advisory_xact_lock(:lock)"), {"lock": lock}).scalar()
        response = client.post("/api/tasks", json={"title": "a"}, headers=keyed(auth_headers, "busy"))
        assert response.status_code == 409 and "still being served" in response.json["message"]
        connection.rollback()
    assert client.post("/api/tasks", json={"title": "a"}, headers=keyed(auth_headers, "busy")).status_code == 201
    assert count_tasks(app) == 1


@pytest.mark.skipif(not POSTGRES, reason="the in-flight lock is PostgreSQL's (see above)")
def test_a_replay_takes_no_lock_so_concurrent_replays_all_get_the_answer(app, client, auth_headers):
    first = client.post("/api/tasks", json={"title": "a"}, headers=keyed(auth_headers, "done"))
    assert first.status_code == 201
    user_id = client.get("/api/auth/me", headers=auth_headers).json["id"]
    lock = in_flight_lock(user_id, "done")
    with another_worker() as connection:  # another replay of it, being served
        assert connection.execute(text("SELECT pg_try_advisory_xact_lock(:lock)"), {"lock": lock}).scalar()
        replayed = client.post("/api/tasks", json={"title": "a"}, headers=keyed(auth_headers, "done"))
        assert replayed.status_code == 201 and replayed.headers["Idempotent-Replayed"] == "true"
        assert replayed.json == first.json
        connection.rollback()
    assert count_tasks(app) == 1
