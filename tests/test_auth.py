"""Accounts and sessions: signup, login, refresh rotation, logout, me, password, deletion,
every way a token can be refused, and the brute-force limits."""

import json
import time
from datetime import datetime, timedelta

import jwt as pyjwt
import pytest
from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from flask_jwt_extended import create_access_token, decode_token
from sqlalchemy import delete, func, select, update

import todo_api
from helpers import PASSWORD, POSTGRES, another_worker, b64, bearer, recorded_selects, request_held_up
from todo_api import Task, User, UserSession, db

TOKEN_PAIR_KEYS = {"access_token", "refresh_token", "token_type", "expires_in", "user"}


def assert_token_pair(response, status=200):
    assert response.status_code == status, response.json
    assert response.headers["Cache-Control"] == "no-store"
    assert set(response.json) == TOKEN_PAIR_KEYS
    assert response.json["token_type"] == "Bearer"
    assert response.json["expires_in"] == 900
    assert set(response.json["user"]) == {"id", "email", "name", "created_at", "issuer", "subject"}
    assert response.json["user"]["issuer"] is None and response.json["user"]["subject"] is None  # a local account


def assert_401(response):
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert set(response.json) == {"code", "status", "message"}
    assert response.json["code"] == 401
    assert response.json["status"] == "Unauthorized"


# --- signup ---


def test_signup_returns_a_token_pair_and_the_user(client):
    response = client.post("/api/auth/signup", json={"email": " Ada@Example.COM", "password": PASSWORD, "name": "Ada"})
    assert_token_pair(response, 201)
    user = response.json["user"]
    assert user["email"] == "ada@example.com"
    assert user["name"] == "Ada"
    assert user["created_at"].endswith("+00:00")
    assert "password" not in response.get_data(as_text=True)
    me = client.get("/api/auth/me", headers=bearer(response.json["access_token"]))
    assert me.status_code == 200
    assert me.json == user


@pytest.mark.parametrize("extra", [{}, {"name": None}, {"name": ""}])
def test_signup_name_is_optional(client, extra):
    response = client.post("/api/auth/signup", json={"email": "n@example.com", "password": PASSWORD, **extra})
    assert_token_pair(response, 201)
    assert response.json["user"]["name"] == ""


def test_password_is_stored_as_argon2id_at_owasp_parameters(app, make_user):
    user = make_user(email="hash@example.com")
    with app.app_context():
        stored = db.session.scalar(select(User.password_hash).where(User.id == user["user"]["id"]))
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert PasswordHasher().verify(stored, PASSWORD)  # a hash of this password, not the password
    with pytest.raises(VerificationError):
        PasswordHasher().verify(stored, PASSWORD + "!")


@pytest.mark.parametrize("email", ["dup@example.com", "DUP@example.com", " Dup@Example.com "])
def test_signup_with_a_registered_email_is_a_409(client, make_user, email):
    make_user(email="dup@example.com")
    response = client.post("/api/auth/signup", json={"email": email, "password": PASSWORD})
    assert response.status_code == 409
    assert response.json["code"] == 409
    assert response.json["status"] == "Conflict"
    assert "already registered" in response.json["message"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"password": PASSWORD}, "email"),
        ({"email": "not-an-email", "password": PASSWORD}, "email"),
        ({"email": "a" * 245 + "@example.com", "password": PASSWORD}, "email"),
        ({"email": 42, "password": PASSWORD}, "email"),
        ({"email": "p@example.com"}, "password"),
        ({"email": "p@example.com", "password": "short7!"}, "password"),
        ({"email": "p@example.com", "password": "x" * 129}, "password"),
        ({"email": "p@example.com", "password": 12345678}, "password"),
        ({"email": "p@example.com", "password": PASSWORD, "name": "n" * 101}, "name"),
        ({"email": "p@example.com", "password": PASSWORD, "name": "nul\u0000"}, "name"),
        ({"email": "p@example.com", "password": PASSWORD, "role": "admin"}, "role"),
        ({"email": "p@example.com", "password": PASSWORD, "id": 1}, "id"),
    ],
)
def test_signup_validation(client, body, field):
    response = client.post("/api/auth/signup", json=body)
    assert response.status_code == 422
    assert response.json["message"] == "Validation failed."
    assert field in response.json["errors"]["json"]


