"""The factory and its configuration, the service routes, and routing errors."""

import io
import json
import os
import re
import stat
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

import todo_api
from helpers import POSTGRES, another_worker
from todo_api import ConfigError, create_app, database_uri, db

ERROR_KEYS = {"code", "status", "message"}


def test_short_configured_jwt_secret_stops_the_service(config, tmp_path):
    config["JWT_SECRET_KEY"] = "too-short"
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        create_app(config, instance_path=str(tmp_path))


@pytest.mark.parametrize("seconds", [0, -1])
def test_a_database_timeout_that_is_not_above_zero_stops_the_service(config, tmp_path, seconds):
    config["DATABASE_TIMEOUT"] = seconds
    with pytest.raises(ConfigError, match="DATABASE_TIMEOUT"):
        create_app(config, instance_path=str(tmp_path))


def test_generated_jwt_secret_is_kept_private_and_shared(app, config, tmp_path):
    del config["JWT_SECRET_KEY"]  # `app` made the tables; these two share its database
    first = create_app(config, instance_path=str(tmp_path))
    second = create_app(config, instance_path=str(tmp_path))
    key_file = tmp_path / "jwt-secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(first.config["JWT_SECRET_KEY"]) >= 32
    assert first.config["JWT_SECRET_KEY"] == second.config["JWT_SECRET_KEY"] == key_file.read_text().strip()
    # A token from one worker is honoured by another worker on the same host.
    token = first.test_client().post("/api/auth/signup", json={"email": "k@example.com", "password": "password123"})
    assert token.status_code == 201
    me = second.test_client().get("/api/auth/me", headers={"Authorization": f"Bearer {token.json['access_token']}"})
    assert me.status_code == 200


@pytest.mark.parametrize(
    "url, expected",
    [
        ("postgres://u:p@db.example.com:5432/app?sslmode=require", "postgresql+psycopg://u:p@db.example.com:5432/app?sslmode=require"),
        ("postgresql://u@localhost/app", "postgresql+psycopg://u@localhost/app"),
        ("postgresql+psycopg://u@localhost/app", "postgresql+psycopg://u@localhost/app"),
        ("sqlite:///todo.db", "sqlite:///todo.db"),
    ],
)
def test_database_url_as_hosting_providers_give_it(url, expected):
    assert database_uri(url) == expected


def test_environment_configures_the_app(monkeypatch, tmp_path):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    monkeypatch.setenv("JWT_SECRET_KEY", "k" * 40)
    monkeypatch.setenv("JWT_ACCESS_TOKEN_EXPIRES", "60")
    monkeypatch.setenv("MAX_CONTENT_LENGTH", "2048")
    monkeypatch.setenv("RATELIMIT_ENABLED", "false")
    monkeypatch.setenv("FLASK_LOGIN_EMAIL_LIMIT", '"3 per minute"')
    monkeypatch.setenv("TRASH_RETENTION_DAYS", "0.5")
    monkeypatch.setenv("DATABASE_TIMEOUT", "2.5")
    monkeypatch.setenv("SIGNUP_ADDRESS_LIMIT", "5 per hour")
    monkeypatch.setenv("AUTO_MIGRATE", "off")
    app = create_app(instance_path=str(tmp_path))
    assert app.config["TRASH_RETENTION_DAYS"] == 0.5 and app.config["DATABASE_TIMEOUT"] == 2.5
    assert app.config["SIGNUP_ADDRESS_LIMIT"] == "5 per hour" and app.config["AUTO_MIGRATE"] is False
    with app.app_context():
        db.create_all()
    assert app.config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'env.db'}"
    assert app.config["JWT_ACCESS_TOKEN_EXPIRES"] == 60
    assert app.config["MAX_CONTENT_LENGTH"] == 2048
    assert app.config["RATELIMIT_ENABLED"] is False
    assert app.config["LOGIN_EMAIL_LIMIT"] == "3 per minute"
    signup = app.test_client().post("/api/auth/signup", json={"email": "e@example.com", "password": "password123"})
    assert signup.status_code == 201
    assert signup.json["expires_in"] == 60
    assert os.path.exists(tmp_path / "env.db")


