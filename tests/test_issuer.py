"""Tokens from the frontend's identity provider (AUTH_ISSUER): shaped as Better Auth 1.7 issues
them, signed by keys the tests make, their JWKS served by a server the tests control (fetch
counts, outages, hangs, rotation)."""

import hashlib
import hmac
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from helpers import bearer
from todo_api import IssuerKeys, User, db

ISSUER = "http://localhost:3000"  # Better Auth: its baseURL's origin is iss and aud alike


class JWKSServer:
    """A JWKS endpoint on loopback: `keys` is what it serves; `mode` "ok", "down" (500) or "hang"."""

    def __init__(self):
        self.keys, self.mode, self.fetches = [], "ok", 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.fetches += 1
                if server.mode == "hang":
                    time.sleep(IssuerKeys.FETCH_TIMEOUT + 2)
                status, body = (500, b"{}") if server.mode == "down" else (200, json.dumps({"keys": server.keys}).encode())
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/api/auth/jwks"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class SigningKey:
    """A key pair as Better Auth's jwt plugin makes one: a 32-character kid, alg in the JWK, no use."""

    MAKERS = {
        "EdDSA": (ed25519.Ed25519PrivateKey.generate, OKPAlgorithm),
        "ES256": (lambda: ec.generate_private_key(ec.SECP256R1()), ECAlgorithm),
        "ES512": (lambda: ec.generate_private_key(ec.SECP521R1()), ECAlgorithm),
        "RS256": (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), RSAAlgorithm),
        "PS256": (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), RSAAlgorithm),
    }

    def __init__(self, alg="EdDSA"):
        make, algorithm = self.MAKERS[alg]
        self.alg, self.kid, self.private = alg, uuid.uuid4().hex, make()
        self.jwk = {**algorithm.to_jwk(self.private.public_key(), as_dict=True), "alg": alg, "kid": self.kid}

    def token(self, sub="a" * 32, header=None, **claims):
        now = int(time.time())
        payload = {
            "id": sub, "name": "Ada", "email": "ada@example.com", "emailVerified": False, "image": None,
            "createdAt": "2026-12-01T00:00:00.000Z", "updatedAt": "2026-12-01T00:00:00.000Z",
            "sub": sub, "iat": now, "exp": now + 900, "iss": ISSUER, "aud": ISSUER, **claims,
        }  # fmt: skip
        payload = {name: value for name, value in payload.items() if value is not ...}
        # Better Auth's header is {"alg", "kid"}: no "typ" (PyJWT drops a typ of None).
        headers = {name: value for name, value in {"kid": self.kid, "typ": None, **(header or {})}.items() if value is not ...}
        return jwt.encode(payload, self.private, algorithm=self.alg, headers=headers)


@pytest.fixture
def jwks():
    server = JWKSServer()
    yield server
    server.close()


@pytest.fixture
def key(jwks):
    key = SigningKey()
    jwks.keys = [key.jwk]
    return key


@pytest.fixture
def config(config, jwks):
    return {**config, "AUTH_ISSUER": ISSUER, "AUTH_JWKS_URL": jwks.url}


def issuer_users(app):
    with app.app_context():
        return db.session.query(User).filter(User.issuer.is_not(None)).all()


# --- accepted tokens ---


@pytest.mark.parametrize("alg", sorted(SigningKey.MAKERS))
def test_an_issuer_token_is_an_access_token_and_its_first_use_makes_the_account(app, client, jwks, alg):
    signer = SigningKey(alg)
    jwks.keys = [signer.jwk]
    response = client.get("/api/auth/me", headers=bearer(signer.token()))
    assert response.status_code == 200, response.json
    assert response.json | {"id": 0, "created_at": ""} == {
        "id": 0, "email": "ada@example.com", "name": "Ada", "created_at": "", "issuer": ISSUER, "subject": "a" * 32,
    }  # fmt: skip
    assert client.get("/api/auth/me", headers=bearer(signer.token())).json["id"] == response.json["id"]
    assert len(issuer_users(app)) == 1


