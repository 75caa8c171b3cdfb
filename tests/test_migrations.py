"""The migrations build exactly the models' schema, keep data, and run at start."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect, text

from scripts.scratch import drop_everything
from todo_api import INITIAL_REVISION, create_app, db, init_migrations, password_hasher


@pytest.fixture
def bare_app(config, tmp_path):
    """An app on a database with no tables at all; the suite's usual tables come back after."""
    drop_everything(config["SQLALCHEMY_DATABASE_URI"])
    app = create_app(config, instance_path=str(tmp_path / "instance"))
    init_migrations(app)
    yield app
    drop_everything(config["SQLALCHEMY_DATABASE_URI"])
    with app.app_context():
        db.create_all()
        db.engine.dispose()


def schema_differences(app):
    with app.app_context(), db.engine.connect() as connection:
        return compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), db.metadata)


def test_migrations_build_the_models_schema(bare_app):
    with bare_app.app_context():
        upgrade()
    assert schema_differences(bare_app) == []


def test_downgrade_to_nothing_and_back(bare_app):
    with bare_app.app_context():
        upgrade()
        downgrade(revision="base")
        assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
        upgrade()
    assert schema_differences(bare_app) == []


@pytest.mark.config(AUTO_MIGRATE=True)
def test_the_app_migrates_its_database_at_start(bare_app, config, tmp_path):
    # bare_app was built with AUTO_MIGRATE on: its start already applied every migration.
    assert schema_differences(bare_app) == []
    client = bare_app.test_client()
    assert client.post("/api/auth/signup", json={"email": "m@example.com", "password": "password123"}).status_code == 201
    # A second start (another worker) finds nothing to do and keeps the data.
    again = create_app(config, instance_path=str(tmp_path / "instance"))
    assert again.test_client().post("/api/auth/login", json={"email": "m@example.com", "password": "password123"}).status_code == 200
    with again.app_context():
        assert db.session.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1


@pytest.mark.config(AUTO_MIGRATE=True)
def test_a_database_from_before_migrations_is_adopted_with_its_data(config, tmp_path):
    drop_everything(config["SQLALCHEMY_DATABASE_URI"])
    before = create_app({**config, "AUTO_MIGRATE": False}, instance_path=str(tmp_path / "old"))
    init_migrations(before)
    with before.app_context():
        # The schema as the service made it before it had migrations: no alembic_version.
        upgrade(revision=INITIAL_REVISION)
        db.session.execute(text("DROP TABLE alembic_version"))
        # A user of that time, written as that schema had it (today's models have more columns).
        db.session.execute(
            text("INSERT INTO users (email, name, password_hash, created_at) VALUES ('old@example.com', '', :hash, '2026-01-01')"),
            {"hash": password_hasher.hash("password123")},
        )
        db.session.commit()

    after = create_app(config, instance_path=str(tmp_path / "new"))
    assert schema_differences(after) == []
    assert after.test_client().post("/api/auth/login", json={"email": "old@example.com", "password": "password123"}).status_code == 200
    drop_everything(config["SQLALCHEMY_DATABASE_URI"])
    with after.app_context():
        db.create_all()
        db.engine.dispose()


def insert_task_of_old_schema(user_id, title, tags=()):
    """A task (and its tag rows) as the migrations before 9d41c2b7e5a8 stored it; its id."""
    task_id = db.session.execute(
        text(
            "INSERT INTO tasks (user_id, title, description, completed, priority, tags, created_at, updated_at, version, "
            "title_key, search_key) VALUES (:user_id, :title, '', false, 1, :tags, '2026-01-01', '2026-01-01', 1, :key, :search) "
            "RETURNING id"
        ),
        {"user_id": user_id, "title": title, "tags": json.dumps(sorted(tags)), "key": title.lower(), "search": title.lower()},
    ).scalar()
    for tag in tags:
        db.session.execute(text("INSERT INTO task_tags (task_id, tag) VALUES (:task_id, :tag)"), {"task_id": task_id, "tag": tag})
    return task_id


def test_upgrading_counts_the_tasks_users_already_have(bare_app):
    with bare_app.app_context():
        upgrade(revision="e7dcfebc8909")  # before users had a task counter
        db.session.execute(
            text("INSERT INTO users (id, email, name, password_hash, created_at) VALUES (1, 'c@example.com', '', 'x', '2026-01-01')")
        )
        for n in range(3):
            insert_task_of_old_schema(1, f"t{n}")
        db.session.commit()
        upgrade()
        assert db.session.execute(text("SELECT task_count FROM users WHERE id = 1")).scalar() == 3
        db.session.rollback()  # end the read: the downgrade alters the table it read
        downgrade(revision="e7dcfebc8909")
        assert db.session.execute(text("SELECT count(*) FROM tasks")).scalar() == 3