def test_health(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json == {"status": "ok", "database": "ok"}


def test_unreachable_database_is_a_503_and_health_says_so(config, tmp_path):
    config["SQLALCHEMY_DATABASE_URI"] = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1"
    client = create_app(config, instance_path=str(tmp_path)).test_client()

    health = client.get("/health")
    assert health.status_code == 503
    assert health.json == {
        "code": 503,
        "status": "Service Unavailable",
        "message": health.json["message"],
        "database": "unavailable",
    }

    signup = client.post("/api/auth/signup", json={"email": "x@example.com", "password": "password123"})
    assert signup.status_code == 503
    assert set(signup.json) == ERROR_KEYS
    assert "127.0.0.1" not in signup.json["message"]


def test_unhandled_exception_is_a_json_500_without_internals(config, tmp_path):
    config["TESTING"] = False  # with TESTING on, Flask re-raises instead
    app = create_app(config, instance_path=str(tmp_path))

    @app.route("/boom")
    def boom():
        raise RuntimeError("secret detail: SELECT password_hash FROM users")

    response = app.test_client().get("/boom")
    assert response.status_code == 500
    assert response.json == {"code": 500, "status": "Internal Server Error", "message": "Internal server error."}
    assert b"secret detail" not in response.data and b"Traceback" not in response.data


def test_openapi_document_lists_every_route_and_the_bearer_scheme(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json
    assert spec["openapi"].startswith("3.")
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert {key: scheme[key] for key in ("type", "scheme", "bearerFormat")} == {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    assert spec["security"] == [{"bearerAuth": []}]
    expected = {
        "/api/auth/signup": {"post"},
        "/api/auth/login": {"post"},
        "/api/auth/refresh": {"post"},
        "/api/auth/logout": {"post"},
        "/api/auth/me": {"get", "patch", "delete"},
        "/api/auth/password": {"post"},
        "/api/tasks": {"get", "post"},
        "/api/tasks/{task_id}": {"get", "put", "patch", "delete"},
        "/api/tasks/{task_id}/complete": {"patch"},
        "/api/{user_id}/tasks": {"get", "post"},
        "/api/{user_id}/tasks/{task_id}": {"get", "put", "patch", "delete"},
        "/api/{user_id}/tasks/{task_id}/complete": {"patch"},
    }
    for path, methods in expected.items():
        assert methods <= set(spec["paths"][path]), path
    # Error responses are documented, in the one error shape.
    create = spec["paths"]["/api/tasks"]["post"]
    assert {"201", "401", "415", "422"} <= set(create["responses"])
    assert spec["paths"]["/api/tasks/{task_id}"]["get"]["responses"]["404"] == {"$ref": "#/components/responses/NOT_FOUND"}
    assert spec["paths"]["/api/{user_id}/tasks"]["get"]["responses"]["403"] == {"$ref": "#/components/responses/FORBIDDEN"}
    assert set(spec["components"]["schemas"]["Error"]["required"]) == ERROR_KEYS
    # Signup and login need no token; If-Match is optional.
    assert spec["paths"]["/api/auth/login"]["post"]["security"] == []
    if_match = [p for p in spec["paths"]["/api/tasks/{task_id}"]["put"]["parameters"] if p["name"] == "If-Match"]
    assert if_match == [
        {"in": "header", "name": "If-Match", "required": False, "schema": {"type": "string"}, "description": if_match[0]["description"]}
    ]
    assert spec["paths"]["/api/{user_id}/tasks"]["get"]["tags"] == ["phase2"]


def test_swagger_ui_is_served_with_its_own_assets(client):
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "/openapi.json" in html
    assert "https://" not in html and "http://" not in html  # nothing from a CDN
    for asset in ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"):
        assert f"/docs/assets/{asset}" in html
        with client.get(f"/docs/assets/{asset}") as response:
            assert response.status_code == 200, asset
            assert len(response.data) > 10_000


def test_unknown_route_is_a_json_404(client):
    response = client.get("/api/nothing-here")
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/json"
    assert response.json == {"code": 404, "status": "Not Found", "message": "Resource not found."}


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("delete", "/api/tasks", {"GET", "POST"}),
        ("put", "/api/auth/login", {"POST"}),
        ("post", "/api/tasks/1", {"GET", "PUT", "PATCH", "DELETE"}),
        ("get", "/api/tasks/1/complete", {"PATCH"}),
        ("post", "/health", {"GET"}),
    ],
)
def test_wrong_method_is_a_json_405_with_allow(client, method, path, allowed):
    response = getattr(client, method)(path)
    assert response.status_code == 405
    assert allowed <= {m.strip() for m in response.headers["Allow"].split(",")}
    assert response.json["code"] == 405
    assert response.json["status"] == "Method Not Allowed"


def test_every_response_says_nosniff(client):
    for response in (client.get("/health"), client.get("/nowhere"), client.get("/api/tasks")):
        assert response.headers["X-Content-Type-Options"] == "nosniff"


# --- CORS ---

ORIGIN = "https://app.example.com"


def test_no_cors_headers_by_default(client):
    response = client.get("/api/tasks", headers={"Origin": ORIGIN})
    assert "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.config(CORS_ORIGINS=f"{ORIGIN}, https://other.example.com")
def test_cors_preflight_for_an_allowed_origin(client):
    response = client.options(
        "/api/tasks/1",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "Authorization, Content-Type, If-Match",
        },
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "PATCH" in response.headers["Access-Control-Allow-Methods"]
    allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "if-match"} <= allowed
    assert "Access-Control-Allow-Credentials" not in response.headers