def test_signup_accepts_the_length_bounds(client):
    email = "b" * 242 + "@example.com"  # 254 characters
    response = client.post("/api/auth/signup", json={"email": email, "password": "x" * 8, "name": "n" * 100})
    assert_token_pair(response, 201)
    assert client.post("/api/auth/signup", json={"email": "c@example.com", "password": "y" * 128}).status_code == 201


# --- login ---


def test_login_with_any_case_of_the_email(client, make_user):
    make_user(email="case@example.com")
    response = client.post("/api/auth/login", json={"email": "CASE@example.com", "password": PASSWORD})
    assert_token_pair(response)
    assert response.json["user"]["email"] == "case@example.com"


def test_login_failures_are_one_401_whatever_failed(client, make_user, monkeypatch):
    make_user(email="known@example.com")
    verified = []
    real_verify = User.verify_password
    monkeypatch.setattr(User, "verify_password", lambda user, password: verified.append(user.password_hash) or real_verify(user, password))

    wrong_password = client.post("/api/auth/login", json={"email": "known@example.com", "password": "wrong password"})
    unknown_email = client.post("/api/auth/login", json={"email": "nobody@example.com", "password": "wrong password"})
    for response in (wrong_password, unknown_email):
        assert_401(response)
    assert wrong_password.json == unknown_email.json
    assert wrong_password.json["message"] == "Invalid email or password."
    # Both paths run one argon2 verification, so both take about as long.
    assert len(verified) == 2
    assert verified[1] == todo_api.DUMMY_HASH


@pytest.mark.parametrize(
    "body, field",
    [
        ({"email": "x@example.com"}, "password"),
        ({"password": PASSWORD}, "email"),
        ({"email": "x@example.com", "password": PASSWORD, "remember": True}, "remember"),
    ],
)
def test_login_validation(client, body, field):
    response = client.post("/api/auth/login", json=body)
    assert response.status_code == 422
    assert field in response.json["errors"]["json"]


# --- refresh ---


def test_refresh_rotates_the_refresh_token(client, make_user):
    user = make_user()
    first = client.post("/api/auth/refresh", headers=bearer(user["refresh_token"]))
    assert_token_pair(first)
    assert first.json["user"] == user["user"]
    assert first.json["refresh_token"] != user["refresh_token"]

    # The new refresh token works; the session's access tokens keep working.
    second = client.post("/api/auth/refresh", headers=bearer(first.json["refresh_token"]))
    assert_token_pair(second)
    for token in (user["access_token"], first.json["access_token"], second.json["access_token"]):
        assert client.get("/api/auth/me", headers=bearer(token)).status_code == 200

    # A refresh token used once is dead (and using it again ends the session: see below).
    assert_401(client.post("/api/auth/refresh", headers=bearer(user["refresh_token"])))
    for token in (user["access_token"], second.json["access_token"]):
        assert_401(client.get("/api/auth/me", headers=bearer(token)))


def test_access_token_cannot_refresh_and_refresh_token_cannot_access(client, make_user):
    user = make_user()
    assert_401(client.post("/api/auth/refresh", headers=bearer(user["access_token"])))
    assert_401(client.get("/api/auth/me", headers=bearer(user["refresh_token"])))
    assert_401(client.get("/api/tasks", headers=bearer(user["refresh_token"])))


# --- logout ---


