"""The migrations build exactly the models' schema, keep data, and run at start."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect, text

from todo_api import INITIAL_REVISION, create_app, db, drop_everything, init_migrations, password_hasher


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


def test_upgrading_counts_the_tasks_users_already_have(bare_app):
    with bare_app.app_context():
        upgrade(revision="e7dcfebc8909")  # before users had a task counter
        db.session.execute(
            text("INSERT INTO users (id, email, name, password_hash, created_at) VALUES (1, 'c@example.com', '', 'x', '2026-01-01')")
        )
        for n in range(3):
            db.session.execute(
                text(
                    "INSERT INTO tasks (user_id, title, description, completed, priority, tags, created_at, updated_at, version, "
                    "title_key, search_key) VALUES (1, :title, '', false, 1, '[]', '2026-01-01', '2026-01-01', 1, :key, :search)"
                ),
                {"title": f"t{n}", "key": f"t{n}", "search": f"t{n}"},
            )
        db.session.commit()
        upgrade()
        assert db.session.execute(text("SELECT task_count FROM users WHERE id = 1")).scalar() == 3
        db.session.rollback()  # end the read: the downgrade alters the table it read
        downgrade(revision="e7dcfebc8909")
        assert db.session.execute(text("SELECT count(*) FROM tasks")).scalar() == 3
