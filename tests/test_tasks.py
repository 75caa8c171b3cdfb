"""Tasks: create, read, replace, change, toggle, delete; validation tables; conditional requests."""

import json
from datetime import datetime

import marshmallow as ma
import pytest
from sqlalchemy import select, update

from helpers import POSTGRES, TASK_KEYS, another_worker, request_held_up
from todo_api import DeletedTaskSchema, Task, TaskSchema, TaskTag, TaskTombstone, User, db, next_change, utcnow


def parse_time(value):
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# --- create and read ---


def test_create_applies_defaults(client, auth_headers):
    response = client.post("/api/tasks", json={"title": "Buy milk"}, headers=auth_headers)
    assert response.status_code == 201
    task = response.json
    assert response.headers["Location"] == f"/api/tasks/{task['id']}"
    assert response.headers["ETag"]
    assert set(task) == TASK_KEYS
    assert task | {"id": 0, "created_at": "", "updated_at": ""} == {
        "id": 0, "title": "Buy milk", "description": "", "completed": False, "completed_at": None,
        "priority": "medium", "due_date": None, "tags": [], "created_at": "", "updated_at": "", "recurrence": None,
    }  # fmt: skip
    assert task["created_at"] == task["updated_at"]
    assert parse_time(task["created_at"]).utcoffset().total_seconds() == 0

    fetched = client.get(response.headers["Location"], headers=auth_headers)
    assert fetched.status_code == 200
    assert fetched.json == task
    assert fetched.headers["ETag"] == response.headers["ETag"]


def test_create_with_every_field(client, auth_headers):
    body = {
        "title": "  Write report  ",
        "description": "Quarterly numbers",
        "completed": True,
        "priority": "high",
        "due_date": "2026-12-01T09:30:00+02:00",
        "tags": [" Work ", "work", "URGENT", "q4"],
    }
    response = client.post("/api/tasks", json=body, headers=auth_headers)
    assert response.status_code == 201
    task = response.json
    assert task["title"] == "Write report"
    assert task["description"] == "Quarterly numbers"
    assert task["completed"] is True
    assert task["completed_at"] is not None
    assert task["priority"] == "high"
    assert task["due_date"] == "2026-12-01T07:30:00+00:00"
    assert task["tags"] == ["q4", "urgent", "work"]


@pytest.mark.parametrize(
    "body",
    [
        {"title": "Bare"},
        {
            "title": "Full",
            "description": "d",
            "completed": True,
            "priority": "low",
            "due_date": "2030-01-02T03:04:05.5Z",
            "tags": ["b", "a"],
            "recurrence": "FREQ=DAILY",
        },
    ],
)
def test_task_json_is_marshmallows_own_dump_of_the_schema(app, client, auth_headers, body):
    # OneStepDump writes a task's JSON in one step; it must equal marshmallow's field-by-field dump.
    created = client.post("/api/tasks", json=body, headers=auth_headers)
    assert created.status_code == 201
    path = f"/api/tasks/{created.json['id']}"
    shown = client.get(path, headers=auth_headers)
    listed = client.get("/api/tasks", headers=auth_headers)
    changed = client.patch(path, json={"description": "changed"}, headers=auth_headers)
    assert (shown.status_code, listed.status_code, changed.status_code) == (200, 200, 200)
    with app.app_context():
        schema = TaskSchema()
        generic = ma.Schema.dump(schema, db.session.get(Task, created.json["id"]))
    assert set(generic) == set(schema.fields) == TASK_KEYS
    assert changed.json == generic
    assert (
        created.json
        == shown.json
        == listed.json[0]
        == generic | {"description": created.json["description"], "updated_at": created.json["updated_at"]}
    )
    synced = client.get("/api/tasks/changes", headers=auth_headers)
    assert synced.status_code == 200 and synced.json["changes"] == [changed.json]
    # In the trash: the same fields and deleted_at, as DeletedTaskSchema declares them.
    assert client.delete(path, headers=auth_headers).status_code == 204
    trashed = client.get("/api/trash", headers=auth_headers)
    assert trashed.status_code == 200
    with app.app_context():
        schema = DeletedTaskSchema()
        generic = ma.Schema.dump(schema, db.session.get(Task, created.json["id"]))
    assert set(generic) == set(schema.fields) == TASK_KEYS | {"deleted_at"}
    assert trashed.json == [generic]