def test_logout_revokes_both_tokens_of_that_session_only(client, make_user):
    user = make_user(email="out@example.com")
    other_session = client.post("/api/auth/login", json={"email": "out@example.com", "password": PASSWORD}).json

    response = client.post("/api/auth/logout", headers=user["headers"])
    assert response.status_code == 204
    assert response.data == b""

    assert_401(client.get("/api/auth/me", headers=user["headers"]))
    assert_401(client.post("/api/auth/refresh", headers=bearer(user["refresh_token"])))
    assert_401(client.post("/api/auth/logout", headers=user["headers"]))
    assert client.get("/api/auth/me", headers=bearer(other_session["access_token"])).status_code == 200


def test_logout_also_revokes_tokens_issued_by_refresh(client, make_user):
    user = make_user()
    refreshed = client.post("/api/auth/refresh", headers=bearer(user["refresh_token"])).json
    assert client.post("/api/auth/logout", headers=bearer(refreshed["access_token"])).status_code == 204
    assert_401(client.get("/api/auth/me", headers=user["headers"]))
    assert_401(client.post("/api/auth/refresh", headers=bearer(refreshed["refresh_token"])))


# --- me ---


def test_patch_me_changes_the_name(client, make_user):
    user = make_user(name="Old")
    response = client.patch("/api/auth/me", json={"name": "New Name"}, headers=user["headers"])
    assert response.status_code == 200
    assert response.json == {**user["user"], "name": "New Name"}
    assert client.get("/api/auth/me", headers=user["headers"]).json["name"] == "New Name"


@pytest.mark.parametrize(
    "body, field",
    [({}, "name"), ({"name": "n" * 101}, "name"), ({"name": None}, "name"), ({"name": "x", "email": "e@example.com"}, "email")],
)
def test_patch_me_validation(client, auth_headers, body, field):
    response = client.patch("/api/auth/me", json=body, headers=auth_headers)
    assert response.status_code == 422
    assert field in response.json["errors"]["json"]


# --- password ---


def test_password_change_revokes_every_earlier_token(client, make_user):
    user = make_user(email="pw@example.com")
    other = client.post("/api/auth/login", json={"email": "pw@example.com", "password": PASSWORD}).json

    response = client.post(
        "/api/auth/password", json={"current_password": PASSWORD, "new_password": "a new password"}, headers=user["headers"]
    )
    assert_token_pair(response)
    for token in (user["access_token"], other["access_token"]):
        assert_401(client.get("/api/auth/me", headers=bearer(token)))
    for token in (user["refresh_token"], other["refresh_token"]):
        assert_401(client.post("/api/auth/refresh", headers=bearer(token)))

    assert client.get("/api/auth/me", headers=bearer(response.json["access_token"])).status_code == 200
    assert client.post("/api/auth/refresh", headers=bearer(response.json["refresh_token"])).status_code == 200
    assert_401(client.post("/api/auth/login", json={"email": "pw@example.com", "password": PASSWORD}))
    assert client.post("/api/auth/login", json={"email": "pw@example.com", "password": "a new password"}).status_code == 200


def test_password_change_with_a_wrong_current_password_is_a_403(client, make_user):
    user = make_user()
    response = client.post(
        "/api/auth/password", json={"current_password": "not my password", "new_password": "a new password"}, headers=user["headers"]
    )
    assert response.status_code == 403
    assert response.json["code"] == 403
    assert client.get("/api/auth/me", headers=user["headers"]).status_code == 200


@pytest.mark.parametrize(
    "body, field",
    [
        ({"new_password": "a new password"}, "current_password"),
        ({"current_password": PASSWORD}, "new_password"),
        ({"current_password": PASSWORD, "new_password": "short"}, "new_password"),
    ],
)
def test_password_change_validation(client, auth_headers, body, field):
    response = client.post("/api/auth/password", json=body, headers=auth_headers)
    assert response.status_code == 422
    assert field in response.json["errors"]["json"]


# --- account deletion ---


