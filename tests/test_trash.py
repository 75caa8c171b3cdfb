"""The trash: DELETE moves a task there; it can be listed, restored, deleted for good, and it
expires after TRASH_RETENTION_DAYS."""

from datetime import datetime, timedelta

import pytest
from sqlalchemy import delete, func, select, update

from helpers import POSTGRES, another_worker, pagination, request_held_up
from todo_api import IdempotencyKey, Task, TaskTombstone, User, db, purge, utcnow


def trash(client, headers, query=""):
    response = client.get(f"/api/trash{query}", headers=headers)
    assert response.status_code == 200, response.json
    return response


def age_trash(app, task_id, days):
    """Pretend the task went to the trash `days` ago."""
    with app.app_context():
        db.session.execute(update(Task).where(Task.id == task_id).values(deleted_at=utcnow() - timedelta(days=days)))
        db.session.commit()


def test_a_deleted_task_is_gone_from_every_task_route_and_listing(client, auth_headers, make_task):
    kept = make_task(title="kept milk", tags=["home"], priority="high", due_date="2027-01-01T00:00:00Z")
    gone = make_task(title="gone milk", tags=["home"], priority="high", due_date="2027-01-01T00:00:00Z")
    assert client.delete(f"/api/tasks/{gone['id']}", headers=auth_headers).status_code == 204
    for method, path in (
        ("GET", ""),
        ("PUT", ""),
        ("PATCH", ""),
        ("DELETE", ""),
        ("PATCH", "/complete"),
    ):
        response = client.open(f"/api/tasks/{gone['id']}{path}", method=method, json={"title": "x"}, headers=auth_headers)
        assert response.status_code == 404, (method, path)
    for query in ("", "?tag=home", "?q=milk", "?priority=high", "?completed=false", "?due_after=2026-01-01T00:00:00Z", "?sort=title"):
        response = client.get(f"/api/tasks{query}", headers=auth_headers)
        assert response.status_code == 200
        assert [task["id"] for task in response.json] == [kept["id"]], query
        assert pagination(response)["total"] == 1, query
    changes = client.get("/api/tasks/changes", headers=auth_headers).json["changes"]
    assert [task["id"] for task in changes] == [kept["id"]]  # a full sync has no tombstones


def test_the_trash_lists_deleted_tasks_newest_first_with_their_deletion_time(app, client, auth_headers, make_task):
    first, second, live = make_task(title="first", tags=["a"]), make_task(title="second"), make_task(title="live")
    for task in (first, second):
        assert client.delete(f"/api/tasks/{task['id']}", headers=auth_headers).status_code == 204
    response = trash(client, auth_headers)
    assert [task["id"] for task in response.json] == [second["id"], first["id"]]
    listed = response.json[1]
    assert {key: listed[key] for key in first} == first  # a Task, as it was
    assert datetime.fromisoformat(listed["deleted_at"]) >= datetime.fromisoformat(first["updated_at"])
    assert pagination(response) == {"total": 2, "total_pages": 1, "first_page": 1, "last_page": 1, "page": 1}
    # Ties in deleted_at: higher id first.
    with app.app_context():
        db.session.execute(update(Task).where(Task.deleted_at.is_not(None)).values(deleted_at=datetime(2026, 12, 1)))
        db.session.commit()
    assert [task["id"] for task in trash(client, auth_headers).json] == [second["id"], first["id"]]
    page = trash(client, auth_headers, "?page=2&page_size=1")
    assert [task["id"] for task in page.json] == [first["id"]]
    assert pagination(page)["previous_page"] == 1 and 'rel="first"' in page.headers["Link"]
    assert client.get("/api/trash?page=0", headers=auth_headers).status_code == 422
    assert client.get("/api/trash?sort=title", headers=auth_headers).status_code == 422
    assert live["id"] not in [task["id"] for task in trash(client, auth_headers).json]


