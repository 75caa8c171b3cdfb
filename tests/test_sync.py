"""Incremental sync, GET /api/tasks/changes: a full sync, then only what changed, in commit
order, with tombstones, paged; and the guarantee that no change is skipped."""

import pytest
from sqlalchemy import update

from helpers import b64
from todo_api import Task, db, decode_cursor, encode_cursor, next_change, utcnow


def sync(client, headers, cursor=None, limit=None):
    query = {key: value for key, value in (("cursor", cursor), ("limit", limit)) if value is not None}
    response = client.get("/api/tasks/changes", query_string=query, headers=headers)
    assert response.status_code == 200, response.json
    assert set(response.json) == {"changes", "cursor", "has_more"}
    return response.json


class Replica:
    """A client's local copy, kept as the contract says: replace by id, drop on deleted."""

    def __init__(self, client, headers, limit=None):
        self.client, self.headers, self.limit = client, headers, limit
        self.tasks, self.cursor, self.calls = {}, None, 0

    def pull(self):
        """Call until has_more is false; returns every change seen, in order."""
        seen = []
        while True:
            answer = sync(self.client, self.headers, self.cursor, self.limit)
            self.calls += 1
            ids = [change["id"] for change in answer["changes"]]
            assert len(ids) == len(set(ids)), "a task at most once per answer"
            for change in answer["changes"]:
                if change.get("deleted"):
                    assert change == {"id": change["id"], "deleted": True}
                    self.tasks.pop(change["id"], None)
                else:
                    self.tasks[change["id"]] = change
            seen += answer["changes"]
            self.cursor = answer["cursor"]
            if not answer["has_more"]:
                return seen


def live_tasks(client, headers):
    response = client.get("/api/tasks?page_size=100", headers=headers)
    assert response.status_code == 200
    return {task["id"]: task for task in response.json}


def test_a_full_sync_gives_every_live_task_and_no_tombstones(client, auth_headers, other_auth_headers, make_task):
    tasks = [make_task(title=f"t{n}", tags=["x"]) for n in range(3)]
    make_task(headers=other_auth_headers)
    assert client.delete(f"/api/tasks/{tasks[1]['id']}", headers=auth_headers).status_code == 204
    gone = make_task()
    client.delete(f"/api/tasks/{gone['id']}", headers=auth_headers)
    client.delete(f"/api/trash/{gone['id']}", headers=auth_headers)
    answer = sync(client, auth_headers)
    assert answer["changes"] == [tasks[0], tasks[2]]  # whole Tasks, in the order they were written
    assert answer["has_more"] is False and isinstance(answer["cursor"], str)


def test_changes_come_once_each_in_commit_order_with_tombstones(client, auth_headers, make_task):
    first, second, third = make_task(title="first"), make_task(title="second"), make_task(title="third")
    replica = Replica(client, auth_headers)
    replica.pull()
    assert client.patch(f"/api/tasks/{first['id']}", json={"title": "first, renamed"}, headers=auth_headers).status_code == 200
    assert client.delete(f"/api/tasks/{second['id']}", headers=auth_headers).status_code == 204  # to the trash
    fourth = make_task(title="fourth")
    assert client.patch(f"/api/tasks/{first['id']}/complete", headers=auth_headers).status_code == 200  # again: once, last
    assert client.delete(f"/api/tasks/{third['id']}", headers=auth_headers).status_code == 204
    assert client.delete(f"/api/trash/{third['id']}", headers=auth_headers).status_code == 204  # for good
    changes = replica.pull()
    assert [(change["id"], change.get("deleted", False)) for change in changes] == [
        (second["id"], True),
        (fourth["id"], False),
        (first["id"], False),
        (third["id"], True),
    ]
    assert changes[2]["title"] == "first, renamed" and changes[2]["completed"] is True
    assert client.post(f"/api/trash/{second['id']}/restore", headers=auth_headers).status_code == 200
    assert [change["id"] for change in replica.pull()] == [second["id"]]
    assert replica.tasks == live_tasks(client, auth_headers)


def test_a_task_deleted_for_good_after_a_trash_already_synced_is_reported_again(client, auth_headers, make_task):
    task = make_task()
    replica = Replica(client, auth_headers)
    replica.pull()
    client.delete(f"/api/tasks/{task['id']}", headers=auth_headers)
    assert replica.pull() == [{"id": task["id"], "deleted": True}]
    client.delete("/api/trash", headers=auth_headers)
    assert replica.pull() == [{"id": task["id"], "deleted": True}]
    assert replica.pull() == []


