"""Keyset pages: next_cursor in X-Pagination, ?after= to go on in the same order and filters,
with no repeats and no skips while tasks come and go."""

import base64
import json
from datetime import datetime
from urllib.parse import urlencode

import pytest
from sqlalchemy import update

from todo_api import SORT_KEYS, Task, db

SORTS = [f"{direction}{key}" for key in SORT_KEYS for direction in ("", "-")]


def pagination(response):
    return json.loads(response.headers["X-Pagination"])


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


def b64(text):
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


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


def test_a_cursor_with_a_value_of_the_wrong_kind_is_a_422(client, auth_headers, make_task):
    for _ in range(2):
        make_task()
    for sort in SORTS:
        cursor = pagination(listing(client, auth_headers, page_size=1, sort=sort))["next_cursor"]
        fingerprint, _value, task_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        for wrong in (True, [], {}, "x" * 201, 3, -1, "2026-01-01T00:00:00+00:00", 1.5):
            forged = b64(json.dumps([fingerprint, wrong, task_id]))
            response = client.get(f"/api/tasks?{urlencode({'sort': sort, 'after': forged})}", headers=auth_headers)
            if response.status_code == 200:  # a title may be any short text, a priority any of three ranks
                assert (sort.lstrip("-"), type(wrong)) in {("title", str)}, (sort, wrong)
            else:
                assert response.status_code == 422 and list(response.json["errors"]["query"]) == ["after"], (sort, wrong)
        forged = b64(json.dumps([fingerprint, _value, 2**63]))
        assert client.get(f"/api/tasks?{urlencode({'sort': sort, 'after': forged})}", headers=auth_headers).status_code == 422