def test_delete_account_removes_the_user_and_their_tasks(app, client, make_user, make_task):
    user = make_user(email="gone@example.com")
    survivor = make_user()
    make_task(headers=user["headers"], title="mine", tags=["x"])
    make_task(headers=survivor["headers"], title="theirs")

    response = client.delete("/api/auth/me", headers=user["headers"])
    assert response.status_code == 204
    assert_401(client.get("/api/auth/me", headers=user["headers"]))
    assert_401(client.post("/api/auth/refresh", headers=bearer(user["refresh_token"])))
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Task).where(Task.user_id == user["user"]["id"])) == 0
        assert db.session.scalar(select(func.count()).select_from(UserSession).where(UserSession.user_id == user["user"]["id"])) == 0
    assert len(client.get("/api/tasks", headers=survivor["headers"]).json) == 1

    again = client.post("/api/auth/signup", json={"email": "gone@example.com", "password": PASSWORD})
    assert again.status_code == 201
    assert client.get("/api/tasks", headers=bearer(again.json["access_token"])).json == []


@pytest.mark.skipif(not POSTGRES, reason="writers overlap only on a database server: SQLite runs writes one at a time")
def test_deleting_an_account_while_one_of_its_tasks_is_written_waits_for_the_write(app, client, make_user):
    """Both lock the task before the owner's row: the deletion waits for the write, and neither
    is chosen as a deadlock's victim (PostgreSQL would fail one of them after a second)."""
    user = make_user()
    task = client.post("/api/tasks", json={"title": "a"}, headers=user["headers"]).json
    with another_worker() as writer:
        writing = writer.begin()  # another worker writes the task: the task's row first (as OWN_TASK)
        writer.execute(select(Task.id).where(Task.id == task["id"]).with_for_update())
        with request_held_up(lambda: client.delete("/api/auth/me", headers=user["headers"])) as answers:
            change = todo_api.next_change(writer, user["user"]["id"])  # then its owner's row
            writer.execute(update(Task).where(Task.id == task["id"]).values(title="b", change_seq=change))
            writing.commit()
    assert [answer.status_code for answer in answers] == [204], [answer.json for answer in answers]
    assert_401(client.get("/api/auth/me", headers=user["headers"]))
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Task)) == 0


@pytest.mark.skipif(not POSTGRES, reason="writers overlap only on a database server: SQLite runs writes one at a time")
@pytest.mark.parametrize(
    "method, path, body",
    [
        ("POST", "/api/tasks", {"title": "a"}),
        ("PATCH", "/api/auth/me", {"name": "b"}),
        ("POST", "/api/auth/password", {"current_password": PASSWORD, "new_password": "another password"}),
    ],
)
def test_a_write_whose_account_is_deleted_meanwhile_is_a_401(client, make_user, method, path, body):
    user = make_user()
    with another_worker() as other:
        deleting = other.begin()  # DELETE /api/auth/me in another worker, after this request's token was checked
        other.execute(delete(User).where(User.id == user["user"]["id"]))
        with request_held_up(lambda: client.open(path, method=method, json=body, headers=user["headers"])) as answers:
            deleting.commit()
    assert [answer.status_code for answer in answers] == [401], [answer.json for answer in answers]
    assert_401(answers[0])


def test_delete_account_needs_a_fresh_token(client, make_user):
    user = make_user()
    refreshed = client.post("/api/auth/refresh", headers=bearer(user["refresh_token"])).json
    response = client.delete("/api/auth/me", headers=bearer(refreshed["access_token"]))
    assert_401(response)
    assert "fresh" in response.json["message"]
    assert client.get("/api/auth/me", headers=user["headers"]).status_code == 200


# --- every way a token is refused ---


def b64_json(data):
    return b64(json.dumps(data))


def claims_of(app, token):
    with app.app_context():
        return decode_token(token)


