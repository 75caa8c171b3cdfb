"""Fixtures: an app on a real database (SQLite, or PostgreSQL when TEST_DATABASE_URL is set),
a client, and users and tasks made through the API itself."""

import itertools
import os

import pytest

from helpers import PASSWORD, bearer
from scripts.scratch import drop_everything
from todo_api import create_app, db

_emails = itertools.count(1)


@pytest.fixture(scope="session", autouse=True)
def fresh_database_server_schema():
    """A database server keeps its tables between runs, maybe of an older schema: drop them once
    at the start; each test's app makes the tables it needs."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        drop_everything(url)


@pytest.fixture
def config(request, tmp_path):
    """Test settings, plus those of the test's `@pytest.mark.config(KEY=value)` marker."""
    marker = request.node.get_closest_marker("config")
    return {
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": os.environ.get("TEST_DATABASE_URL") or f"sqlite:///{tmp_path / 'todo.db'}",
        "JWT_SECRET_KEY": "test-secret-key-that-is-long-enough-1234",
        "AUTO_MIGRATE": False,  # the schema comes from create_all; test_migrations.py proves them equal
        **(marker.kwargs if marker else {}),
    }


@pytest.fixture
def app(config, tmp_path):
    app = create_app(config, instance_path=str(tmp_path / "instance"))
    with app.app_context():
        db.create_all()
    yield app
    with app.app_context():
        # Leave no rows behind for the next test (PostgreSQL keeps one database for all).
        db.session.remove()
        with db.engine.begin() as connection:
            for table in reversed(db.metadata.sorted_tables):
                connection.execute(table.delete())
        db.engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def make_user(client):
    """Sign a user up through the API; returns the TokenPair plus ready-made headers."""

    def make(email=None, password=PASSWORD, **fields):
        email = email or f"user{next(_emails)}@example.com"
        response = client.post("/api/auth/signup", json={"email": email, "password": password, **fields})
        assert response.status_code == 201, response.json
        pair = response.json
        pair["headers"] = bearer(pair["access_token"])
        pair["password"] = password
        return pair

    return make


@pytest.fixture
def auth_headers(make_user):
    return make_user()["headers"]


@pytest.fixture
def other_auth_headers(make_user):
    return make_user()["headers"]


@pytest.fixture
def make_task(client, auth_headers):
    """Create a task through the API (as `auth_headers` unless told otherwise); returns its JSON."""

    def make(headers=None, **fields):
        fields.setdefault("title", "A task")
        response = client.post("/api/tasks", json=fields, headers=headers or auth_headers)
        assert response.status_code == 201, response.json
        return response.json

    return make