def test_limit_pages_the_changes_and_has_more_says_to_call_again(client, auth_headers, make_task):
    tasks = [make_task(title=f"t{n}") for n in range(5)]
    first = sync(client, auth_headers, limit=2)
    assert [task["id"] for task in first["changes"]] == [tasks[0]["id"], tasks[1]["id"]] and first["has_more"] is True
    second = sync(client, auth_headers, first["cursor"], limit=2)
    assert [task["id"] for task in second["changes"]] == [tasks[2]["id"], tasks[3]["id"]] and second["has_more"] is True
    third = sync(client, auth_headers, second["cursor"], limit=2)
    assert [task["id"] for task in third["changes"]] == [tasks[4]["id"]] and third["has_more"] is False
    last = sync(client, auth_headers, third["cursor"])
    assert (last["changes"], last["has_more"]) == ([], False)


def test_one_change_of_many_tasks_pages_inside_it(client, auth_headers, make_task):
    tasks = [make_task() for _ in range(5)]
    replica = Replica(client, auth_headers, limit=2)
    replica.pull()
    for task in tasks:
        client.delete(f"/api/tasks/{task['id']}", headers=auth_headers)
    assert client.delete("/api/trash", headers=auth_headers).status_code == 204  # one change, five tombstones
    calls = replica.calls
    assert [change["id"] for change in replica.pull()] == [task["id"] for task in tasks]
    assert replica.calls - calls == 3 and replica.tasks == {}


def test_an_up_to_date_cursor_answers_nothing_and_stays_usable(client, auth_headers, make_task):
    make_task()
    cursor = sync(client, auth_headers)["cursor"]
    again = sync(client, auth_headers, cursor)
    assert again["changes"] == [] and again["has_more"] is False
    assert sync(client, auth_headers, again["cursor"])["changes"] == []
    task = make_task(title="new")
    assert sync(client, auth_headers, cursor)["changes"] == [task]  # the old cursor still works
    assert sync(client, auth_headers, again["cursor"])["changes"] == [task]


def test_a_change_that_began_before_a_sync_and_committed_after_it_is_not_skipped(app, client, auth_headers, make_task):
    task, other = make_task(title="before"), make_task(title="other")
    replica = Replica(client, auth_headers)
    replica.pull()
    user_id = client.get("/api/auth/me", headers=auth_headers).json["id"]
    with app.app_context(), db.engine.connect() as connection:
        writing = connection.begin()  # a writer numbers its change and writes, not yet committed
        number = next_change(connection, user_id)
        connection.execute(update(Task).where(Task.id == task["id"]).values(title="late", change_seq=number, updated_at=utcnow()))
        assert replica.pull() == []  # the sync call runs while it is in flight
        writing.commit()
    assert client.patch(f"/api/tasks/{other['id']}", json={"title": "after"}, headers=auth_headers).status_code == 200
    assert [change["title"] for change in replica.pull()] == ["late", "after"]
    assert replica.tasks == live_tasks(client, auth_headers)


def test_a_full_sync_in_pages_ends_equal_to_the_tasks_whatever_changes_meanwhile(client, auth_headers, make_task):
    tasks = [make_task(title=f"t{n}") for n in range(6)]
    replica = Replica(client, auth_headers, limit=2)
    answer = sync(client, auth_headers, limit=2)
    replica.cursor = answer["cursor"]
    replica.tasks = {change["id"]: change for change in answer["changes"]}
    client.patch(f"/api/tasks/{tasks[0]['id']}", json={"title": "seen already, changed"}, headers=auth_headers)
    client.delete(f"/api/tasks/{tasks[4]['id']}", headers=auth_headers)  # not reached yet, trashed
    client.delete(f"/api/tasks/{tasks[1]['id']}", headers=auth_headers)  # seen, then trashed
    client.delete(f"/api/trash/{tasks[1]['id']}", headers=auth_headers)
    make_task(title="new")
    replica.pull()
    assert replica.tasks == live_tasks(client, auth_headers)


def test_other_users_changes_never_show(client, auth_headers, other_auth_headers, make_task):
    replica = Replica(client, auth_headers)
    replica.pull()
    theirs = make_task(headers=other_auth_headers)
    client.delete(f"/api/tasks/{theirs['id']}", headers=other_auth_headers)
    assert replica.pull() == []
    assert client.get("/api/tasks/changes").status_code == 401