@pytest.mark.parametrize(
    "given, stored",
    [
        ("2026-11-21T10:15:00Z", "2026-11-21T10:15:00+00:00"),
        ("2026-11-21T10:15:00", "2026-11-21T10:15:00+00:00"),  # no offset: UTC
        ("2026-11-21T10:15:00-05:00", "2026-11-21T15:15:00+00:00"),
        ("2026-11-21T10:15:00.123456+00:00", "2026-11-21T10:15:00.123456+00:00"),
        (None, None),
    ],
)
def test_due_dates_are_stored_in_utc(make_task, given, stored):
    assert make_task(due_date=given)["due_date"] == stored


def test_lengths_count_after_trimming_up_to_twice_the_limit_as_sent(make_task):
    # The OpenAPI document says so: the pattern holds the trimmed rule, maxLength the sent length.
    task = make_task(title=" " * 100 + "t" * 200 + " " * 100, tags=[" " * 25 + "g" * 50 + " " * 25])
    assert (task["title"], task["tags"]) == ("t" * 200, ["g" * 50])


def test_null_description_is_taken_as_empty(make_task):
    assert make_task(description=None)["description"] == ""


# --- validation ---

INVALID_TASKS = [
    ({}, "title"),
    ({"title": ""}, "title"),
    ({"title": "   "}, "title"),
    ({"title": "x" * 201}, "title"),
    ({"title": " " * 300 + "x" * 101}, "title"),  # 401 characters as sent
    ({"title": None}, "title"),
    ({"title": 5}, "title"),
    ({"title": "nul \u0000 byte"}, "title"),
    ({"title": "lone \ud800 surrogate"}, "title"),
    ({"title": "t", "description": "d" * 2001}, "description"),
    ({"title": "t", "description": 7}, "description"),
    ({"title": "t", "completed": 1}, "completed"),
    ({"title": "t", "completed": 0}, "completed"),
    ({"title": "t", "completed": "yes"}, "completed"),
    ({"title": "t", "completed": "true"}, "completed"),
    ({"title": "t", "completed": None}, "completed"),
    ({"title": "t", "priority": "urgent"}, "priority"),
    ({"title": "t", "priority": "HIGH"}, "priority"),
    ({"title": "t", "priority": None}, "priority"),
    ({"title": "t", "due_date": "tomorrow"}, "due_date"),
    ({"title": "t", "due_date": 1700000000}, "due_date"),
    ({"title": "t", "due_date": "2026-13-01T00:00:00Z"}, "due_date"),
    ({"title": "t", "due_date": "0001-01-01T00:00:00+01:00"}, "due_date"),
    ({"title": "t", "due_date": "9999-12-31T23:59:59-01:00"}, "due_date"),
    ({"title": "t", "tags": "work"}, "tags"),
    ({"title": "t", "tags": [""]}, "tags"),
    ({"title": "t", "tags": ["  "]}, "tags"),
    ({"title": "t", "tags": ["x" * 51]}, "tags"),
    ({"title": "t", "tags": [" " * 60 + "x" * 41]}, "tags"),  # 101 characters as sent
    ({"title": "t", "tags": [1]}, "tags"),
    ({"title": "t", "tags": None}, "tags"),
    ({"title": "t", "tags": [f"tag{n}" for n in range(21)]}, "tags"),
    ({"title": "t", "id": 5}, "id"),
    ({"title": "t", "user_id": 2}, "user_id"),
    ({"title": "t", "created_at": "2020-01-01T00:00:00Z"}, "created_at"),
    ({"title": "t", "updated_at": "2020-01-01T00:00:00Z"}, "updated_at"),
    ({"title": "t", "completed_at": "2020-01-01T00:00:00Z"}, "completed_at"),
    ({"title": "t", "colour": "red"}, "colour"),
]


@pytest.mark.parametrize("body, field", INVALID_TASKS)
def test_create_validation(client, auth_headers, body, field):
    response = client.post("/api/tasks", json=body, headers=auth_headers)
    assert response.status_code == 422
    assert response.json["code"] == 422
    assert response.json["message"] == "Validation failed."
    assert field in response.json["errors"]["json"]
    assert client.get("/api/tasks", headers=auth_headers).json == []  # nothing written