def test_upgrading_gives_existing_tag_rows_their_tasks_owner(bare_app):
    with bare_app.app_context():
        upgrade(revision="5b1e6f0c3a27")  # before tag rows carried the owner
        for user_id in (1, 2):
            db.session.execute(
                text("INSERT INTO users (id, email, name, password_hash, created_at) VALUES (:id, :email, '', :hash, '2026-01-01')"),
                {"id": user_id, "email": f"u{user_id}@example.com", "hash": password_hasher.hash("password123")},
            )
        home = insert_task_of_old_schema(1, "Home", ["home", "weekly"])
        insert_task_of_old_schema(1, "Work", ["work"])
        insert_task_of_old_schema(2, "Theirs", ["home"])
        db.session.commit()
        upgrade()
        owners = db.session.execute(
            text("SELECT task_tags.user_id, tasks.user_id FROM task_tags JOIN tasks ON tasks.id = task_tags.task_id")
        ).all()
        assert len(owners) == 4 and all(tag_owner == task_owner for tag_owner, task_owner in owners), owners
        db.session.rollback()  # end the read before the requests and the downgrade

    client = bare_app.test_client()
    login = client.post("/api/auth/login", json={"email": "u1@example.com", "password": "password123"})
    assert login.status_code == 200
    response = client.get("/api/tasks?tag=home", headers={"Authorization": f"Bearer {login.json['access_token']}"})
    assert response.status_code == 200
    assert [(task["id"], task["tags"]) for task in response.json] == [(home, ["home", "weekly"])]

    with bare_app.app_context():
        downgrade(revision="5b1e6f0c3a27")
        assert db.session.execute(text("SELECT count(*) FROM task_tags")).scalar() == 4


def test_upgrading_keeps_the_users_and_stops_reusing_their_ids(bare_app):
    with bare_app.app_context():
        upgrade(revision="9d41c2b7e5a8")  # before users had AUTOINCREMENT on SQLite
        for n in (1, 2):
            db.session.execute(
                text(
                    "INSERT INTO users (id, email, name, password_hash, created_at) "
                    f"VALUES ({n}, 'u{n}@example.com', '', 'x', '2026-01-01')"
                )
            )
        insert_task_of_old_schema(1, "kept")
        db.session.commit()
        upgrade()
        assert db.session.execute(text("SELECT count(*) FROM users")).scalar() == 2
        assert db.session.execute(text("SELECT title FROM tasks WHERE user_id = 1")).scalars().all() == ["kept"]
        if db.engine.dialect.name != "sqlite":
            return  # explicit ids leave PostgreSQL's sequence behind; test_auth.py covers its ids
        db.session.execute(text("DELETE FROM users WHERE id = 2"))
        db.session.execute(
            text("INSERT INTO users (email, name, password_hash, created_at) VALUES ('new@example.com', '', 'x', '2026-01-02')")
        )
        assert db.session.execute(text("SELECT id FROM users WHERE email = 'new@example.com'")).scalar() == 3
        db.session.rollback()


def test_upgrading_gives_existing_tasks_a_search_key_of_the_description(bare_app):
    with bare_app.app_context():
        upgrade(revision="3f6a2d1c8b90")  # before title and description were searched each on its own
        db.session.execute(
            text("INSERT INTO users (id, email, name, password_hash, created_at) VALUES (1, 'd@example.com', '', 'x', '2026-01-01')")
        )
        insert_task_of_old_schema(1, "Title")
        db.session.execute(text("UPDATE tasks SET description = 'Ünïcode DESC'"))
        db.session.commit()
        upgrade()
        assert db.session.execute(text("SELECT search_key FROM tasks")).scalars().all() == ["ünïcode desc"]
        db.session.rollback()
        downgrade(revision="3f6a2d1c8b90")
        assert db.session.execute(text("SELECT search_key FROM tasks")).scalars().all() == ["title\x1fünïcode desc"]


def test_a_fresh_upgrade_from_the_command_line_prints_no_warning(tmp_path):
    """`flask db upgrade` on a new SQLite database (the app migrates it as it starts) says no warning."""
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.db'}", "PYTHONWARNINGS": "default"}
    env.pop("TEST_DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "todo_api", "db", "upgrade"],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stdout + result.stderr, result.stderr
