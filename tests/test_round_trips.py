"""What each request sends its database, counted round trip by round trip (see
helpers.database_round_trips), on SQLite and on PostgreSQL; and how pooled connections that
died are replaced without a ping on every request."""

import json
import os

import pytest
from sqlalchemy import create_engine, text

from helpers import POSTGRES, database_round_trips
from todo_api import database_uri


def first_words(sent):
    return [statement.split(None, 1)[0].upper() for statement in sent]


def steady(client, method, path, **kwargs):
    """The request twice, to warm every cache: what follows costs what it does under steady load."""
    for _ in range(2):
        assert client.open(path, method=method, **kwargs).status_code < 400


@pytest.mark.parametrize(
    "method, path, body, expected",
    [
        ("GET", "/api/tasks", None, ["SELECT", "SELECT"]),  # the session and user; the page (the total is the counter)
        ("GET", "/api/tasks?tag=work&sort=title", None, ["SELECT", "SELECT"]),  # a short page tells its total
        ("GET", "/api/tasks?due_after=2020-01-01T00:00:00Z&page=2", None, ["SELECT", "SELECT"]),  # counted first: no page past it
        ("GET", "/api/tasks/{id}", None, ["SELECT", "SELECT"]),
        # Writes number the change on the user's row first (its counter moves in the same UPDATE).
        ("POST", "/api/tasks", {"title": "t", "tags": ["a", "b"]}, ["BEGIN", "SELECT", "UPDATE", "INSERT", "INSERT", "COMMIT"]),
        ("PATCH", "/api/tasks/{id}", {"title": "renamed"}, ["BEGIN", "SELECT", "SELECT", "UPDATE", "UPDATE", "COMMIT"]),
        ("PUT", "/api/tasks/{id}", {"title": "put", "tags": ["work"]}, ["BEGIN", "SELECT", "SELECT", "UPDATE", "UPDATE", "COMMIT"]),
        ("GET", "/api/tasks/changes", None, ["SELECT", "SELECT"]),  # a full sync: the changes, tombstones too, in one statement
    ],
)
def test_round_trips_per_request(app, client, auth_headers, make_task, method, path, body, expected):
    task = make_task(tags=["work"])
    path = path.format(id=task["id"])
    kwargs = {"headers": auth_headers, **({"json": body} if body is not None else {})}
    steady(client, method, path, **kwargs)
    if body:  # a change again, not a repeat that changes nothing
        kwargs["json"] = {**body, "title": "changed again"}
    with database_round_trips(app) as sent:
        response = client.open(path, method=method, **kwargs)
    assert response.status_code in (200, 201), response.json
    assert first_words(sent) == expected, sent


def test_changing_tags_writes_only_the_tag_rows_that_changed(app, client, auth_headers, make_task):
    task = make_task(tags=["keep", "drop"])
    path = f"/api/tasks/{task['id']}"
    with database_round_trips(app) as sent:
        response = client.patch(path, json={"tags": ["keep", "new"]}, headers=auth_headers)
    assert response.status_code == 200
    assert first_words(sent) == ["BEGIN", "SELECT", "SELECT", "UPDATE", "UPDATE", "DELETE", "INSERT", "COMMIT"], sent
    assert client.get("/api/tasks?tag=drop", headers=auth_headers).json == []
    assert [t["id"] for t in client.get("/api/tasks?tag=new", headers=auth_headers).json] == [task["id"]]


def test_moving_a_task_to_the_trash_is_six_round_trips(app, client, auth_headers, make_task):
    for _ in range(2):  # warm up
        assert client.delete(f"/api/tasks/{make_task()['id']}", headers=auth_headers).status_code == 204
    task = make_task(tags=["x"])
    with database_round_trips(app) as sent:
        response = client.delete(f"/api/tasks/{task['id']}", headers=auth_headers)
    assert response.status_code == 204
    assert first_words(sent) == ["BEGIN", "SELECT", "SELECT", "UPDATE", "UPDATE", "COMMIT"], sent


def test_a_sync_with_an_up_to_date_cursor_reads_only_the_session(app, client, auth_headers, make_task):
    make_task()
    cursor = client.get("/api/tasks/changes", headers=auth_headers).json["cursor"]
    steady(client, "GET", f"/api/tasks/changes?cursor={cursor}", headers=auth_headers)
    with database_round_trips(app) as sent:
        response = client.get(f"/api/tasks/changes?cursor={cursor}", headers=auth_headers)
    assert response.status_code == 200 and response.json["changes"] == []
    assert first_words(sent) == ["SELECT"], sent  # the token's session and user, with the user's change number