@pytest.mark.parametrize("body, field", [case for case in INVALID_TASKS if case[1] != "title" or case[0]])
def test_put_validation(client, auth_headers, make_task, body, field):
    task = make_task(title="unchanged")
    response = client.put(f"/api/tasks/{task['id']}", json=body, headers=auth_headers)
    assert response.status_code == 422
    assert field in response.json["errors"]["json"]
    assert client.get(f"/api/tasks/{task['id']}", headers=auth_headers).json == task


@pytest.mark.parametrize(
    "body, field",
    [(body, field) for body, field in INVALID_TASKS if body and field != "title"] + [({"title": ""}, "title"), ({"title": None}, "title")],
)
def test_patch_validation(client, auth_headers, make_task, body, field):
    task = make_task(title="unchanged")
    body = {key: value for key, value in body.items() if key != "title" or field == "title"}
    response = client.patch(f"/api/tasks/{task['id']}", json=body, headers=auth_headers)
    assert response.status_code == 422
    assert field in response.json["errors"]["json"]
    assert client.get(f"/api/tasks/{task['id']}", headers=auth_headers).json == task


def test_boundaries_are_accepted(make_task):
    task = make_task(title="x" * 200, description="d" * 2000, tags=[f"t{n:02}" + "y" * 46 for n in range(20)] + ["T00" + "Y" * 46])
    assert len(task["title"]) == 200
    assert len(task["tags"]) == 20


@pytest.mark.parametrize("method", ["put", "patch"])
def test_put_and_patch_without_a_body_are_a_422(client, auth_headers, make_task, method):
    task = make_task()
    response = getattr(client, method)(f"/api/tasks/{task['id']}", headers=auth_headers)
    assert response.status_code == 422
    assert response.json["errors"]["json"]


# --- replace and change ---


def test_put_replaces_every_writable_field(client, auth_headers, make_task):
    task = make_task(title="old", description="d", completed=True, priority="high", due_date="2030-01-01T00:00:00Z", tags=["a"])
    response = client.put(f"/api/tasks/{task['id']}", json={"title": "new"}, headers=auth_headers)
    assert response.status_code == 200
    replaced = response.json
    assert replaced | {"updated_at": ""} == {
        **task, "title": "new", "description": "", "completed": False, "completed_at": None,
        "priority": "medium", "due_date": None, "tags": [], "updated_at": "",
    }  # fmt: skip
    assert parse_time(replaced["updated_at"]) > parse_time(task["updated_at"])
    assert client.get(f"/api/tasks/{task['id']}", headers=auth_headers).json == replaced


def test_patch_changes_only_the_fields_sent(client, auth_headers, make_task):
    task = make_task(title="keep", description="d", priority="low", tags=["a", "b"])
    response = client.patch(f"/api/tasks/{task['id']}", json={"priority": "high", "tags": ["C"]}, headers=auth_headers)
    assert response.status_code == 200
    assert response.json | {"updated_at": ""} == {**task, "priority": "high", "tags": ["c"], "updated_at": ""}
    assert parse_time(response.json["updated_at"]) > parse_time(task["updated_at"])


def test_empty_patch_changes_nothing(client, auth_headers, make_task):
    task = make_task()
    response = client.patch(f"/api/tasks/{task['id']}", json={}, headers=auth_headers)
    assert response.status_code == 200
    assert response.json == task


def test_patch_to_the_same_values_does_not_move_updated_at(client, auth_headers, make_task):
    task = make_task(title="same", tags=["a"])
    response = client.patch(f"/api/tasks/{task['id']}", json={"title": " same ", "tags": ["A"]}, headers=auth_headers)
    assert response.status_code == 200
    assert response.json == task


def test_patch_can_clear_the_due_date_and_the_description(client, auth_headers, make_task):
    task = make_task(description="words", due_date="2030-01-01T00:00:00Z")
    response = client.patch(f"/api/tasks/{task['id']}", json={"due_date": None, "description": None}, headers=auth_headers)
    assert response.status_code == 200
    assert response.json["due_date"] is None
    assert response.json["description"] == ""