def test_tasks_trash_sync_and_retries_work_for_an_issuer_account(client, key):
    headers = bearer(key.token())
    created = client.post("/api/tasks", json={"title": "From Next.js"}, headers={**headers, "Idempotency-Key": "k1"})
    assert created.status_code == 201, created.json
    again = client.post("/api/tasks", json={"title": "From Next.js"}, headers={**headers, "Idempotency-Key": "k1"})
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true" and again.json == created.json
    task_id = created.json["id"]
    listed = client.get("/api/tasks", headers=headers)
    assert listed.status_code == 200 and [task["id"] for task in listed.json] == [task_id]
    synced = client.get("/api/tasks/changes", headers=headers)
    assert synced.status_code == 200 and [change["id"] for change in synced.json["changes"]] == [task_id]
    assert client.delete(f"/api/tasks/{task_id}", headers=headers).status_code == 204
    assert [task["id"] for task in client.get("/api/trash", headers=headers).json] == [task_id]
    assert client.post(f"/api/trash/{task_id}/restore", headers=headers).status_code == 200


def test_phase_two_paths_take_the_subject_or_the_id(client, key, make_user):
    subject = "b" * 32
    headers = bearer(key.token(sub=subject))
    created = client.post(f"/api/{subject}/tasks", json={"title": "Phase II"}, headers=headers)
    assert created.status_code == 201, created.json
    me = client.get("/api/auth/me", headers=headers).json
    assert client.get(f"/api/{me['id']}/tasks", headers=headers).json == [created.json]
    for other in ("c" * 32, str(me["id"] + 1), "abc"):
        response = client.get(f"/api/{other}/tasks", headers=headers)
        assert response.status_code == 403, other
    local = make_user()
    assert client.get(f"/api/{subject}/tasks", headers=local["headers"]).status_code == 403
    assert client.get(f"/api/{local['user']['id']}/tasks", headers=local["headers"]).status_code == 200


def test_issuer_accounts_are_never_joined_to_local_ones(app, client, key, make_user):
    local = make_user(email="ada@example.com")
    client.post("/api/tasks", json={"title": "local"}, headers=local["headers"])
    issuer_headers = bearer(key.token())
    me = client.get("/api/auth/me", headers=issuer_headers).json
    assert me["id"] != local["user"]["id"] and me["email"] == "ada@example.com"
    assert client.get("/api/tasks", headers=issuer_headers).json == []
    other = bearer(key.token(sub="d" * 32))
    assert client.get("/api/auth/me", headers=other).json["id"] not in (me["id"], local["user"]["id"])
    # The local account still logs in, and still alone owns its email among local accounts.
    login = client.post("/api/auth/login", json={"email": "ada@example.com", "password": local["password"]})
    assert login.status_code == 200 and login.json["user"]["id"] == local["user"]["id"]
    assert client.post("/api/auth/signup", json={"email": "ada@example.com", "password": "another password"}).status_code == 409


def test_the_profile_follows_the_tokens_claims(client, key):
    assert client.get("/api/auth/me", headers=bearer(key.token(name="Ada", email="ada@example.com"))).status_code == 200
    changed = client.get("/api/auth/me", headers=bearer(key.token(name="Ada L.", email="ada@lovelace.example")))
    assert (changed.json["name"], changed.json["email"]) == ("Ada L.", "ada@lovelace.example")
    bare = client.get("/api/auth/me", headers=bearer(key.token(sub="e" * 32, name=..., email=...)))
    assert bare.status_code == 200 and (bare.json["email"], bare.json["name"]) == (None, "")


def test_concurrent_first_requests_make_one_account(app, key):
    token = key.token(sub="f" * 32)

    def me(_):
        with app.test_client() as client:
            return client.get("/api/auth/me", headers=bearer(token))

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(me, range(8)))
    assert [answer.status_code for answer in answers] == [200] * 8
    assert len({answer.json["id"] for answer in answers}) == 1
    assert len(issuer_users(app)) == 1


# --- refused tokens ---


def tampered_payload(token):
    header, payload, signature = token.split(".")
    claims = json.loads(jwt.utils.base64url_decode(payload))
    claims["sub"] = "z" * 32
    return ".".join([header, jwt.utils.base64url_encode(json.dumps(claims).encode()).decode(), signature])