@pytest.mark.config(TRASH_RETENTION_DAYS=30)
def test_restore_brings_back_the_same_task_and_moves_updated_at(app, client, auth_headers, make_task):
    task = make_task(title="back", description="d", tags=["x", "y"], priority="low", completed=True, due_date="2027-02-03T04:05:06Z")
    assert client.delete(f"/api/tasks/{task['id']}", headers=auth_headers).status_code == 204
    age_trash(app, task["id"], 29)
    response = client.post(f"/api/trash/{task['id']}/restore", headers=auth_headers)
    assert response.status_code == 200
    assert response.headers["Location"] == f"/api/tasks/{task['id']}"
    assert response.headers["ETag"] == client.get(f"/api/tasks/{task['id']}", headers=auth_headers).headers["ETag"]
    restored = response.json
    assert restored["updated_at"] > task["updated_at"]
    assert {**restored, "updated_at": task["updated_at"]} == task
    assert "deleted_at" not in restored
    assert [t["id"] for t in client.get("/api/tasks?tag=x", headers=auth_headers).json] == [task["id"]]
    assert pagination(client.get("/api/tasks", headers=auth_headers))["total"] == 1
    assert trash(client, auth_headers).json == []
    assert client.post(f"/api/trash/{task['id']}/restore", headers=auth_headers).status_code == 404  # live now


def test_trash_routes_answer_404_for_what_is_not_in_the_callers_trash(client, auth_headers, other_auth_headers, make_task):
    live = make_task()
    others = make_task(headers=other_auth_headers)
    assert client.delete(f"/api/tasks/{others['id']}", headers=other_auth_headers).status_code == 204
    for task_id in (live["id"], others["id"], 999_999, 2**63, 10**30):
        assert client.post(f"/api/trash/{task_id}/restore", headers=auth_headers).status_code == 404, task_id
        response = client.delete(f"/api/trash/{task_id}", headers=auth_headers)
        assert response.status_code == 404, task_id
        if task_id < 2**63:  # beyond 64 bits no route matches (werkzeug's bounded int): the generic 404
            assert response.json["message"] == "No such task in your trash."
    assert [t["id"] for t in trash(client, other_auth_headers).json] == [others["id"]]  # untouched
    assert client.get("/api/trash").status_code == 401


@pytest.mark.config(TRASH_RETENTION_DAYS=30)
def test_past_the_retention_a_task_is_as_good_as_purged_before_any_clean_up(app, client, auth_headers, make_task):
    task = make_task()
    assert client.delete(f"/api/tasks/{task['id']}", headers=auth_headers).status_code == 204
    age_trash(app, task["id"], 30.01)
    assert trash(client, auth_headers).json == []
    assert pagination(trash(client, auth_headers))["total"] == 0
    assert client.post(f"/api/trash/{task['id']}/restore", headers=auth_headers).status_code == 404
    assert client.delete(f"/api/trash/{task['id']}", headers=auth_headers).status_code == 404


def test_delete_from_the_trash_and_empty_it_are_for_good(app, client, auth_headers, other_auth_headers, make_task):
    one, two, three = make_task(), make_task(), make_task()
    others = make_task(headers=other_auth_headers)
    for task in (one, two, three):
        assert client.delete(f"/api/tasks/{task['id']}", headers=auth_headers).status_code == 204
    assert client.delete(f"/api/tasks/{others['id']}", headers=other_auth_headers).status_code == 204
    response = client.delete(f"/api/trash/{one['id']}", headers=auth_headers)
    assert response.status_code == 204 and response.data == b""
    assert [t["id"] for t in trash(client, auth_headers).json] == [three["id"], two["id"]]
    assert client.post(f"/api/trash/{one['id']}/restore", headers=auth_headers).status_code == 404
    assert client.delete("/api/trash", headers=auth_headers).status_code == 204
    assert trash(client, auth_headers).json == []
    assert client.delete("/api/trash", headers=auth_headers).status_code == 204  # empty already: still fine
    assert [t["id"] for t in trash(client, other_auth_headers).json] == [others["id"]]
    with app.app_context():
        assert db.session.scalars(select(Task.id).where(Task.id.in_([one["id"], two["id"], three["id"]]))).all() == []
        gone = db.session.scalars(select(TaskTombstone.task_id).order_by(TaskTombstone.task_id)).all()
    assert gone == [one["id"], two["id"], three["id"]]