def test_completing_sets_and_reopening_clears_completed_at(client, auth_headers, make_task):
    task = make_task()
    done = client.patch(f"/api/tasks/{task['id']}", json={"completed": True}, headers=auth_headers).json
    assert done["completed"] is True
    assert parse_time(done["completed_at"]) >= parse_time(task["created_at"])
    again = client.patch(f"/api/tasks/{task['id']}", json={"completed": True}, headers=auth_headers).json
    assert again["completed_at"] == done["completed_at"]  # staying completed keeps the time
    reopened = client.put(f"/api/tasks/{task['id']}", json={"title": "A task"}, headers=auth_headers).json
    assert reopened["completed"] is False
    assert reopened["completed_at"] is None


def test_complete_toggles(client, auth_headers, make_task):
    task = make_task()
    first = client.patch(f"/api/tasks/{task['id']}/complete", headers=auth_headers)
    assert first.status_code == 200
    assert first.json["completed"] is True
    assert first.json["completed_at"] is not None
    assert parse_time(first.json["updated_at"]) > parse_time(task["updated_at"])
    assert first.headers["ETag"]
    second = client.patch(f"/api/tasks/{task['id']}/complete", headers=auth_headers)
    assert second.status_code == 200
    assert second.json["completed"] is False
    assert second.json["completed_at"] is None


def test_delete(client, auth_headers, make_task):
    task = make_task()
    response = client.delete(f"/api/tasks/{task['id']}", headers=auth_headers)
    assert response.status_code == 204
    assert response.data == b""
    assert client.get(f"/api/tasks/{task['id']}", headers=auth_headers).status_code == 404
    assert client.delete(f"/api/tasks/{task['id']}", headers=auth_headers).status_code == 404


def test_ids_of_deleted_tasks_are_not_reused(client, auth_headers, make_task):
    task = make_task()
    client.delete(f"/api/tasks/{task['id']}", headers=auth_headers)
    assert make_task()["id"] > task["id"]


@pytest.mark.parametrize(
    "path",
    ["/api/tasks/0", "/api/tasks/999999", "/api/tasks/9223372036854775807", "/api/tasks/9223372036854775808", "/api/tasks/" + "9" * 40],
)
@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
def test_missing_and_huge_ids_are_a_404(client, auth_headers, path, method):
    response = getattr(client, method)(path, json={"title": "x"}, headers=auth_headers)
    assert response.status_code == 404
    assert response.json["code"] == 404
    assert client.patch(path + "/complete", headers=auth_headers).status_code == 404


# --- conditional requests ---


def test_get_with_a_matching_if_none_match_is_a_304(client, auth_headers, make_task):
    task = make_task()
    etag = client.get(f"/api/tasks/{task['id']}", headers=auth_headers).headers["ETag"]
    response = client.get(f"/api/tasks/{task['id']}", headers={**auth_headers, "If-None-Match": etag})
    assert response.status_code == 304
    assert response.data == b""
    assert client.get(f"/api/tasks/{task['id']}", headers={**auth_headers, "If-None-Match": '"other"'}).status_code == 200


def test_etag_changes_with_the_task(client, auth_headers, make_task):
    task = make_task()
    before = client.get(f"/api/tasks/{task['id']}", headers=auth_headers).headers["ETag"]
    changed = client.patch(f"/api/tasks/{task['id']}", json={"title": "changed"}, headers=auth_headers)
    assert changed.headers["ETag"] != before
    assert client.get(f"/api/tasks/{task['id']}", headers={**auth_headers, "If-None-Match": before}).status_code == 200


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("put", "/api/tasks/{id}", {"title": "new"}),
        ("patch", "/api/tasks/{id}", {"title": "new"}),
        ("patch", "/api/tasks/{id}/complete", None),
        ("delete", "/api/tasks/{id}", None),
    ],
)
def test_if_match_guards_every_write(client, auth_headers, make_task, method, path, body):
    task = make_task(title="original")
    url = path.format(id=task["id"])
    etag = client.get(f"/api/tasks/{task['id']}", headers=auth_headers).headers["ETag"]

    stale = getattr(client, method)(url, json=body, headers={**auth_headers, "If-Match": '"stale"'})
    assert stale.status_code == 412
    assert stale.json["code"] == 412
    assert stale.json["status"] == "Precondition Failed"
    assert client.get(f"/api/tasks/{task['id']}", headers=auth_headers).json == task  # nothing written

    fresh = getattr(client, method)(url, json=body, headers={**auth_headers, "If-Match": etag})
    assert fresh.status_code == (204 if method == "delete" else 200)
    # The old ETag is stale now (and a deleted task is gone).
    again = getattr(client, method)(url, json=body, headers={**auth_headers, "If-Match": etag})
    assert again.status_code == (404 if method == "delete" else 412)


