"""One error shape for every status, from every layer."""

import json
from http import HTTPStatus

import pytest

ERROR_KEYS = {"code", "status", "message"}


def assert_error(response, code, status):
    assert response.status_code == code
    assert response.headers["Content-Type"] == "application/json"
    body = response.json
    assert body["code"] == code
    assert body["status"] == status
    assert isinstance(body["message"], str) and body["message"]
    assert set(body) <= ERROR_KEYS | {"errors"}
    assert ("errors" in body) == (code == 422)
    return body


@pytest.mark.parametrize(
    "data",
    [b"{", b"{'title': 'x'}", b'{"title": "x",}', b"\xff\xfe\x00garbage", b"[" * 100_000 + b"]" * 100_000, b"NaN-ish"],
)
def test_invalid_json_is_a_400(client, auth_headers, data):
    response = client.post("/api/tasks", data=data, content_type="application/json", headers=auth_headers)
    assert_error(response, 400, "Bad Request")
    assert client.get("/api/tasks", headers=auth_headers).json == []


@pytest.mark.parametrize("path", ["/api/auth/signup", "/api/auth/login", "/api/auth/password", "/api/auth/me", "/api/tasks"])
def test_deeply_nested_json_is_a_400_on_every_json_endpoint(client, auth_headers, path):
    method = client.patch if path == "/api/auth/me" else client.post
    response = method(path, data=b"[" * 100_000 + b"]" * 100_000, content_type="application/json", headers=auth_headers)
    assert_error(response, 400, "Bad Request")


@pytest.mark.parametrize("body", [[], ["title"], "title", 42, True, None])
def test_json_that_is_not_an_object_is_a_422(client, auth_headers, body):
    response = client.post("/api/tasks", data=json.dumps(body), content_type="application/json", headers=auth_headers)
    assert_error(response, 422, "Unprocessable Entity")


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml"]
)
def test_a_body_that_is_not_json_is_a_415(client, auth_headers, content_type):
    response = client.post("/api/tasks", data='{"title": "x"}', content_type=content_type, headers=auth_headers)
    assert_error(response, 415, "Unsupported Media Type")


def test_json_content_type_with_charset_is_accepted(client, auth_headers):
    response = client.post("/api/tasks", data='{"title": "x"}', content_type="application/json; charset=utf-8", headers=auth_headers)
    assert response.status_code == 201


def test_a_body_over_the_limit_is_a_413(client, auth_headers):
    body = json.dumps({"title": "x", "description": "d" * (1024 * 1024)})
    response = client.post("/api/tasks", data=body, content_type="application/json", headers=auth_headers)
    assert_error(response, 413, "Request Entity Too Large")


@pytest.mark.config(MAX_CONTENT_LENGTH=100)
def test_the_body_limit_is_configurable(client, make_user):
    response = client.post("/api/auth/signup", json={"email": "long@example.com", "password": "p" * 100})
    assert_error(response, 413, "Request Entity Too Large")


def test_a_100k_character_title_is_a_422(client, auth_headers):
    response = client.post("/api/tasks", json={"title": "x" * 100_000}, headers=auth_headers)
    body = assert_error(response, 422, "Unprocessable Entity")
    assert "title" in body["errors"]["json"]


def test_a_signup_without_a_body_is_a_422(client):
    body = assert_error(client.post("/api/auth/signup"), 422, "Unprocessable Entity")
    assert body["errors"]["json"]


def test_validation_errors_name_every_bad_field(client, auth_headers):
    response = client.post("/api/tasks", json={"title": "", "priority": "x", "extra": 1}, headers=auth_headers)
    body = assert_error(response, 422, "Unprocessable Entity")
    assert set(body["errors"]["json"]) == {"title", "priority", "extra"}


def test_every_status_of_the_table_has_the_one_shape(client, make_user, make_task):
    user = make_user(email="shape@example.com")
    task = make_task(headers=user["headers"])
    other = make_user()
    assert_error(client.get("/api/tasks"), 401, "Unauthorized")
    assert_error(client.post("/api/auth/login", json={"email": "shape@example.com", "password": "wrong-password"}), 401, "Unauthorized")
    assert_error(
        client.post(
            "/api/auth/password", json={"current_password": "wrong-password", "new_password": "whatever123"}, headers=user["headers"]
        ),
        403,
        "Forbidden",
    )
    assert_error(client.get(f"/api/{user['user']['id']}/tasks", headers=other["headers"]), 403, "Forbidden")
    assert_error(client.get(f"/api/tasks/{task['id']}", headers=other["headers"]), 404, "Not Found")
    assert_error(client.get("/nowhere"), 404, "Not Found")
    assert_error(client.delete("/api/auth/login"), 405, "Method Not Allowed")
    assert_error(client.post("/api/auth/signup", json={"email": "shape@example.com", "password": "whatever123"}), 409, "Conflict")
    assert_error(client.delete(f"/api/tasks/{task['id']}", headers={**user["headers"], "If-Match": '"x"'}), 412, "Precondition Failed")
    assert_error(client.get("/api/tasks?page=0", headers=user["headers"]), 422, "Unprocessable Entity")