@pytest.mark.parametrize(
    "make_header",
    [
        pytest.param(lambda app, user: {}, id="missing"),
        pytest.param(lambda app, user: {"Authorization": "Bearer"}, id="empty bearer"),
        pytest.param(lambda app, user: {"Authorization": f"Token {user['access_token']}"}, id="wrong scheme"),
        pytest.param(lambda app, user: bearer("garbage"), id="garbage"),
        pytest.param(lambda app, user: {"Authorization": ", ,"}, id="blank parts"),
        pytest.param(lambda app, user: {"Authorization": ",\t,"}, id="a tab between commas"),
        pytest.param(lambda app, user: {"Authorization": f"Bearer {user['access_token']}, Bearer x"}, id="two bearer tokens"),
        pytest.param(lambda app, user: bearer("a.b.c"), id="three garbage segments"),
        pytest.param(
            lambda app, user: bearer(b64_json({"alg": "none", "typ": "JWT"}) + "." + b64_json(claims_of(app, user["access_token"])) + "."),
            id="alg none",
        ),
        pytest.param(
            lambda app, user: bearer(
                pyjwt.encode(claims_of(app, user["access_token"]), "another-key-that-is-long-enough-0000", algorithm="HS256")
            ),
            id="wrong key",
        ),
        pytest.param(lambda app, user: bearer(user["access_token"][:-4] + "AAAA"), id="bad signature"),
        pytest.param(lambda app, user: bearer(user["refresh_token"]), id="refresh as access"),
    ],
)
def test_bad_tokens_are_401_in_the_error_shape(app, client, make_user, make_header):
    user = make_user()
    response = client.get("/api/tasks", headers=make_header(app, user))
    assert_401(response)
    assert "msg" not in response.json


def test_expired_token_is_a_401(app, client, make_user):
    user = make_user()
    claims = claims_of(app, user["access_token"])
    with app.app_context():
        expired = create_access_token(claims["sub"], additional_claims={"sid": claims["sid"]}, expires_delta=timedelta(seconds=-1))
    response = client.get("/api/auth/me", headers=bearer(expired))
    assert_401(response)
    assert response.json["message"] == "Token has expired."


def test_a_token_that_worked_is_refused_once_it_expires(app, client, make_user):
    claims = claims_of(app, make_user()["access_token"])
    with app.app_context():
        # PyJWT writes whole seconds: a 2 s lifetime leaves more than 1 s before "exp", whenever
        # within its second the token was minted.
        short = create_access_token(claims["sub"], additional_claims={"sid": claims["sid"]}, expires_delta=timedelta(seconds=2))
    for _ in range(2):
        assert client.get("/api/auth/me", headers=bearer(short)).status_code == 200
    time.sleep(max(0.0, pyjwt.decode(short, options={"verify_signature": False})["exp"] - time.time()) + 0.05)
    response = client.get("/api/auth/me", headers=bearer(short))
    assert_401(response)
    assert response.json["message"] == "Token has expired."


@pytest.mark.config(JWT_DECODE_LEEWAY=timedelta(seconds=30))
def test_a_leeway_given_as_a_timedelta_is_honoured_on_every_request(app, client, make_user):
    claims = claims_of(app, make_user()["access_token"])
    with app.app_context():
        within = create_access_token(claims["sub"], additional_claims={"sid": claims["sid"]}, expires_delta=timedelta(seconds=-5))
        beyond = create_access_token(claims["sub"], additional_claims={"sid": claims["sid"]}, expires_delta=timedelta(seconds=-60))
    for _ in range(2):
        assert client.get("/api/auth/me", headers=bearer(within)).status_code == 200
        response = client.get("/api/auth/me", headers=bearer(beyond))
        assert_401(response)
        assert response.json["message"] == "Token has expired."


def test_a_token_that_worked_is_refused_with_another_signature(client, make_user):
    token = make_user()["access_token"]
    assert client.get("/api/auth/me", headers=bearer(token)).status_code == 200
    header, payload, signature = token.split(".")
    forged = f"{header}.{payload}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"
    assert_401(client.get("/api/auth/me", headers=bearer(forged)))


