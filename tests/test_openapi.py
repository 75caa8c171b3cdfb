"""The OpenAPI document as client generators and Swagger UI read it: operation ids, request
schemas without defaults, required response fields, examples that work, the statuses and
headers actually sent; and a client generated from it by openapi-python-client, driven against
the app."""

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from helpers import TASK_KEYS

BIN = Path(sys.executable).parent
METHODS = {"get", "put", "post", "patch", "delete"}


@pytest.fixture
def spec(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json


def operations(spec):
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield path, method, operation


def resolve(spec, ref_or_object):
    if "$ref" in ref_or_object:
        kind, name = ref_or_object["$ref"].split("/")[-2:]
        return spec["components"][kind][name]
    return ref_or_object


def walk(node):
    """Every dict inside a JSON value."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def test_every_operation_has_a_unique_readable_operation_id(spec):
    ids = [operation.get("operationId") for _path, _method, operation in operations(spec)]
    assert None not in ids
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z][A-Za-z]+", op_id) for op_id in ids), ids
    by_route = {(method, path): operation["operationId"] for path, method, operation in operations(spec)}
    assert by_route[("get", "/api/tasks")] == "listTasks"
    assert by_route[("post", "/api/tasks")] == "createTask"
    assert by_route[("get", "/api/tasks/{task_id}")] == "getTask"
    assert by_route[("put", "/api/tasks/{task_id}")] == "replaceTask"
    assert by_route[("patch", "/api/tasks/{task_id}")] == "updateTask"
    assert by_route[("patch", "/api/tasks/{task_id}/complete")] == "toggleTaskCompletion"
    assert by_route[("delete", "/api/tasks/{task_id}")] == "deleteTask"
    assert by_route[("post", "/api/auth/signup")] == "signup"
    assert by_route[("post", "/api/auth/login")] == "login"
    assert by_route[("get", "/api/{user_id}/tasks")] == "listUserTasks"


def test_sort_values_have_readable_names(spec):
    (sort,) = [p for p in spec["paths"]["/api/tasks"]["get"]["parameters"] if p["name"] == "sort"]
    names = dict(zip(sort["schema"]["enum"], sort["schema"]["x-enum-varnames"], strict=True))
    assert names["-due_date"] == "DUE_DATE_DESC" and names["title"] == "TITLE"


def test_request_bodies_declare_no_defaults(spec):
    # A default on a body field makes openapi-python-client send it and openapi-typescript require it.
    for name in ("TaskIn", "TaskPatch", "Signup", "Login", "Profile", "PasswordChange"):
        schema = spec["components"]["schemas"][name]
        assert [node for node in walk(schema) if "default" in node] == [], name
    assert "required" not in spec["components"]["schemas"]["TaskPatch"]
    assert spec["components"]["schemas"]["TaskIn"]["required"] == ["title"]


def test_lengths_stand_beside_patterns(spec):
    title = spec["components"]["schemas"]["TaskIn"]["properties"]["title"]
    # The pattern holds the trimmed rule (1-200 visible characters); the lengths bound the text as sent.
    assert (title["minLength"], title["maxLength"]) == (1, 400)
    assert "{0,198}" in title["pattern"] and "1-200 characters after trimming" in title["description"]
    tag = spec["components"]["schemas"]["TaskIn"]["properties"]["tags"]["items"]
    assert (tag["minLength"], tag["maxLength"]) == (1, 100)


def test_response_schemas_require_what_is_always_sent(spec):
    schemas = spec["components"]["schemas"]
    assert set(schemas["Task"]["required"]) == TASK_KEYS
    assert set(schemas["User"]["required"]) == {"id", "email", "name", "created_at", "issuer", "subject"}
    assert set(schemas["TokenPair"]["required"]) == {"access_token", "refresh_token", "token_type", "expires_in", "user"}
    assert set(schemas["Health"]["required"]) == {"status", "database"}
    assert set(schemas["Error"]["required"]) == {"code", "status", "message"}
    nullable = {name for name, prop in schemas["Task"]["properties"].items() if prop.get("nullable")}
    assert nullable == {"completed_at", "due_date", "recurrence"}
    # Nothing a client can write is read-only (priority once was).
    assert [name for name, prop in schemas["Task"]["properties"].items() if prop.get("readOnly")] == []


def test_error_schema_types_its_errors_and_every_error_has_an_example(spec):
    errors = spec["components"]["schemas"]["Error"]["properties"]["errors"]
    assert errors["additionalProperties"]["additionalProperties"] == {"type": "array", "items": {"type": "string"}}
    for path, method, operation in operations(spec):
        for code, response in operation["responses"].items():
            response = resolve(spec, response)
            if code == "default" or code.startswith("4") or code.startswith("5"):
                example = response["content"]["application/json"]["example"]
                assert example["code"] == (500 if code == "default" else int(code)), (path, method, code)
                assert example["message"] and "additionalProp1" not in json.dumps(example)
    assert spec["components"]["responses"]["UNPROCESSABLE_ENTITY"]["content"]["application/json"]["example"]["errors"] == {
        "json": {"title": ["Missing data for required field."]}
    }


def test_only_statuses_the_service_answers_are_documented(spec):
    documented = {code for _path, _method, operation in operations(spec) for code in operation["responses"]}
    assert "428" not in documented
    assert documented <= {
        "200",
        "201",
        "204",
        "304",
        "400",
        "401",
        "403",
        "404",
        "409",
        "410",
        "412",
        "413",
        "415",
        "422",
        "429",
        "503",
        "default",
    }
    by_route = {(method, path): set(operation["responses"]) for path, method, operation in operations(spec)}
    assert "304" in by_route[("get", "/api/tasks/{task_id}")]
    assert "412" in by_route[("put", "/api/tasks/{task_id}")] and "412" in by_route[("patch", "/api/tasks/{task_id}/complete")]
    assert "412" not in by_route[("get", "/api/tasks/{task_id}")]
    assert "401" not in by_route[("post", "/api/auth/signup")]


def test_headers_sent_are_documented(spec):
    paths = spec["paths"]
    assert {"ETag", "Location", "X-Request-ID"} <= set(paths["/api/tasks"]["post"]["responses"]["201"]["headers"])
    listing = paths["/api/tasks"]["get"]["responses"]["200"]["headers"]
    assert listing["X-Pagination"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ListPageMetadata"}
    assert "next_cursor" in spec["components"]["schemas"]["ListPageMetadata"]["properties"]
    assert "Link" in listing
    trash = paths["/api/trash"]["get"]["responses"]["200"]["headers"]
    assert trash["X-Pagination"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/PaginationMetadata"}
    for path, method in (("/api/tasks", "post"), ("/api/tasks/{task_id}/complete", "patch"), ("/api/trash/{task_id}/restore", "post")):
        success = next(response for code, response in paths[path][method]["responses"].items() if code.startswith("2"))
        assert "Idempotent-Replayed" in success["headers"], path
        assert "Idempotency-Key" in {parameter["name"] for parameter in paths[path][method]["parameters"]}, path
    got = paths["/api/tasks/{task_id}"]["get"]["responses"]
    assert "ETag" in got["200"]["headers"] and "ETag" in got["304"]["headers"]
    assert "Cache-Control" in paths["/api/auth/login"]["post"]["responses"]["200"]["headers"]
    responses = spec["components"]["responses"]
    assert "WWW-Authenticate" in responses["UNAUTHORIZED"]["headers"]
    assert "Retry-After" in responses["TOO_MANY_REQUESTS"]["headers"]
    for path, method, operation in operations(spec):
        for code, response in operation["responses"].items():
            assert "X-Request-ID" in resolve(spec, response).get("headers", {}), (path, method, code)


def test_every_request_body_and_query_parameter_is_described(spec):
    for path, method, operation in operations(spec):
        if "requestBody" in operation:
            body = operation["requestBody"]
            assert body["description"], (path, method)
            assert "example" in body["content"]["application/json"], (path, method)
        for parameter in operation.get("parameters", []):
            if parameter["in"] in ("query", "header"):
                assert parameter.get("description"), (path, method, parameter["name"])


# Signup first and the password change last: the examples describe one account.
EXAMPLE_ORDER = {"signup": 0, "login": 1, "changePassword": 99}


def test_every_request_example_succeeds_as_it_is(client, spec):
    with_body = [(path, method, op) for path, method, op in operations(spec) if "requestBody" in op]
    with_body.sort(key=lambda route: EXAMPLE_ORDER.get(route[2]["operationId"], 50))
    assert with_body[0][2]["operationId"] == "signup"
    headers, ids = {}, {}
    for path, method, operation in with_body:
        url = path.format(user_id=ids.get("user_id"), task_id=ids.get("task_id"))
        example = operation["requestBody"]["content"]["application/json"]["example"]
        response = client.open(url, method=method.upper(), json=example, headers=headers)
        assert 200 <= response.status_code < 300, (operation["operationId"], response.status_code, response.json)
        if operation["operationId"] == "signup":
            headers = {"Authorization": f"Bearer {response.json['access_token']}"}
            ids["user_id"] = response.json["user"]["id"]
        if operation["operationId"] == "createTask":
            ids["task_id"] = response.json["id"]
    assert {"login", "createTask", "createUserTask", "replaceTask", "updateTask", "changePassword"} <= {
        op["operationId"] for _p, _m, op in with_body
    }


def test_the_examples_survive_the_readme_walk_through_and_toggling(client, spec):
    """The README's walk-through signs ada@ up: the signup example is another account. Toggling
    the created example in "Try it out" makes no second task: it does not recur."""
    ada = client.post("/api/auth/signup", json={"email": "ada@example.com", "password": "correct horse battery"})
    assert ada.status_code == 201
    examples = {op["operationId"]: op for _p, _m, op in operations(spec) if "requestBody" in op}
    signup = client.post("/api/auth/signup", json=examples["signup"]["requestBody"]["content"]["application/json"]["example"])
    assert signup.status_code == 201, signup.json
    headers = {"Authorization": f"Bearer {signup.json['access_token']}"}
    created = client.post(
        "/api/tasks", json=examples["createTask"]["requestBody"]["content"]["application/json"]["example"], headers=headers
    )
    assert created.status_code == 201
    toggled = client.patch(f"/api/tasks/{created.json['id']}/complete", headers=headers)
    assert toggled.status_code == 200 and "Link" not in toggled.headers
    assert json.loads(client.get("/api/tasks", headers=headers).headers["X-Pagination"])["total"] == 1


def test_the_bearer_scheme_tells_what_to_paste(spec):
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    assert "alone" in scheme["description"] and "Bearer" in scheme["description"]


def test_a_304_carries_the_etag(client, auth_headers, make_task):
    task = make_task()
    etag = client.get(f"/api/tasks/{task['id']}", headers=auth_headers).headers["ETag"]
    response = client.get(f"/api/tasks/{task['id']}", headers={**auth_headers, "If-None-Match": etag})
    assert response.status_code == 304
    assert response.headers["ETag"] == etag
    assert response.data == b""


# --- A generated Python client ---


def snake(operation_id):
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation_id).lower()


@pytest.fixture
def generated(app, spec, tmp_path):
    """openapi-python-client's package for the app's document, and a function that finds an
    operation's module by its operationId (as the generator names it), so that a renamed or
    missing operationId fails here instead of silently changing a name."""
    (tmp_path / "openapi.json").write_text(json.dumps(spec))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # its post-hooks run ruff
    command = [BIN / "openapi-python-client", "generate", "--path", "openapi.json", "--meta", "none"]
    command += ["--output-path", "todo_api_client", "--fail-on-warning"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stdout + result.stderr, result.stdout + result.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        package = importlib.import_module("todo_api_client")
        tags = {op["operationId"]: op["tags"][0] for _path, _method, op in operations(spec)}

        def operation(operation_id):
            return importlib.import_module(f"todo_api_client.api.{tags[operation_id]}.{snake(operation_id)}")

        yield package, operation
    finally:
        sys.path.remove(str(tmp_path))
        for name in [name for name in sys.modules if name.split(".")[0] == "todo_api_client"]:
            del sys.modules[name]


def test_a_generated_python_client_works_and_its_patch_sends_only_what_is_set(app, generated):
    package, operation = generated
    models = importlib.import_module("todo_api_client.models")
    sent = []

    def record(request):
        sent.append((request.method, request.url.path, request.content))

    transport = {"transport": httpx.WSGITransport(app=app), "event_hooks": {"request": [record]}}
    anonymous = package.Client(base_url="http://127.0.0.1", httpx_args=transport)
    signed_up = operation("signup").sync_detailed(client=anonymous, body=models.Signup(email="gen@example.com", password="a long password"))
    assert signed_up.status_code == 201
    pair = signed_up.parsed
    assert pair.user.email == "gen@example.com" and pair.token_type.value == "Bearer"

    def as_user(token):
        return package.AuthenticatedClient(base_url="http://127.0.0.1", token=token, httpx_args=transport)

    client = as_user(pair.access_token)
    created = operation("createTask").sync_detailed(client=client, body=models.TaskIn(title="Only a title"))
    assert created.status_code == 201
    assert json.loads(sent[-1][2]) == {"title": "Only a title"}  # nothing but what was set
    task = created.parsed
    assert (task.priority.value, task.description, task.completed, task.tags) == ("medium", "", False, [])
    assert created.headers["Location"] == f"/api/tasks/{task.id}" and created.headers["ETag"]

    # Give it values other than the defaults, then PATCH only the title.
    update = operation("updateTask")
    changed = update.sync_detailed(
        task.id, client=client, body=models.TaskPatch(priority=models.TaskPatchPriority.HIGH, description="Notes")
    )
    assert changed.status_code == 200
    assert operation("toggleTaskCompletion").sync_detailed(task.id, client=client).parsed.completed is True
    patched = update.sync_detailed(task.id, client=client, body=models.TaskPatch(title="Renamed"))
    assert patched.status_code == 200
    assert json.loads(sent[-1][2]) == {"title": "Renamed"}
    assert (patched.parsed.title, patched.parsed.priority.value, patched.parsed.description) == ("Renamed", "high", "Notes")
    assert patched.parsed.completed is True and patched.parsed.completed_at is not None

    listed = operation("listTasks").sync_detailed(
        client=client, completed=True, priority=models.ListTasksPriority.HIGH, sort=models.ListTasksSort.TITLE_DESC
    )
    assert listed.status_code == 200
    assert [item.id for item in listed.parsed] == [task.id]
    assert json.loads(listed.headers["X-Pagination"])["total"] == 1
    assert operation("listTasks").sync_detailed(client=client, completed=False).parsed == []

    refreshed = operation("refreshTokens").sync_detailed(client=as_user(pair.refresh_token))
    assert refreshed.status_code == 200
    fresh_client = as_user(refreshed.parsed.access_token)
    assert operation("getTask").sync_detailed(task.id, client=fresh_client).parsed.title == "Renamed"
    assert operation("logout").sync_detailed(client=fresh_client).status_code == 204
    revoked = operation("getAccount").sync_detailed(client=fresh_client)
    assert revoked.status_code == 401
    assert revoked.parsed.message == "Token has been revoked."
