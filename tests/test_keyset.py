"""Keyset pages: next_cursor in X-Pagination, ?after= to go on in the same order and filters,
with no repeats and no skips while tasks come and go."""

from datetime import datetime
from urllib.parse import urlencode

import pytest
from sqlalchemy import update

from helpers import b64, pagination
from todo_api import SORT_KEYS, Task, db, decode_cursor, encode_cursor

SORTS = [f"{direction}{key}" for key in SORT_KEYS for direction in ("", "-")]


def listing(client, headers, **query):
    response = client.get(f"/api/tasks?{urlencode(query)}", headers=headers)
    assert response.status_code == 200, response.json
    return response


def walk(client, headers, between=None, **query):
    """Every task of a listing, page by page through next_cursor; `between(n)` runs before page n+1."""
    response, pages = listing(client, headers, **query), []
    while True:
        pages.append([task["id"] for task in response.json])
        meta = pagination(response)
        if "next_cursor" not in meta:
            return pages
        if between:
            between(len(pages))
        response = listing(client, headers, **query, after=meta["next_cursor"])
        assert set(pagination(response)) <= {"total", "total_pages", "next_cursor"}


@pytest.fixture
def varied(app, make_task):
    """Tasks with ties in every sort key, some without a due date, titles differing in case."""
    titles = ["b", "B", "a", "A", "c", "b", "C", "a", "é", "E"]
    tasks = [
        make_task(
            title=title,
            priority=("low", "medium", "high")[n % 3],
            due_date=None if n % 3 == 0 else f"2027-01-0{1 + n % 2}T00:00:00Z",
            tags=["even"] if n % 2 == 0 else [],
            completed=n % 4 == 0,
        )
        for n, title in enumerate(titles)
    ]
    with app.app_context():  # ties in created_at and updated_at too
        db.session.execute(update(Task).where(Task.id.in_([t["id"] for t in tasks[:5]])).values(created_at=datetime(2026, 1, 1)))
        db.session.commit()
    return tasks