# Every request header the contract names, and every response header it names.
REQUEST_HEADERS = ["Authorization", "Content-Type", "If-Match", "If-None-Match", "Idempotency-Key", "X-Request-ID"]
RESPONSE_HEADERS = ["ETag", "Location", "X-Pagination", "Link", "Retry-After", "WWW-Authenticate", "Idempotent-Replayed", "X-Request-ID"]


@pytest.mark.config(CORS_ORIGINS=ORIGIN)
@pytest.mark.parametrize("header", REQUEST_HEADERS)
@pytest.mark.parametrize("path, method", [("/api/tasks", "POST"), ("/api/tasks/1/complete", "PATCH"), ("/api/trash/1/restore", "POST")])
def test_a_browser_may_send_every_request_header_of_the_contract(client, header, path, method):
    response = client.options(
        path, headers={"Origin": ORIGIN, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": header.lower()}
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert header.lower() in {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}


@pytest.mark.config(CORS_ORIGINS=ORIGIN)
def test_cors_exposes_the_api_headers_to_scripts(client, auth_headers):
    response = client.get("/api/tasks", headers={**auth_headers, "Origin": ORIGIN})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    exposed = {h.strip() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
    assert set(RESPONSE_HEADERS) <= exposed
    replayed = [client.post("/api/tasks", json={"title": "t"}, headers={**auth_headers, "Origin": ORIGIN, "Idempotency-Key": "k"})]
    replayed.append(client.post("/api/tasks", json={"title": "t"}, headers={**auth_headers, "Origin": ORIGIN, "Idempotency-Key": "k"}))
    assert [r.status_code for r in replayed] == [201, 201] and replayed[1].headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" in replayed[1].headers["Access-Control-Expose-Headers"]
    unauthorized = client.get("/api/tasks", headers={"Origin": ORIGIN})
    assert unauthorized.status_code == 401 and "WWW-Authenticate" in unauthorized.headers["Access-Control-Expose-Headers"]


@pytest.mark.config(CORS_ORIGINS=ORIGIN)
def test_cors_ignores_other_origins(client):
    response = client.options("/api/tasks", headers={"Origin": "https://evil.example.com", "Access-Control-Request-Method": "GET"})
    assert "Access-Control-Allow-Origin" not in response.headers


# --- answers without a body ---


def test_answers_without_a_body_carry_no_content_type(client, auth_headers, make_task):
    task = make_task()
    etag = client.get(f"/api/tasks/{task['id']}", headers=auth_headers).headers["ETag"]
    not_modified = client.get(f"/api/tasks/{task['id']}", headers={**auth_headers, "If-None-Match": etag})
    deleted = client.delete(f"/api/tasks/{task['id']}", headers=auth_headers)
    logged_out = client.post("/api/auth/logout", headers=auth_headers)
    for response, status in ((not_modified, 304), (deleted, 204), (logged_out, 204)):
        assert response.status_code == status
        assert "Content-Type" not in response.headers and response.data == b""


# --- request ids and logs ---


def test_every_response_carries_a_request_id(client):
    generated = client.get("/health").headers["X-Request-ID"]
    assert re.fullmatch("[0-9a-f]{32}", generated), generated
    assert client.get("/health").headers["X-Request-ID"] != generated
    assert client.get("/nowhere", headers={"X-Request-ID": "abc-123.DEF:9_z"}).headers["X-Request-ID"] == "abc-123.DEF:9_z"
    for insane in ("x" * 129, "has space", "semi;colon", "", "é"):
        response = client.get("/health", headers={"X-Request-ID": insane})
        assert response.headers["X-Request-ID"] != insane
        assert len(response.headers["X-Request-ID"]) == 32


def log_lines(app):
    """Point the app's log handler at a buffer; returns a function that reads the JSON lines."""
    buffer = io.StringIO()
    app.logger.handlers[0].setStream(buffer)
    return lambda: [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_logs_are_json_lines_without_secrets(app, client):
    read_logs = log_lines(app)
    signup = client.post("/api/auth/signup", json={"email": "log@example.com", "password": "very secret password"})
    token = signup.json["access_token"]
    client.get("/api/tasks?q=x", headers={"Authorization": f"Bearer {token}", "X-Request-ID": "trace-1"})
    client.post("/api/auth/login", json={"email": "log@example.com", "password": "wrong secret password"})

    lines = read_logs()
    access = [line for line in lines if line["logger"] == "todo_api.access"]
    assert [(line["method"], line["path"], line["status"]) for line in access] == [
        ("POST", "/api/auth/signup", 201),
        ("GET", "/api/tasks", 200),
        ("POST", "/api/auth/login", 401),
    ]
    assert access[1]["request_id"] == "trace-1"
    assert all(isinstance(line["duration_ms"], float) and line["request_id"] for line in access)
    everything = json.dumps(lines)
    for secret in (token, signup.json["refresh_token"], "very secret password", "wrong secret password", "argon2"):
        assert secret not in everything


def test_a_crash_is_logged_as_json_with_its_request_id(config, tmp_path):
    config["TESTING"] = False
    app = create_app(config, instance_path=str(tmp_path))
    read_logs = log_lines(app)

    @app.route("/boom")
    def boom():
        raise RuntimeError("kaboom")

    response = app.test_client().get("/boom", headers={"X-Request-ID": "crash-1"})
    assert response.status_code == 500
    error = next(line for line in read_logs() if line["level"] == "ERROR")
    assert error["request_id"] == "crash-1"
    assert "RuntimeError: kaboom" in error["exception"]


# --- database settings ---


def test_postgresql_pool_is_configurable(config, tmp_path, monkeypatch):
    monkeypatch.setenv("DB_POOL_SIZE", "7")
    monkeypatch.setenv("DB_MAX_OVERFLOW", "3")
    config.update(SQLALCHEMY_DATABASE_URI="postgresql://nobody@127.0.0.1:1/none")
    app = create_app(config, instance_path=str(tmp_path))
    options = app.config["SQLALCHEMY_ENGINE_OPTIONS"]
    assert options["pool_size"] == 7 and options["max_overflow"] == 3 and options["pool_timeout"] == 5
    assert "pool_pre_ping" not in options and options["hide_parameters"] is True  # idle ones only: test_round_trips.py
    assert options["connect_args"]["application_name"] == "todo-api"


@pytest.mark.parametrize("seconds, connect, statement", [("5", 5, 5000), ("0.5", 2, 500), ("2.5", 3, 2500)])
def test_database_timeout_bounds_connecting_statements_and_the_pool(config, tmp_path, monkeypatch, seconds, connect, statement):
    monkeypatch.setenv("DATABASE_TIMEOUT", seconds)
    config.update(SQLALCHEMY_DATABASE_URI="postgresql://nobody@127.0.0.1:1/none")
    options = create_app(config, instance_path=str(tmp_path)).config["SQLALCHEMY_ENGINE_OPTIONS"]
    assert options["connect_args"]["connect_timeout"] == connect  # libpq: whole seconds, at least 2
    assert options["connect_args"]["options"] == f"-c statement_timeout={statement}"
    assert options["pool_timeout"] == float(seconds)


@pytest.mark.config(DATABASE_TIMEOUT=1.0)
def test_a_request_that_waits_on_the_database_past_the_timeout_is_a_503(client, auth_headers, make_task):
    if not POSTGRES:
        pytest.skip("a lock held by another connection of a database server")
    task = make_task()
    with another_worker() as other:  # another worker holds the task's row lock for 5 s
        other.execute(text("SELECT id FROM tasks WHERE id = :id FOR UPDATE"), {"id": task["id"]})
        release = threading.Timer(5, other.rollback)
        release.start()
        started = time.monotonic()
        response = client.patch(f"/api/tasks/{task['id']}", json={"title": "waited"}, headers=auth_headers)
        waited = time.monotonic() - started
        release.cancel()
        release.join()
        other.rollback()
    assert response.status_code == 503
    assert response.json == {"code": 503, "status": "Service Unavailable", "message": "The database is unavailable; try again shortly."}
    assert 0.9 < waited < 2.5
    again = client.patch(f"/api/tasks/{task['id']}", json={"title": "served"}, headers=auth_headers)
    assert again.status_code == 200 and again.json["title"] == "served"


def test_sqlite_is_set_up_for_several_workers(app):
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        pytest.skip("SQLite's settings (the server's pool: test_postgresql_pool_is_configurable)")
    with app.app_context(), db.engine.connect() as connection:
        pragma = lambda name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
        assert pragma("journal_mode") == "wal"
        assert pragma("foreign_keys") == 1
        assert pragma("busy_timeout") == 5000
        assert pragma("synchronous") == 1  # NORMAL


def test_swagger_ui_keeps_no_token_in_browser_storage(client):
    page = client.get("/docs")
    assert page.status_code == 200
    assert 'var override_config = {"persistAuthorization": false};' in page.get_data(as_text=True)


def test_the_module_docstring_lists_every_section_in_file_order():
    """todo_api.py's docstring is its table of contents: one line per banner, in order, each
    naming its section as the banner does (up to the banner's first colon)."""
    source = Path(todo_api.__file__).read_text()
    banners = [line[len("# --- ") : -len(" ---")] for line in source.splitlines() if line.startswith("# --- ") and line.endswith(" ---")]
    listed = [line[2:] for line in todo_api.__doc__.splitlines() if line.startswith("- ")]
    assert len(banners) == 23, banners
    assert [entry.split(":")[0] for entry in listed] == [banner.split(":")[0] for banner in banners]