def test_a_10_mb_body_is_a_413_and_writes_nothing(client, auth_headers):
    body = b'{"title": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    response = client.post("/api/tasks", data=body, content_type="application/json", headers=auth_headers)
    assert_error(response, 413, "Request Entity Too Large")
    assert client.get("/api/tasks", headers=auth_headers).json == []


@pytest.mark.parametrize("body", [{"title": None}, {"title": {"nested": "object"}}, {"title": ["list"]}, {"tags": {"a": 1}}])
def test_wrong_json_types_are_a_422(client, auth_headers, body):
    response = client.post("/api/tasks", json=body, headers=auth_headers)
    assert_error(response, 422, "Unprocessable Entity")


def test_every_route_with_every_method_answers_without_a_500(app, client, make_user, make_task):
    """Whatever a client sends to whichever route, the answer is a documented status in the one shape."""
    user = make_user()
    task = make_task(headers=user["headers"])
    values = {"task_id": task["id"], "user_id": user["user"]["id"], "filename": "swagger-ui.css"}
    bodies = [None, b"{}", b'{"title": 1}', b"\xff", b"null"]
    seen = set()
    for rule in app.url_map.iter_rules():
        path = rule.rule
        for name, value in values.items():
            path = path.replace(f"<int:{name}>", str(value)).replace(f"<path:{name}>", str(value))
        if rule.endpoint == "static":
            continue
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"):
            if (path, method) == (f"/api/tasks/{task['id']}", "DELETE") or path in (
                "/api/auth/me",
                "/api/auth/logout",
                "/api/auth/password",
            ):
                continue  # these would end the session or the task the loop uses; tested on their own
            for body in bodies:
                response = client.open(path, method=method, data=body, content_type="application/json", headers=user["headers"])
                assert response.status_code < 500, (method, path, body, response.data)
                if response.status_code >= 400 and method != "HEAD":  # HEAD answers carry no body
                    assert_error(response, response.status_code, HTTPStatus(response.status_code).phrase)
                seen.add(path)
    assert len(seen) >= 8


def test_messages_of_list_items_are_a_flat_list_naming_the_item(client, auth_headers):
    # The error schema says location -> field -> list of messages; marshmallow nests list items.
    response = client.post("/api/tasks", json={"title": "t", "tags": ["ok", "", "x" * 51]}, headers=auth_headers)
    body = assert_error(response, 422, "Unprocessable Entity")
    assert body["errors"] == {
        "json": {
            "tags": [
                "item 1: Length must be between 1 and 50 after trimming white space.",
                "item 2: Length must be between 1 and 50 after trimming white space.",
            ]
        }
    }


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"title": "x", "tags": [""] * 100_000}, id="100,000 empty tags"),
        pytest.param({"title": "x", "tags": [0] * 300_000}, id="300,000 integers as tags"),
        pytest.param({"title": "x", "tags": ["a"] * 101}, id="101 tags"),
        pytest.param({"title": "x", **{f"unknown{n}": 1 for n in range(20_000)}}, id="20,000 unknown fields"),
        pytest.param({"title": "x", "k" * 50_000: 1}, id="a 50,000-character field name"),
    ],
)
def test_an_error_body_is_a_few_kb_whatever_the_request(client, auth_headers, body):
    response = client.post("/api/tasks", json=body, headers=auth_headers)
    assert_error(response, 422, "Unprocessable Entity")
    assert len(response.data) < 4096, len(response.data)


def test_over_long_tag_lists_are_refused_before_their_items_and_errors_are_cut(client, auth_headers):
    response = client.post("/api/tasks", json={"title": "x", "tags": [""] * 101}, headers=auth_headers)
    assert response.json["errors"] == {"json": {"tags": ["At most 100 tags may be sent (20 distinct)."]}}
    many = client.post("/api/tasks", json={"title": "x", "tags": [""] * 8}, headers=auth_headers)
    assert many.json["errors"]["json"]["tags"][-1] == "... and 3 more."
    assert len(many.json["errors"]["json"]["tags"]) == 6
    assert client.post("/api/tasks", json={"title": "x", "tags": ["a", "A"] * 50}, headers=auth_headers).status_code == 201