def tampered_signature(token):
    header, payload, signature = token.split(".")
    raw = bytearray(jwt.utils.base64url_decode(signature))
    raw[0] ^= 1
    return ".".join([header, payload, jwt.utils.base64url_encode(bytes(raw)).decode()])


def unsigned(token):
    header = jwt.utils.base64url_encode(
        json.dumps({"alg": "none", "kid": json.loads(jwt.utils.base64url_decode(token.split(".")[0]))["kid"]}).encode()
    )
    return ".".join([header.decode(), token.split(".")[1], ""])


def hs256_with_the_public_key(key):
    """The classic confusion: HS256 "signed" with the public key's PEM as the secret (made by
    hand: PyJWT itself refuses to)."""
    pem = key.private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    header = jwt.utils.base64url_encode(json.dumps({"alg": "HS256", "kid": key.kid}).encode())
    signing_input = header + b"." + key.token().split(".")[1].encode()
    signature = jwt.utils.base64url_encode(hmac.new(pem, signing_input, hashlib.sha256).digest())
    return (signing_input + b"." + signature).decode()


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda key: tampered_payload(key.token()), id="tampered payload"),
        pytest.param(lambda key: tampered_signature(key.token()), id="tampered signature"),
        pytest.param(lambda key: unsigned(key.token()), id="alg none"),
        pytest.param(hs256_with_the_public_key, id="HS256 with the public key"),
        pytest.param(lambda key: key.token(header={"kid": ...}), id="no kid"),
        pytest.param(lambda key: key.token(header={"kid": "unknown-kid"}), id="unknown kid"),
        pytest.param(lambda key: SigningKey().token(header={"kid": key.kid}), id="another issuer's key claiming this issuer"),
        pytest.param(lambda key: key.token(aud="http://127.0.0.1:3000"), id="wrong aud"),
        pytest.param(lambda key: key.token(aud=...), id="no aud"),
        pytest.param(lambda key: key.token(exp=int(time.time()) - 60), id="expired"),
        pytest.param(lambda key: key.token(exp=...), id="no exp"),
        pytest.param(lambda key: key.token(iat=...), id="no iat"),
        pytest.param(lambda key: key.token(nbf=int(time.time()) + 600), id="future nbf"),
        pytest.param(lambda key: key.token(sub=""), id="empty sub"),
        pytest.param(lambda key: key.token(sub="x" * 256), id="long sub"),
        pytest.param(lambda key: key.token(sub="a\nb"), id="control character in sub"),
    ],
)
def test_every_bad_issuer_token_is_a_401_in_the_error_shape(app, client, key, make):
    response = client.get("/api/tasks", headers=bearer(make(key)))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="todo-api"')
    assert set(response.json) == {"code", "status", "message"} and response.json["code"] == 401
    assert issuer_users(app) == []


def test_without_auth_issuer_an_issuer_token_is_not_accepted(app, key, tmp_path, config):
    from todo_api import create_app

    plain = create_app({**config, "AUTH_ISSUER": ""}, instance_path=str(tmp_path / "plain"))
    with plain.app_context():
        db.create_all()
    assert plain.test_client().get("/api/tasks", headers=bearer(key.token())).status_code == 401


# --- the key cache ---


def later(app, seconds):
    """Move the key cache's clock on by `seconds`."""
    keys = app.extensions["issuer_keys"]
    start = keys.clock()
    keys.clock = lambda: start + seconds


def test_keys_are_fetched_once_and_an_unknown_kid_refetches_at_most_every_30_seconds(app, client, jwks, key):
    for _ in range(3):
        assert client.get("/api/tasks", headers=bearer(key.token())).status_code == 200
    assert jwks.fetches == 1
    for _ in range(3):
        assert client.get("/api/tasks", headers=bearer(key.token(header={"kid": "nope"}))).status_code == 401
    assert jwks.fetches == 1  # an unknown kid within 30 s of the last fetch fetches nothing
    # A key rotated in is taken up without a restart, once 30 s have passed since the last fetch.
    rotated = SigningKey("ES256")
    jwks.keys = [rotated.jwk]
    assert client.get("/api/tasks", headers=bearer(rotated.token())).status_code == 401
    later(app, IssuerKeys.REFETCH_AFTER)
    assert client.get("/api/tasks", headers=bearer(rotated.token())).status_code == 200
    assert jwks.fetches == 2
    # The dropped key no longer verifies: the set was fetched again without it.
    assert client.get("/api/tasks", headers=bearer(key.token())).status_code == 401