def test_a_refresh_token_that_worked_is_still_refused_as_an_access_token(client, make_user):
    pair = make_user()
    refreshed = client.post("/api/auth/refresh", headers=bearer(pair["refresh_token"]))
    assert refreshed.status_code == 200
    # The type check runs on every request, not only on the first.
    for _ in range(2):
        assert_401(client.get("/api/tasks", headers=bearer(refreshed.json["refresh_token"])))
    assert client.post("/api/auth/refresh", headers=bearer(refreshed.json["refresh_token"])).status_code == 200


def test_token_of_a_deleted_user_is_a_401(client, make_user):
    user = make_user()
    assert client.delete("/api/auth/me", headers=user["headers"]).status_code == 204
    assert_401(client.get("/api/tasks", headers=user["headers"]))


def test_token_identity_is_a_string(app, make_user):
    user = make_user()
    claims = claims_of(app, user["access_token"])
    assert claims["sub"] == str(user["user"]["id"])
    assert claims["type"] == "access" and claims["fresh"] is True
    assert claims["exp"] - claims["iat"] == 900
    refresh = claims_of(app, user["refresh_token"])
    assert refresh["exp"] - refresh["iat"] == 2_592_000


# --- brute-force limits ---


@pytest.mark.config(LOGIN_EMAIL_LIMIT="3 per minute")
def test_failed_logins_are_limited_per_email(make_user, client):
    make_user(email="target@example.com")
    make_user(email="bystander@example.com")
    ok = client.post("/api/auth/login", json={"email": "target@example.com", "password": PASSWORD})
    assert ok.status_code == 200  # a success does not count
    for _ in range(3):
        assert_401(client.post("/api/auth/login", json={"email": "Target@example.com", "password": "wrong password"}))

    limited = client.post("/api/auth/login", json={"email": "target@example.com", "password": PASSWORD})
    assert limited.status_code == 429
    assert limited.json["code"] == 429
    assert limited.json["status"] == "Too Many Requests"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    # Another email from the same address is not locked out.
    assert client.post("/api/auth/login", json={"email": "bystander@example.com", "password": PASSWORD}).status_code == 200


@pytest.mark.config(LOGIN_ADDRESS_LIMIT="4 per minute")
def test_all_logins_are_limited_per_client_address(make_user, client):
    make_user(email="a@example.com")
    for _ in range(4):
        assert client.post("/api/auth/login", json={"email": "a@example.com", "password": PASSWORD}).status_code == 200
    limited = client.post("/api/auth/login", json={"email": "a@example.com", "password": PASSWORD})
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    other_address = client.post(
        "/api/auth/login", json={"email": "a@example.com", "password": PASSWORD}, environ_base={"REMOTE_ADDR": "10.9.8.7"}
    )
    assert other_address.status_code == 200


@pytest.mark.config(SIGNUP_ADDRESS_LIMIT="2 per hour")
def test_signups_are_limited_per_client_address(client):
    for n in range(2):
        assert client.post("/api/auth/signup", json={"email": f"s{n}@example.com", "password": PASSWORD}).status_code == 201
    limited = client.post("/api/auth/signup", json={"email": "s9@example.com", "password": PASSWORD})
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) > 60


@pytest.mark.config(RATELIMIT_ENABLED=False, LOGIN_EMAIL_LIMIT="1 per minute")
def test_limits_can_be_turned_off(make_user, client):
    make_user(email="free@example.com")
    for _ in range(3):
        assert_401(client.post("/api/auth/login", json={"email": "free@example.com", "password": "wrong password"}))


@pytest.mark.config(LOGIN_ADDRESS_LIMIT="2 per minute")
def test_x_forwarded_for_is_ignored_without_a_trusted_proxy(make_user, client):
    make_user(email="xff@example.com")
    for n in range(2):
        client.post("/api/auth/login", json={"email": "xff@example.com", "password": PASSWORD}, headers={"X-Forwarded-For": f"1.1.1.{n}"})
    spoofed = client.post(
        "/api/auth/login", json={"email": "xff@example.com", "password": PASSWORD}, headers={"X-Forwarded-For": "2.2.2.2"}
    )
    assert spoofed.status_code == 429