@pytest.mark.parametrize("sort", SORTS)
@pytest.mark.parametrize("filters", [{}, {"tag": "even"}, {"completed": "false", "q": "b"}, {"due_after": "2026-01-01T00:00:00Z"}])
def test_pages_by_after_follow_the_same_order_as_pages_by_number(client, auth_headers, varied, sort, filters):
    by_number = [task["id"] for task in listing(client, auth_headers, sort=sort, page_size=100, **filters).json]
    pages = walk(client, auth_headers, sort=sort, page_size=3, **filters)
    assert [task_id for page in pages for task_id in page] == by_number
    assert all(len(page) == 3 for page in pages[:-1]) and len(pages) == max(1, -(-len(by_number) // 3))


@pytest.mark.parametrize("sort", SORTS)
def test_no_task_is_repeated_or_skipped_while_tasks_come_and_go(client, auth_headers, make_task, varied, sort):
    throughout = {task["id"] for task in varied[1::2]}
    doomed = [task for task in varied[::2]]
    added = []

    def churn(page):
        if doomed:
            assert client.delete(f"/api/tasks/{doomed.pop()['id']}", headers=auth_headers).status_code == 204
        added.append(make_task(title=f"new {page}", due_date=None if page % 2 else "2027-01-01T12:00:00Z")["id"])

    pages = walk(client, auth_headers, between=churn, sort=sort, page_size=2)
    seen = [task_id for page in pages for task_id in page]
    assert len(seen) == len(set(seen)), "no task repeated"
    assert throughout <= set(seen), "none that existed throughout skipped"


def test_a_keyset_page_has_an_exact_total_and_links_to_next_and_first(client, auth_headers, make_task):
    for n in range(5):
        make_task(title=f"t{n}", tags=["x"])
    make_task(title="other")
    first = listing(client, auth_headers, tag="x", sort="title", page_size=2)
    cursor = pagination(first)["next_cursor"]
    second = listing(client, auth_headers, tag="x", sort="title", page_size=2, after=cursor)
    assert [task["title"] for task in second.json] == ["t2", "t3"]
    meta = pagination(second)
    assert set(meta) == {"total", "total_pages", "next_cursor"} and (meta["total"], meta["total_pages"]) == (5, 3)
    links = dict(reversed(part.strip().split("; ")) for part in second.headers["Link"].split(","))
    assert links['rel="first"'] == "</api/tasks?tag=x&sort=title&page_size=2>"
    assert links['rel="next"'] == f"</api/tasks?tag=x&sort=title&page_size=2&after={meta['next_cursor']}>"
    last = listing(client, auth_headers, tag="x", sort="title", page_size=2, after=meta["next_cursor"])
    assert [task["title"] for task in last.json] == ["t4"]
    assert pagination(last) == {"total": 5, "total_pages": 3}
    assert 'rel="next"' not in last.headers["Link"]
    unfiltered = listing(client, auth_headers, page_size=5)
    assert pagination(listing(client, auth_headers, page_size=5, after=pagination(unfiltered)["next_cursor"]))["total"] == 6


def test_only_a_page_followed_by_more_carries_next_cursor(client, auth_headers, make_task):
    assert "next_cursor" not in pagination(listing(client, auth_headers))
    for _ in range(2):
        make_task()
    assert "next_cursor" not in pagination(listing(client, auth_headers, page_size=2))
    assert "next_cursor" in pagination(listing(client, auth_headers, page_size=1))
    assert "next_cursor" not in pagination(listing(client, auth_headers, page_size=1, page=2))
    assert "next_cursor" not in pagination(listing(client, auth_headers, page_size=1, page=9))


def test_after_with_page_or_a_cursor_for_another_listing_is_a_422_naming_after(client, auth_headers, make_task):
    for _ in range(3):
        make_task(tags=["x"])
    cursor = pagination(listing(client, auth_headers, page_size=1, tag="x"))["next_cursor"]
    for query in (
        {"tag": "x", "page": 1, "after": cursor},
        {"after": cursor},  # another filter
        {"tag": "y", "after": cursor},
        {"tag": "x", "sort": "title", "after": cursor},  # another sort
        {"tag": "x", "sort": "created_at", "after": cursor},
        {"after": "not-a-cursor"},
        {"after": b64("[1,2,3]")},
        {"after": b64('["0000000000000000", "2026", 1]')},
        {"after": ""},
    ):
        response = client.get(f"/api/tasks?{urlencode(query)}", headers=auth_headers)
        assert response.status_code == 422, query
        assert list(response.json["errors"]["query"]) == ["after"], query
    assert client.get(f"/api/tasks?{urlencode({'tag': 'X', 'after': cursor})}", headers=auth_headers).status_code == 200  # same tag


def after_is_refused(response):
    assert response.status_code == 422, response.json
    assert list(response.json["errors"]["query"]) == ["after"]
    return True


# What a forger may put in a cursor: the lone surrogate and NUL among them.
FORGED = [
    b64('["db9f1b137477d577","\\ud800",1]'),
    b64('["db9f1b137477d577","a\\u0000b",1]'),
    b64('["after",1,"db9f1b137477d577","x",1]'),
    b64("[" * 5000),
    "A" * 2049,
]


@pytest.mark.parametrize("sort", SORTS)
def test_a_forged_or_tampered_cursor_is_a_422_naming_after(app, client, make_user, make_task, sort):
    user = make_user()
    for _ in range(2):
        make_task(headers=user["headers"])
    cursor = pagination(listing(client, user["headers"], page_size=1, sort=sort))["next_cursor"]
    tampered = [cursor[:-1] + ("A" if cursor[-1] != "A" else "B"), cursor[:20] + cursor[21:], cursor + "A", cursor[1:]]
    for forged in FORGED + tampered:
        assert after_is_refused(client.get(f"/api/tasks?{urlencode({'sort': sort, 'after': forged})}", headers=user["headers"]))
    # Signed with the app's own key, values the service never makes are still refused.
    owner = user["user"]["id"]
    with app.app_context():
        fingerprint = decode_cursor(cursor, "after")[1]
        key = sort.lstrip("-")
        wrong_values = [True, [], {}, 3.5]  # and, but for a title key (any text), strings it never makes
        wrong_values += {"title": [], "priority": [-1, 3, None, "x"], "due_date": ["x", "2026-01-01T00:00:00+00:00"]}.get(
            key,
            [None, "x", "2026-01-01T00:00:00+00:00"],  # a due_date of null: a task without one
        )
        made = [encode_cursor("after", owner, fingerprint, wrong, 1) for wrong in wrong_values]
        made += [encode_cursor("after", owner, fingerprint, decode_cursor(cursor, "after")[2], task_id) for task_id in (2**63, -1, "1")]
        made += [encode_cursor("after", owner, fingerprint), encode_cursor("sync", owner, 1, 1, 0, 0)]
    for forged in made:
        response = client.get(f"/api/tasks?{urlencode({'sort': sort, 'after': forged})}", headers=user["headers"])
        assert after_is_refused(response), forged


def test_a_cursor_is_its_owners_alone(client, make_user, make_task):
    owner, other = make_user(), make_user()
    for _ in range(2):
        make_task(headers=owner["headers"])
        make_task(headers=other["headers"])
    cursor = pagination(listing(client, owner["headers"], page_size=1))["next_cursor"]
    response = client.get(f"/api/tasks?{urlencode({'after': cursor})}", headers=other["headers"])
    assert after_is_refused(response)
    assert response.json["errors"]["query"]["after"] == ["This cursor was made for another account."]


# Titles whose sort keys are long once escaped or lower-cased; a cursor carries the key.
LONG_TITLES = ["ж" * 149, "中" * 199, "é" * 199, "😀" * 199, "İ" * 199, "\x01" * 199, '"\\' * 99 + "a"]


@pytest.mark.parametrize("sort", ["title", "-title"])
@pytest.mark.parametrize("stem", LONG_TITLES, ids=range(len(LONG_TITLES)))
def test_the_service_takes_back_every_cursor_it_makes(client, auth_headers, make_task, sort, stem):
    made = {make_task(title=stem + end)["id"] for end in "ab"}
    parameters = client.get("/openapi.json").json["paths"]["/api/tasks"]["get"]["parameters"]
    maximum = next(p for p in parameters if p["name"] == "after")["schema"]["maxLength"]
    first = listing(client, auth_headers, sort=sort, page_size=1)
    cursor = pagination(first)["next_cursor"]
    assert len(cursor) <= maximum
    second = listing(client, auth_headers, sort=sort, page_size=1, after=cursor)
    assert {first.json[0]["id"], second.json[0]["id"]} == made
    assert "next_cursor" not in pagination(second)


def test_the_longest_cursor_fits_the_documented_bound(app, client, auth_headers, make_task):
    # The longest sort key once JSON-escaped: 200 control characters of six bytes each.
    for _ in range(2):
        make_task(title="\x01" * 200)
    cursor = pagination(listing(client, auth_headers, sort="title", page_size=1))["next_cursor"]
    assert 1600 < len(cursor) <= 2048
    assert listing(client, auth_headers, sort="title", page_size=1, after=cursor).json[0]["title"] == "\x01" * 200