def test_writes_without_if_match_still_work(client, auth_headers, make_task):
    task = make_task()
    assert client.put(f"/api/tasks/{task['id']}", json={"title": "a"}, headers=auth_headers).status_code == 200
    assert client.patch(f"/api/tasks/{task['id']}", json={"title": "b"}, headers=auth_headers).status_code == 200
    assert client.delete(f"/api/tasks/{task['id']}", headers=auth_headers).status_code == 204


@pytest.mark.skipif(not POSTGRES, reason="writers overlap only on a database server: SQLite runs writes one at a time")
@pytest.mark.parametrize(
    "method, path, body, status",
    [
        ("PUT", "/api/tasks/{id}", {"title": "ours", "description": "theirs"}, 200),
        ("PATCH", "/api/tasks/{id}", {"title": "ours"}, 200),
        ("PATCH", "/api/tasks/{id}/complete", None, 200),
        ("DELETE", "/api/tasks/{id}", None, 204),
    ],
)
def test_a_write_without_if_match_waits_for_a_concurrent_one_and_applies_on_top(
    client, auth_headers, make_task, method, path, body, status
):
    """Without If-Match a client asks for no precondition: a write that overlaps another writer's
    is served after it, on the task as that writer left it, never refused."""
    task = make_task(title="original")
    user_id = client.get("/api/auth/me", headers=auth_headers).json["id"]
    kwargs = {"headers": auth_headers, **({"json": body} if body is not None else {})}
    with another_worker() as writer:
        writing = writer.begin()  # another worker's change to the task, not yet committed
        writer.execute(
            update(Task)
            .where(Task.id == task["id"])
            .values(description="theirs", version=Task.version + 1, change_seq=next_change(writer, user_id), updated_at=utcnow())
        )
        with request_held_up(lambda: client.open(path.format(id=task["id"]), method=method, **kwargs)) as answers:
            writing.commit()
    assert [answer.status_code for answer in answers] == [status], [answer.json for answer in answers]
    if method == "DELETE":
        (trashed,) = client.get("/api/trash", headers=auth_headers).json
        assert trashed["id"] == task["id"] and trashed["description"] == "theirs"
        return
    after = client.get(f"/api/tasks/{task['id']}", headers=auth_headers).json
    assert answers[0].json == after and after["description"] == "theirs"
    assert after["title"] == ("ours" if body else "original") and after["completed"] is (body is None)


def test_if_match_star_matches_any_etag(client, auth_headers, make_task):
    task = make_task()
    response = client.patch(f"/api/tasks/{task['id']}", json={"title": "b"}, headers={**auth_headers, "If-Match": "*"})
    assert response.status_code == 200


def test_put_response_etag_is_the_new_one(client, auth_headers, make_task):
    task = make_task()
    put = client.put(f"/api/tasks/{task['id']}", json={"title": "b"}, headers=auth_headers)
    assert put.headers["ETag"] == client.get(f"/api/tasks/{task['id']}", headers=auth_headers).headers["ETag"]