@pytest.mark.parametrize(
    "cursor",
    ["", "abc", "!!!", b64("{}"), b64("[1,2,3]"), b64("[1,2,3,4,5]"), b64("[-1,0,0,0]"), b64("[true,0,0,0]"), b64("[1.5,0,0,0]"),
     b64('["1",0,0,0]'), b64(f"[{2**63},0,0,0]"), b64("[1,2,3,null]"), b64("[" * 5000), "é", "a" * 2000],
)  # fmt: skip
def test_a_malformed_cursor_is_a_422_naming_cursor(client, auth_headers, cursor):
    response = client.get("/api/tasks/changes", query_string={"cursor": cursor}, headers=auth_headers)
    assert response.status_code == 422, response.json
    assert list(response.json["errors"]["query"]) == ["cursor"]


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=x", "limit=-1", "limit=1&limit=2", "since=1", "page=1"])
def test_bad_query_parameters_are_a_422(client, auth_headers, query):
    response = client.get(f"/api/tasks/changes?{query}", headers=auth_headers)
    assert response.status_code == 422, response.json


def test_limit_takes_1_to_1000(client, auth_headers, make_task):
    make_task()
    assert len(sync(client, auth_headers, limit=1)["changes"]) == 1
    assert len(sync(client, auth_headers, limit=1000)["changes"]) == 1


@pytest.mark.config(SYNC_RETENTION_DAYS=30)
def test_a_cursor_older_than_the_sync_retention_is_410_gone(app, client, auth_headers, make_task):
    make_task()
    cursor = sync(client, auth_headers)["cursor"]
    with app.app_context():
        owner, *values = decode_cursor(cursor, "sync")
        values[3] -= 30 * 86_400 + 60  # issued 30 days and a minute ago
        old = encode_cursor("sync", owner, *values)
        values[3] += 120  # 29 days, 23 hours and 59 minutes
        recent = encode_cursor("sync", owner, *values)
    response = client.get("/api/tasks/changes", query_string={"cursor": old}, headers=auth_headers)
    assert response.status_code == 410
    assert response.json["code"] == 410 and response.json["status"] == "Gone" and "without a cursor" in response.json["message"]
    assert client.get("/api/tasks/changes", query_string={"cursor": recent}, headers=auth_headers).status_code == 200


def test_a_cursor_is_gone_for_any_other_account(client, make_user, make_task):
    owner, other = make_user(), make_user()
    make_task(headers=owner["headers"])
    cursor = sync(client, owner["headers"])["cursor"]
    response = client.get("/api/tasks/changes", query_string={"cursor": cursor}, headers=other["headers"])
    assert response.status_code == 410
    assert response.json["code"] == 410 and "another account" in response.json["message"]


def test_a_deleted_accounts_cursor_is_gone_for_the_account_that_takes_its_email(client, make_user):
    """The new account's change numbers start again from zero: the old cursor would hide its tasks."""
    first = make_user(email="again@example.com")
    for title in ("a", "b", "c"):
        assert client.post("/api/tasks", json={"title": title}, headers=first["headers"]).status_code == 201
    cursor = sync(client, first["headers"])["cursor"]
    assert client.delete("/api/auth/me", headers=first["headers"]).status_code == 204
    second = make_user(email="again@example.com")
    for title in ("d", "e"):
        assert client.post("/api/tasks", json={"title": title}, headers=second["headers"]).status_code == 201
    response = client.get("/api/tasks/changes", query_string={"cursor": cursor}, headers=second["headers"])
    assert response.status_code == 410, response.json
    assert {task["title"] for task in sync(client, second["headers"])["changes"]} == {"d", "e"}


@pytest.mark.parametrize(
    "forged",
    [b64("[1,0,0,0,0]"), b64('["sync",1,0,0,0,0]'), b64('["sync",1,"\\ud800",0,0,0]'), b64('["sync",1,0,0,0,"a\\u0000"]')],
)
def test_a_forged_cursor_is_a_422_whatever_it_holds(client, auth_headers, forged):
    response = client.get("/api/tasks/changes", query_string={"cursor": forged}, headers=auth_headers)
    assert response.status_code == 422, response.json
    assert list(response.json["errors"]["query"]) == ["cursor"]


def test_a_signed_cursor_with_values_the_service_never_makes_is_a_422(app, client, make_user):
    user = make_user()
    owner = user["user"]["id"]
    with app.app_context():
        made = [
            encode_cursor("sync", owner, *values) for values in ([1, 2], [-1, 0, 0, 0], [0, 0, 0, "x"], [2**63, 0, 0, 0], [0, 0, 0, 0, 0])
        ]
        made += [encode_cursor("after", owner, 0, 0, 0, 0), encode_cursor("sync", "1", 0, 0, 0, 0)]
    for cursor in made:
        response = client.get("/api/tasks/changes", query_string={"cursor": cursor}, headers=user["headers"])
        assert response.status_code == 422, (cursor, response.json)