@pytest.mark.config(LOGIN_ADDRESS_LIMIT="2 per minute", TRUSTED_PROXIES=1)
def test_a_trusted_proxy_supplies_the_client_address(make_user, client):
    make_user(email="proxy@example.com")
    for _ in range(2):
        client.post("/api/auth/login", json={"email": "proxy@example.com", "password": PASSWORD}, headers={"X-Forwarded-For": "1.1.1.1"})
    assert (
        client.post(
            "/api/auth/login", json={"email": "proxy@example.com", "password": PASSWORD}, headers={"X-Forwarded-For": "1.1.1.1"}
        ).status_code
        == 429
    )
    assert (
        client.post(
            "/api/auth/login", json={"email": "proxy@example.com", "password": PASSWORD}, headers={"X-Forwarded-For": "3.3.3.3"}
        ).status_code
        == 200
    )


def test_authentication_costs_one_query(app, client, make_user):
    """The session check and the user come together, in one SELECT."""
    user = make_user()
    with recorded_selects(app) as statements:
        response = client.get("/api/auth/me", headers=user["headers"])
    assert response.status_code == 200
    assert len(statements) == 1, statements
    assert "sessions" in statements[0] and "users" in statements[0]


# --- every claim required, strictly typed (forged with the signing key itself) ---


def signed(app, claims):
    return pyjwt.encode(claims, app.config["JWT_SECRET_KEY"], algorithm="HS256")


def without(claims, name):
    return {key: value for key, value in claims.items() if key != name}


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda c: without(c, "jti"), id="no jti"),
        pytest.param(lambda c: without(c, "type"), id="no type"),
        pytest.param(lambda c: without(c, "exp"), id="no exp"),
        pytest.param(lambda c: without(c, "iat"), id="no iat"),
        pytest.param(lambda c: without(c, "sid"), id="no sid"),
        pytest.param(lambda c: {**c, "type": "bogus"}, id="type bogus"),
        pytest.param(lambda c: {**c, "type": "ACCESS"}, id="type upper case"),
        pytest.param(lambda c: {**c, "exp": str(c["exp"])}, id="exp a numeric string"),
        pytest.param(lambda c: {**c, "exp": float(c["exp"])}, id="exp a float"),
        pytest.param(lambda c: {**c, "iat": str(c["iat"])}, id="iat a string"),
        pytest.param(lambda c: {**c, "sid": 7}, id="sid a number"),
        pytest.param(lambda c: {**c, "jti": None}, id="jti null"),
        pytest.param(lambda c: {**c, "sub": f" {c['sub']} "}, id="sub with spaces"),
        pytest.param(lambda c: {**c, "sub": "１"}, id="sub in fullwidth digits"),
        pytest.param(lambda c: {**c, "sub": "0" + c["sub"]}, id="sub with a leading zero"),
        pytest.param(lambda c: {**c, "sub": str(2**63)}, id="sub past 64 bits"),
        pytest.param(lambda c: {**c, "sub": "9" * 40}, id="sub of 40 digits"),
    ],
)
def test_a_signed_token_without_every_claim_in_its_type_is_a_401_every_time(app, client, make_user, change):
    claims = claims_of(app, make_user()["access_token"])
    token = signed(app, change(dict(claims)))
    for _ in range(3):  # the same answer on every repeat, never a 500
        response = client.get("/api/tasks", headers=bearer(token))
        assert_401(response)
    assert client.get("/api/tasks", headers=bearer(signed(app, claims))).status_code == 200  # the unchanged claims pass


def test_a_refresh_token_re_signed_without_its_type_is_no_access_token(app, client, make_user):
    claims = claims_of(app, make_user()["refresh_token"])
    assert claims["type"] == "refresh"
    assert_401(client.get("/api/tasks", headers=bearer(signed(app, without(claims, "type")))))