def test_every_write_path_keeps_the_derived_fields_tag_rows_and_counter(app, client, make_user):
    # Derived state is written by one piece of code, whatever path writes the task: check it
    # against the tasks themselves after writes through every route.
    user = make_user()
    headers, user_id = user["headers"], user["user"]["id"]
    ids = [
        client.post("/api/tasks", json={"title": "A", "tags": ["x", "y"], "completed": True}, headers=headers).json["id"],
        client.post(f"/api/{user_id}/tasks", json={"title": "B", "description": "Desc"}, headers=headers).json["id"],
        client.post("/api/tasks", json={"title": "C", "tags": ["z"]}, headers=headers).json["id"],
    ]
    assert client.put(f"/api/tasks/{ids[0]}", json={"title": "Put", "tags": ["y", "w"]}, headers=headers).status_code == 200
    assert client.patch(f"/api/tasks/{ids[1]}", json={"tags": ["v"], "title": "Patched"}, headers=headers).status_code == 200
    assert client.patch(f"/api/{user_id}/tasks/{ids[1]}/complete", headers=headers).status_code == 200
    assert client.delete(f"/api/tasks/{ids[2]}", headers=headers).status_code == 204  # to the trash
    assert client.post(f"/api/trash/{ids[2]}/restore", headers=headers).status_code == 200
    assert client.delete(f"/api/tasks/{ids[2]}", headers=headers).status_code == 204
    assert client.delete(f"/api/trash/{ids[2]}", headers=headers).status_code == 204  # for good
    trashed = client.post("/api/tasks", json={"title": "D", "tags": ["q"]}, headers=headers).json["id"]
    assert client.delete(f"/api/tasks/{trashed}", headers=headers).status_code == 204
    writes = 12  # each request above that wrote tasks is one numbered change
    with app.app_context():
        tasks = db.session.scalars(select(Task).where(Task.user_id == user_id, Task.deleted_at.is_(None))).all()
        in_trash = db.session.scalars(select(Task).where(Task.user_id == user_id, Task.deleted_at.is_not(None))).all()
        tag_rows = db.session.execute(select(TaskTag.task_id, TaskTag.tag, TaskTag.user_id)).all()
        counter, change = db.session.execute(select(User.task_count, User.change_seq).where(User.id == user_id)).one()
        tombstones = db.session.execute(select(TaskTombstone.task_id, TaskTombstone.change_seq)).all()
    assert sorted(task.id for task in tasks) == sorted(ids[:2]) and [task.id for task in in_trash] == [trashed]
    assert counter == len(tasks) == 2
    assert sorted(tag_rows) == sorted((task.id, tag, user_id) for task in [*tasks, *in_trash] for tag in task.tags)
    assert change == writes and tombstones == [(ids[2], writes - 2)]
    assert {task.id: task.change_seq for task in [*tasks, *in_trash]} == {ids[0]: 4, ids[1]: 6, trashed: writes}
    assert {task.title: task.tags for task in tasks} == {"Put": ["w", "y"], "Patched": ["v"]}


# --- text that case mapping lengthens ---


# "İ".lower() is two code points; a title or tag of them has a key twice its length.
@pytest.mark.parametrize("title", ["İ" * 200, "İ" * 150 + "ß" * 50, "ﬃ" * 200])
def test_a_title_whose_key_is_longer_than_itself_is_stored_sorted_searched_and_paged(client, auth_headers, make_task, title):
    made = [make_task(title=title[:-1] + end) for end in "ab"]
    assert [task["title"] for task in made] == [title[:-1] + "a", title[:-1] + "b"]
    for sort in ("title", "-title"):
        first = client.get(f"/api/tasks?sort={sort}&page_size=1", headers=auth_headers)
        assert first.status_code == 200
        after = json.loads(first.headers["X-Pagination"])["next_cursor"]
        second = client.get(f"/api/tasks?sort={sort}&page_size=1&after={after}", headers=auth_headers)
        assert second.status_code == 200, second.json
        assert {first.json[0]["id"], second.json[0]["id"]} == {task["id"] for task in made}
    found = client.get("/api/tasks", query_string={"q": title[:100].lower()}, headers=auth_headers)
    assert found.status_code == 200 and len(found.json) == 2


def test_a_tag_whose_lower_case_is_longer_than_itself_is_stored_and_filtered(client, auth_headers, make_task):
    task = make_task(tags=["İ" * 50, "ß" * 50])
    assert task["tags"] == sorted(["i̇" * 50, "ß" * 50])
    response = client.get("/api/tasks", query_string={"tag": "İ" * 50}, headers=auth_headers)
    assert response.status_code == 200 and [found["id"] for found in response.json] == [task["id"]]
    replaced = client.put(f"/api/tasks/{task['id']}", json={"title": "t", "tags": ["İ" * 49 + "x"]}, headers=auth_headers)
    assert replaced.status_code == 200 and replaced.json["tags"] == ["i̇" * 49 + "x"]