@pytest.mark.parametrize("mode", ["down", "hang"])
def test_an_unreachable_issuer_is_a_503_for_new_keys_while_kept_keys_keep_working(app, client, jwks, key, mode):
    assert client.get("/api/tasks", headers=bearer(key.token())).status_code == 200
    jwks.mode = mode
    later(app, IssuerKeys.REFETCH_AFTER)
    started = time.monotonic()
    response = client.get("/api/tasks", headers=bearer(SigningKey().token()))
    assert response.status_code == 503
    assert 1 <= int(response.headers["Retry-After"]) <= 30 and response.json["code"] == 503
    assert time.monotonic() - started < IssuerKeys.FETCH_TIMEOUT + 1.5  # a hanging issuer is given up on
    fetches = jwks.fetches
    assert client.get("/api/tasks", headers=bearer(key.token())).status_code == 200  # kept: no fetch
    assert client.get("/api/tasks", headers=bearer(SigningKey().token())).status_code == 503  # within 30 s: no fetch
    assert jwks.fetches == fetches


def test_a_failed_first_fetch_answers_503_with_retry_after(client, jwks, key):
    jwks.mode = "down"
    response = client.get("/api/tasks", headers=bearer(key.token()))
    assert response.status_code == 503
    assert 1 <= int(response.headers["Retry-After"]) <= 30
    jwks.mode = "ok"
    assert client.get("/api/tasks", headers=bearer(key.token())).status_code == 503  # no refetch within 30 s
    assert jwks.fetches == 1


def test_an_empty_key_set_refuses_every_issuer_token(client, jwks, key):
    jwks.keys = []
    assert client.get("/api/tasks", headers=bearer(key.token())).status_code == 401


# --- what the issuer manages ---


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("POST", "/api/auth/refresh", None),
        ("POST", "/api/auth/logout", None),
        ("POST", "/api/auth/password", {"current_password": "x" * 8, "new_password": "y" * 8}),
        ("PATCH", "/api/auth/me", {"name": "New"}),
    ],
)
def test_the_issuer_manages_sessions_and_profiles(client, key, method, path, body):
    response = client.open(path, method=method, json=body, headers=bearer(key.token()))
    assert response.status_code == 403
    assert "identity provider" in response.json["message"]
    # A bad issuer token is still a 401 there.
    assert client.open(path, method=method, json=body, headers=bearer(tampered_signature(key.token()))).status_code == 401


def test_deleting_an_issuer_account_needs_a_token_at_most_5_minutes_old(app, client, key):
    old = key.token(iat=int(time.time()) - 301)
    headers = bearer(key.token())
    assert client.post("/api/tasks", json={"title": "gone soon"}, headers=headers).status_code == 201
    stale = client.delete("/api/auth/me", headers=bearer(old))
    assert stale.status_code == 401 and "fresh" in stale.json["message"].lower()
    first = client.get("/api/auth/me", headers=headers).json["id"]
    assert client.delete("/api/auth/me", headers=bearer(key.token())).status_code == 204
    # A later token of the same sub starts a new, empty account.
    again = client.get("/api/auth/me", headers=bearer(key.token()))
    assert again.status_code == 200 and again.json["id"] != first
    assert client.get("/api/tasks", headers=bearer(key.token())).json == []


@pytest.mark.config(LOCAL_ACCOUNTS=False)
def test_without_local_accounts_signup_login_refresh_and_password_are_403(client, key):
    for path, body in (
        ("/api/auth/signup", {"email": "new@example.com", "password": "password123"}),
        ("/api/auth/login", {"email": "new@example.com", "password": "password123"}),
        ("/api/auth/refresh", None),
        ("/api/auth/password", {"current_password": "x" * 8, "new_password": "y" * 8}),
    ):
        response = client.post(path, json=body)
        assert response.status_code == 403, path
        assert "Local accounts are off" in response.json["message"]
    assert client.get("/api/tasks", headers=bearer(key.token())).status_code == 200