def test_a_keyed_post_adds_one_insert_and_its_replay_reads_only_the_key(app, client, auth_headers):
    steady(client, "POST", "/api/tasks", json={"title": "warm"}, headers={**auth_headers, "Idempotency-Key": "warm"})
    keyed = {**auth_headers, "Idempotency-Key": "counted"}
    lock = ["SELECT", "SELECT"] if POSTGRES else []  # pg_try_advisory_xact_lock (in flight), then the key again
    with database_round_trips(app) as sent:
        response = client.post("/api/tasks", json={"title": "t", "tags": ["a"]}, headers=keyed)
    assert response.status_code == 201
    # BEGIN, the session, the stored key (none), [the lock, the key], the change number, the task,
    # its tags, the key, COMMIT.
    assert first_words(sent) == ["BEGIN", "SELECT", "SELECT", *lock, "UPDATE", "INSERT", "INSERT", "INSERT", "COMMIT"], sent
    with database_round_trips(app) as sent:
        replayed = client.post("/api/tasks", json={"title": "t", "tags": ["a"]}, headers=keyed)
    assert replayed.status_code == 201 and replayed.headers["Idempotent-Replayed"] == "true"
    assert first_words(sent) == ["BEGIN", "SELECT", "SELECT", "COMMIT"], sent  # the stored answer, no lock; a commit with nothing to write


def test_a_keyset_page_is_one_statement_after_the_session(app, client, auth_headers, make_task):
    for _ in range(3):
        make_task()
    cursor = json.loads(client.get("/api/tasks?page_size=1", headers=auth_headers).headers["X-Pagination"])["next_cursor"]
    steady(client, "GET", f"/api/tasks?page_size=1&after={cursor}", headers=auth_headers)
    with database_round_trips(app) as sent:
        response = client.get(f"/api/tasks?page_size=1&after={cursor}", headers=auth_headers)
    assert response.status_code == 200 and len(response.json) == 1
    assert first_words(sent) == ["SELECT", "SELECT"], sent  # the total is the counter
    assert "(tasks.created_at, tasks.id) < (" in sent[1], sent[1]  # a range of the index, no rows skipped by offset


# --- connections that died in the pool (PostgreSQL) ---

needs_postgres = pytest.mark.skipif(not POSTGRES, reason="needs a database server: set TEST_DATABASE_URL to PostgreSQL")


def end_the_apps_connections():
    """What a server restart or a network drop does to the app's pooled connections."""
    admin = create_engine(database_uri(os.environ["TEST_DATABASE_URL"]))
    with admin.connect() as connection:
        ended = connection.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'todo-api' AND pid <> pg_backend_pid()")
        ).all()
    admin.dispose()
    return len(ended)


@needs_postgres
def test_a_connection_in_steady_use_is_not_pinged_and_if_it_died_is_replaced_after_one_503(client, auth_headers):
    assert client.get("/api/tasks", headers=auth_headers).status_code == 200
    assert end_the_apps_connections() >= 1
    response = client.get("/api/tasks", headers=auth_headers)
    assert response.status_code == 503
    assert response.json["message"] == "The database is unavailable; try again shortly."
    assert client.get("/api/tasks", headers=auth_headers).status_code == 200  # no restart


@needs_postgres
@pytest.mark.config(DB_PING_AFTER_IDLE=0)
def test_a_connection_idle_past_the_limit_is_pinged_and_replaced_before_use(client, auth_headers):
    assert client.get("/api/tasks", headers=auth_headers).status_code == 200
    assert end_the_apps_connections() >= 1
    assert client.get("/api/tasks", headers=auth_headers).status_code == 200


def test_a_write_that_changes_nothing_ends_its_transaction_in_the_request(app, client, auth_headers, make_task):
    task = make_task(title="same")
    with database_round_trips(app) as sent:
        response = client.patch(f"/api/tasks/{task['id']}", json={"title": "same"}, headers=auth_headers)
    assert response.status_code == 200
    assert first_words(sent) == ["BEGIN", "SELECT", "SELECT", "COMMIT"], sent


def test_completing_a_recurring_task_adds_its_successor_to_the_same_flush(app, client, auth_headers, make_task):
    for _ in range(2):  # warm up
        warm = make_task(due_date="2026-12-01T09:00:00Z", recurrence="FREQ=DAILY", tags=["w"])
        assert client.patch(f"/api/tasks/{warm['id']}/complete", headers=auth_headers).status_code == 200
    task = make_task(due_date="2026-12-01T09:00:00Z", recurrence="FREQ=DAILY", tags=["x", "y"])
    with database_round_trips(app) as sent:
        response = client.patch(f"/api/tasks/{task['id']}/complete", headers=auth_headers)
    assert response.status_code == 200 and "next-occurrence" in response.headers["Link"]
    # BEGIN, session, the task, one change number for both tasks (and the counter), the completed
    # task's UPDATE, the successor's INSERT, its tag rows (one INSERT), COMMIT.
    assert first_words(sent) == ["BEGIN", "SELECT", "SELECT", "UPDATE", "UPDATE", "INSERT", "INSERT", "COMMIT"], sent