def test_the_counter_counts_live_tasks_through_trash_and_restore(app, client, auth_headers, make_task, make_user):
    tasks = [make_task() for _ in range(3)]
    client.delete(f"/api/tasks/{tasks[0]['id']}", headers=auth_headers)
    client.delete(f"/api/tasks/{tasks[1]['id']}", headers=auth_headers)
    client.post(f"/api/trash/{tasks[1]['id']}/restore", headers=auth_headers)
    client.delete(f"/api/trash/{tasks[0]['id']}", headers=auth_headers)
    assert pagination(client.get("/api/tasks", headers=auth_headers))["total"] == 2
    with app.app_context():
        assert db.session.scalar(select(User.task_count)) == 2


def test_deleting_the_account_deletes_its_trash(app, client, make_user):
    user = make_user()
    task = client.post("/api/tasks", json={"title": "t"}, headers=user["headers"]).json
    assert client.delete(f"/api/tasks/{task['id']}", headers=user["headers"]).status_code == 204
    assert client.delete("/api/auth/me", headers=user["headers"]).status_code == 204
    with app.app_context():
        assert db.session.scalar(select(Task.id)) is None


@pytest.mark.skipif(not POSTGRES, reason="writers overlap only on a database server: SQLite runs writes one at a time")
@pytest.mark.parametrize(
    "method, path, status",
    [("POST", "/api/trash/{id}/restore", 404), ("DELETE", "/api/trash/{id}", 404), ("DELETE", "/api/trash", 204)],
)
def test_a_trash_route_and_a_concurrent_account_deletion_never_deadlock(app, client, make_user, method, path, status):
    """Account deletion locks the tasks, then the user's row; so do the trash routes. The trash
    route waits for the deletion and finds nothing left (in the other order PostgreSQL would
    fail one of the two after a second)."""
    user = make_user()
    task = client.post("/api/tasks", json={"title": "t"}, headers=user["headers"]).json
    assert client.delete(f"/api/tasks/{task['id']}", headers=user["headers"]).status_code == 204
    with another_worker() as deleter:
        deleting = deleter.begin()  # DELETE /api/auth/me in another worker: the tasks first, ...
        deleter.execute(delete(Task).where(Task.user_id == user["user"]["id"]))
        with request_held_up(lambda: client.open(path.format(id=task["id"]), method=method, headers=user["headers"])) as answers:
            deleter.execute(delete(User).where(User.id == user["user"]["id"]))  # ... then the account
            deleting.commit()
    assert [answer.status_code for answer in answers] == [status], [answer.json for answer in answers]
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Task)) == 0


@pytest.mark.config(TRASH_RETENTION_DAYS=30, SYNC_RETENTION_DAYS=30, IDEMPOTENCY_TTL=3600)
def test_flask_purge_deletes_only_what_outlived_its_retention(app, client, auth_headers, make_task):
    old, recent, live = make_task(), make_task(), make_task()
    for task in (old, recent):
        assert client.delete(f"/api/tasks/{task['id']}", headers=auth_headers).status_code == 204
    age_trash(app, old["id"], 31)
    keyed = client.post("/api/tasks", json={"title": "keyed"}, headers={**auth_headers, "Idempotency-Key": "k1"})
    assert keyed.status_code == 201
    result = app.test_cli_runner().invoke(purge)
    assert result.exit_code == 0, result.output
    # The purged task's tombstone keeps the time it went to the trash, 31 days ago: past the sync
    # retention plus a day, so it goes too. The recent one stays restorable; the key is fresh.
    assert result.output == "Purged 1 trashed tasks, 1 tombstones and 0 Idempotency-Key answers.\n"
    assert [t["id"] for t in trash(client, auth_headers).json] == [recent["id"]]
    with app.app_context():
        assert db.session.scalars(select(Task.id).order_by(Task.id)).all() == [recent["id"], live["id"], keyed.json["id"]]
        db.session.execute(update(IdempotencyKey).values(created_at=utcnow() - timedelta(seconds=3601)))
        db.session.commit()
    assert app.test_cli_runner().invoke(purge).output == "Purged 0 trashed tasks, 0 tombstones and 1 Idempotency-Key answers.\n"