def test_replaying_a_rotated_refresh_token_ends_the_session(client, make_user):
    first = make_user()
    second = client.post("/api/auth/refresh", headers=bearer(first["refresh_token"]))
    assert second.status_code == 200
    assert client.get("/api/tasks", headers=bearer(second.json["access_token"])).status_code == 200
    assert_401(client.post("/api/auth/refresh", headers=bearer(first["refresh_token"])))  # the replay
    # The whole session is over: the newer pair too, and the access token of the first.
    assert_401(client.get("/api/tasks", headers=bearer(second.json["access_token"])))
    assert_401(client.post("/api/auth/refresh", headers=bearer(second.json["refresh_token"])))
    assert_401(client.get("/api/tasks", headers=first["headers"]))


def test_a_session_past_its_expiry_accepts_no_token(app, client, make_user):
    user = make_user()
    assert client.get("/api/tasks", headers=user["headers"]).status_code == 200
    with app.app_context():
        db.session.execute(update(UserSession).values(expires_at=datetime(2000, 1, 1)))
        db.session.commit()
    assert_401(client.get("/api/tasks", headers=user["headers"]))
    assert_401(client.post("/api/auth/refresh", headers=bearer(user["refresh_token"])))


@pytest.mark.parametrize("char", ["\u200b", "\u202e", "\ufeff", "\u200d", "\u2066", "\u00ad"])
@pytest.mark.parametrize("where", ["local", "domain"])
def test_an_email_with_an_invisible_or_bidi_character_is_a_422(client, char, where):
    email = f"ad{char}a@example.com" if where == "local" else f"ada@exa{char}mple.com"
    response = client.post("/api/auth/signup", json={"email": email, "password": PASSWORD})
    assert response.status_code == 422, response.json
    assert "email" in response.json["errors"]["json"]
    assert client.post("/api/auth/signup", json={"email": "ada@example.com", "password": PASSWORD}).status_code == 201


def test_a_deleted_accounts_id_is_never_given_to_another(client, make_user):
    first = make_user()
    last = make_user()
    assert client.delete("/api/auth/me", headers=last["headers"]).status_code == 204
    after = make_user()
    assert after["user"]["id"] > last["user"]["id"] > first["user"]["id"]


@pytest.mark.parametrize(
    "token, message",
    [
        ("not-a-jwt", "Invalid token: it is not a well-formed JWT."),
        ("e30.e30.e30", "Invalid token: a claim is missing or malformed."),
        ("%%%.%%%.%%%", "Invalid token: it is not a well-formed JWT."),
        ("eyJhbGciOiJIUzI1NiJ9.e30.", "Invalid token: a claim is missing or malformed."),
    ],
)
def test_a_malformed_token_is_told_in_words_for_people(client, token, message):
    response = client.get("/api/tasks", headers=bearer(token))
    assert_401(response)
    assert response.json["message"] == message
    assert ".." not in response.json["message"]


def test_a_bad_signature_is_told_as_such(client, make_user):
    token = make_user()["access_token"]
    response = client.get("/api/tasks", headers=bearer(token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")))
    assert_401(response)
    assert response.json["message"] == "Invalid token: its signature does not verify."


def test_a_token_sent_where_the_other_kind_belongs_says_which_to_send(client, make_user):
    user = make_user()
    as_access = client.get("/api/tasks", headers=bearer(user["refresh_token"]))
    assert_401(as_access)
    assert as_access.json["message"].startswith("This is a refresh token: send the access token")
    as_refresh = client.post("/api/auth/refresh", headers=bearer(user["access_token"]))
    assert_401(as_refresh)
    assert as_refresh.json["message"].startswith("This is an access token: POST /api/auth/refresh takes the refresh token")


@pytest.mark.parametrize("value", ["Bearer Bearer {token}", "Bearer {token} {token}"])
def test_a_pasted_bearer_prefix_is_told_as_such(client, make_user, value):
    response = client.get("/api/tasks", headers={"Authorization": value.format(token=make_user()["access_token"])})
    assert_401(response)
    assert "the word Bearer appears twice" in response.json["message"]
