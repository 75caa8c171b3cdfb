"""Users see only their own tasks: another user's task is a 404 on every verb and stays as it was.
Phase II paths under /api/<user_id>/tasks serve the same operations to the caller only."""

import pytest

OPERATIONS = [
    ("get", "/api/tasks/{id}", None),
    ("put", "/api/tasks/{id}", {"title": "hijacked"}),
    ("patch", "/api/tasks/{id}", {"title": "hijacked"}),
    ("patch", "/api/tasks/{id}/complete", None),
    ("delete", "/api/tasks/{id}", None),
]


@pytest.mark.parametrize("method, path, body", OPERATIONS)
def test_another_users_task_is_a_404_and_unchanged(client, auth_headers, other_auth_headers, make_task, method, path, body):
    task = make_task(title="private", tags=["secret"])
    response = getattr(client, method)(path.format(id=task["id"]), json=body, headers=other_auth_headers)
    assert response.status_code == 404
    assert response.json == {"code": 404, "status": "Not Found", "message": "Task not found."}
    assert client.get(f"/api/tasks/{task['id']}", headers=auth_headers).json == task


def test_listing_shows_only_the_callers_tasks(client, auth_headers, other_auth_headers, make_task):
    mine = make_task(title="mine", tags=["shared"])
    make_task(headers=other_auth_headers, title="theirs", tags=["shared"])
    for query in ("", "?tag=shared", "?q=the", "?sort=title"):
        response = client.get(f"/api/tasks{query}", headers=auth_headers)
        assert response.status_code == 200
        assert [task["id"] for task in response.json] == ([mine["id"]] if query != "?q=the" else [])


def test_task_fields_cannot_set_the_owner(client, auth_headers, other_auth_headers, make_task, make_user):
    other = make_user()
    response = client.post("/api/tasks", json={"title": "x", "user_id": other["user"]["id"]}, headers=auth_headers)
    assert response.status_code == 422
    assert "user_id" in response.json["errors"]["json"]
    assert client.get("/api/tasks", headers=other["headers"]).json == []


# --- Phase II paths ---


def test_phase2_paths_serve_the_same_operations(client, make_user):
    user = make_user()
    base = f"/api/{user['user']['id']}/tasks"
    headers = user["headers"]

    created = client.post(base, json={"title": "phase two", "tags": ["P2"]}, headers=headers)
    assert created.status_code == 201
    assert created.headers["ETag"]
    task = created.json
    assert created.headers["Location"] == f"/api/tasks/{task['id']}"

    listed = client.get(f"{base}?tag=p2&page_size=5", headers=headers)
    assert listed.status_code == 200
    assert listed.json == [task]
    assert "X-Pagination" in listed.headers
    assert f"{base}?tag=p2&page_size=5&page=1" in listed.headers["Link"]

    got = client.get(f"{base}/{task['id']}", headers=headers)
    assert got.status_code == 200
    assert got.json == task
    assert got.headers["ETag"] == created.headers["ETag"]

    put = client.put(f"{base}/{task['id']}", json={"title": "replaced"}, headers=headers)
    assert put.status_code == 200
    assert put.json["title"] == "replaced"
    assert put.json["tags"] == []

    patched = client.patch(f"{base}/{task['id']}", json={"priority": "high"}, headers=headers)
    assert patched.status_code == 200
    assert patched.json["priority"] == "high"

    stale = client.patch(f"{base}/{task['id']}", json={"priority": "low"}, headers={**headers, "If-Match": got.headers["ETag"]})
    assert stale.status_code == 412

    toggled = client.patch(f"{base}/{task['id']}/complete", headers=headers)
    assert toggled.status_code == 200
    assert toggled.json["completed"] is True

    assert client.get(f"/api/tasks/{task['id']}", headers=headers).json == toggled.json
    assert client.delete(f"{base}/{task['id']}", headers=headers).status_code == 204
    assert client.get(f"{base}/{task['id']}", headers=headers).status_code == 404


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("get", "", None),
        ("post", "", {"title": "x"}),
        ("get", "/{id}", None),
        ("put", "/{id}", {"title": "x"}),
        ("patch", "/{id}", {"title": "x"}),
        ("delete", "/{id}", None),
        ("patch", "/{id}/complete", None),
    ],
)
def test_phase2_path_of_another_user_is_a_403(client, make_user, make_task, method, path, body):
    owner, caller = make_user(), make_user()
    task = make_task(headers=owner["headers"], title="owned")
    for user_id in (owner["user"]["id"], 10**30):
        url = f"/api/{user_id}/tasks" + path.format(id=task["id"])
        response = getattr(client, method)(url, json=body, headers=caller["headers"])
        assert response.status_code == 403
        assert response.json["code"] == 403
        assert response.json["status"] == "Forbidden"
    assert client.get(f"/api/tasks/{task['id']}", headers=owner["headers"]).json == task
    assert client.get("/api/tasks", headers=caller["headers"]).json == []


def test_phase2_path_checks_the_token_first(client, make_user):
    user = make_user()
    response = client.get(f"/api/{user['user']['id']}/tasks")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_phase2_own_path_but_another_users_task_is_a_404(client, make_user, make_task):
    owner, caller = make_user(), make_user()
    task = make_task(headers=owner["headers"])
    response = client.get(f"/api/{caller['user']['id']}/tasks/{task['id']}", headers=caller["headers"])
    assert response.status_code == 404
