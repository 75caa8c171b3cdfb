"""Listing: filters, search, sort orders and their ties, pagination with X-Pagination and Link."""

import re
from datetime import datetime

import pytest
from sqlalchemy import insert, literal, select, true

from helpers import pagination, recorded_selects
from todo_api import SORT_KEYS, Task, TaskTag, db, listing_statements


def ids(response):
    assert response.status_code == 200, response.json
    return [task["id"] for task in response.json]


@pytest.fixture
def listing(client, auth_headers):
    def get(query=""):
        return client.get(f"/api/tasks{query}", headers=auth_headers)

    return get


@pytest.fixture
def catalogue(make_task, client, auth_headers):
    """Six tasks covering every filter and sort key; returned by name, in creation order."""
    specs = {
        "report": dict(
            title="Write Report", description="quarterly numbers", priority="high", due_date="2026-12-01T09:00:00Z", tags=["work", "Q4"]
        ),
        "milk": dict(title="buy milk", description="2% fat", priority="low", tags=["home"]),
        "call": dict(title="Call Mum", description="", priority="medium", due_date="2026-11-25T18:00:00Z", tags=["home", "family"]),
        "taxes": dict(
            title="taxes", description="Send the REPORT to the accountant", priority="high", due_date="2026-11-30T00:00:00Z", tags=["money"]
        ),
        "gym": dict(title="gym_day", description="legs", priority="low", due_date="2026-12-24T00:00:00Z"),
        "café": dict(title="Café au lait", description="", priority="medium", tags=["home"]),
    }
    tasks = {name: make_task(**spec) for name, spec in specs.items()}
    for name in ("milk", "gym"):
        tasks[name] = client.patch(f"/api/tasks/{tasks[name]['id']}/complete", headers=auth_headers).json
    return tasks


def pick(catalogue, *names):
    return [catalogue[name]["id"] for name in names]


def test_default_listing_is_newest_first(listing, catalogue):
    assert ids(listing()) == pick(catalogue, "café", "gym", "taxes", "call", "milk", "report")


@pytest.mark.parametrize(
    "query, expected",
    [
        ("completed=true", ["gym", "milk"]),
        ("completed=false", ["café", "taxes", "call", "report"]),
        ("priority=high", ["taxes", "report"]),
        ("priority=low", ["gym", "milk"]),
        ("tag=home", ["café", "call", "milk"]),
        ("tag=HOME", ["café", "call", "milk"]),
        ("tag=q4", ["report"]),
        ("tag=%20Work%20", ["report"]),
        ("tag=nothing", []),
        ("q=report", ["taxes", "report"]),
        ("q=REPORT", ["taxes", "report"]),
        ("q=2%25", ["milk"]),  # % is a literal, not a wildcard
        ("q=_", ["gym"]),  # so is _
        ("q=CAFÉ", ["café"]),  # case folds beyond ASCII, on SQLite as on PostgreSQL
        ("q=mum", ["call"]),
        ("due_before=2026-12-01T09:00:00Z", ["taxes", "call"]),  # exclusive; no due date is excluded
        ("due_after=2026-12-01T09:00:00Z", ["gym"]),
        ("due_after=2026-11-25T18:00:00Z&due_before=2026-12-24T00:00:00Z", ["taxes", "report"]),
        ("due_after=2026-12-01T10:00:00%2B01:00", ["gym"]),  # an offset is honoured
        ("due_before=2026-11-30T00:00:01", ["taxes", "call"]),  # no offset: UTC
    ],
)
def test_each_filter(listing, catalogue, query, expected):
    response = listing(f"?{query}")
    assert ids(response) == pick(catalogue, *expected)
    assert pagination(response)["total"] == len(expected)


@pytest.mark.parametrize(
    "query, expected",
    [
        ("completed=false&priority=high", ["taxes", "report"]),
        ("completed=false&tag=home", ["café", "call"]),
        ("tag=home&q=milk", ["milk"]),
        ("priority=high&q=report&due_before=2026-12-01T00:00:00Z", ["taxes"]),
        ("completed=true&priority=high", []),
    ],
)
def test_filters_combine(listing, catalogue, query, expected):
    assert ids(listing(f"?{query}")) == pick(catalogue, *expected)


@pytest.mark.parametrize(
    "sort, expected",
    [
        ("created_at", ["report", "milk", "call", "taxes", "gym", "café"]),
        ("-created_at", ["café", "gym", "taxes", "call", "milk", "report"]),
        ("due_date", ["call", "taxes", "report", "gym", "milk", "café"]),  # no due date last
        ("-due_date", ["gym", "report", "taxes", "call", "café", "milk"]),  # last here too; ties by id desc
        ("priority", ["milk", "gym", "call", "café", "report", "taxes"]),  # low < medium < high; ties by id
        ("-priority", ["taxes", "report", "café", "call", "gym", "milk"]),
        ("title", ["milk", "café", "call", "gym", "taxes", "report"]),  # case-insensitive
        ("-title", ["report", "taxes", "gym", "call", "café", "milk"]),
    ],
)
def test_each_sort_in_both_directions(listing, catalogue, sort, expected):
    assert ids(listing(f"?sort={sort}")) == pick(catalogue, *expected)


def test_sort_by_updated_at(listing, catalogue, client, auth_headers):
    client.patch(f"/api/tasks/{catalogue['report']['id']}", json={"title": "Write the report"}, headers=auth_headers)
    # milk and gym were completed after every task was created; report changed last of all.
    assert ids(listing("?sort=-updated_at")) == pick(catalogue, "report", "gym", "milk", "café", "taxes", "call")
    assert ids(listing("?sort=updated_at")) == pick(catalogue, "call", "taxes", "café", "milk", "gym", "report")


def test_ties_are_broken_by_id_in_the_sort_direction(app, listing, make_task):
    tasks = [make_task(title="Same", priority="low") for _ in range(4)]
    with app.app_context():  # the same instant for all, as when they are created within one clock tick
        db.session.execute(db.update(Task).values(created_at=datetime(2026, 1, 1)))
        db.session.commit()
    ascending = [task["id"] for task in tasks]
    assert ids(listing("?sort=created_at")) == ascending
    assert ids(listing("?sort=-created_at")) == ascending[::-1]
    assert ids(listing("?sort=title")) == ascending
    assert ids(listing("?sort=-title")) == ascending[::-1]
    assert ids(listing("?sort=due_date")) == ascending
    assert ids(listing("?sort=-due_date")) == ascending[::-1]


def test_filter_sort_and_page_combine(listing, catalogue):
    first = listing("?tag=home&sort=title&page_size=2")
    assert ids(first) == pick(catalogue, "milk", "café")
    meta = pagination(first)
    cursor = meta.pop("next_cursor")
    assert meta == {"total": 3, "total_pages": 2, "first_page": 1, "last_page": 2, "page": 1, "next_page": 2}
    second = listing("?tag=home&sort=title&page_size=2&page=2")
    assert ids(second) == pick(catalogue, "call")
    assert pagination(second) == {"total": 3, "total_pages": 2, "first_page": 1, "last_page": 2, "page": 2, "previous_page": 1}
    by_cursor = listing(f"?tag=home&sort=title&page_size=2&after={cursor}")
    assert ids(by_cursor) == pick(catalogue, "call")
    assert pagination(by_cursor) == {"total": 3, "total_pages": 2}


def test_pagination_headers(listing, make_task):
    for n in range(45):
        make_task(title=f"task {n:02}")
    response = listing("?page=2&sort=title")
    assert [task["title"] for task in response.json] == [f"task {n:02}" for n in range(20, 40)]
    meta = pagination(response)
    assert isinstance(meta.pop("next_cursor"), str)
    assert meta == {
        "total": 45, "total_pages": 3, "first_page": 1, "last_page": 3, "page": 2, "previous_page": 1, "next_page": 3,
    }  # fmt: skip
    links = dict(reversed(part.strip().split("; ")) for part in response.headers["Link"].split(","))
    assert links == {
        'rel="first"': "</api/tasks?page=1&sort=title>",
        'rel="prev"': "</api/tasks?page=1&sort=title>",
        'rel="next"': "</api/tasks?page=3&sort=title>",
        'rel="last"': "</api/tasks?page=3&sort=title>",
    }
    last = listing("?page=3&sort=title")
    assert len(last.json) == 5
    assert 'rel="next"' not in last.headers["Link"]


def test_default_page_size_is_20_and_at_most_100(listing, make_task):
    for n in range(25):
        make_task(title=f"t{n}")
    assert len(listing().json) == 20
    assert len(listing("?page_size=100").json) == 25


def test_empty_result_and_page_past_the_end(listing, make_task):
    empty = listing()
    assert empty.json == []
    assert pagination(empty) == {"total": 0, "total_pages": 0}
    assert "Link" not in empty.headers
    make_task()
    past = listing("?page=5")
    assert past.status_code == 200
    assert past.json == []
    assert pagination(past)["total"] == 1


def test_largest_page_number_is_accepted(listing, make_task):
    make_task()
    response = listing("?page=2147483647&page_size=100")
    assert response.status_code == 200
    assert response.json == []


@pytest.mark.parametrize(
    "query, name",
    [
        ("page=0", "page"),
        ("page=-1", "page"),
        ("page=2147483648", "page"),
        ("page=" + "9" * 30, "page"),
        ("page=1.5", "page"),
        ("page=abc", "page"),
        ("page_size=0", "page_size"),
        ("page_size=101", "page_size"),
        ("page_size=1000000", "page_size"),
        ("completed=yes", "completed"),
        ("completed=1", "completed"),
        ("completed=TRUE", "completed"),
        ("priority=urgent", "priority"),
        ("sort=name", "sort"),
        ("sort=--title", "sort"),
        ("sort=priority,title", "sort"),
        ("due_before=soon", "due_before"),
        ("due_after=2026-02-30T00:00:00Z", "due_after"),
        ("tag=", "tag"),
        ("tag=" + "x" * 51, "tag"),
        ("q=", "q"),
        ("q=nul%00byte", "q"),
        ("colour=red", "colour"),
        ("page=1&page=2", "page"),
        ("tag=a&tag=b", "tag"),
    ],
)
def test_bad_query_parameters_are_a_422_naming_them(listing, query, name):
    response = listing(f"?{query}")
    assert response.status_code == 422
    assert response.json["message"] == "Validation failed."
    assert name in response.json["errors"]["query"]


def test_listing_loads_tags_without_a_query_per_task(app, listing, make_task):
    for n in range(5):
        make_task(title=f"t{n}", tags=[f"a{n}", "b"])
    with recorded_selects(app) as selects:
        response = listing("?tag=b&page_size=2")
    assert [task["tags"] for task in response.json] == [["a4", "b"], ["a3", "b"]]
    # the caller's session and user, the page, and the count
    assert len(selects) == 3, selects


def test_unfiltered_total_follows_creates_and_deletes_without_counting(app, client, listing, make_task, auth_headers, other_auth_headers):
    kept = [make_task(title=f"t{n}") for n in range(3)]
    make_task(headers=other_auth_headers)  # another user's task is not in this total
    gone = make_task()
    assert client.delete(f"/api/tasks/{gone['id']}", headers=auth_headers).status_code == 204
    assert client.delete(f"/api/tasks/{gone['id']}", headers=auth_headers).status_code == 404  # no second decrement
    refused = client.post("/api/tasks", json={"title": ""}, headers=auth_headers)
    assert refused.status_code == 422  # nothing stored, nothing counted
    with recorded_selects(app) as selects:
        response = listing("?page_size=2")
    assert response.status_code == 200
    assert pagination(response)["total"] == len(kept) == 3
    assert len(response.json) == 2
    # the caller's session and user (with the task counter), and the page: no COUNT
    assert len(selects) == 2, selects
    assert not any("count(" in s.lower() for s in selects), selects
    # A filter counts what matches.
    assert pagination(listing("?q=t1"))["total"] == 1


@pytest.fixture(scope="module")
def planner_data():
    """Rows for two users, the one whose listing is planned owning 5% of them, so that planners
    cost plans as they would in use."""
    return [
        {"user_id": user, "title": f"t{n}", "title_key": f"t{n}", "search_key": "", "description": "", "completed": n % 2 == 0,
         "priority": n % 3, "due_date": datetime(2026, 1, 1 + n % 28) if n % 4 else None, "tags": [], "version": 1,
         "created_at": datetime(2026, 1, 1), "updated_at": datetime(2026, 1, 1)}
        for user, count in ((1, 100), (2, 1900)) for n in range(count)
    ]  # fmt: skip


@pytest.mark.parametrize("sort", [f"{direction}{key}" for key in SORT_KEYS for direction in ("", "-")])
@pytest.mark.parametrize("filters", [frozenset(), frozenset({"tag"}), frozenset({"completed", "q"})])
def test_every_listing_order_reads_an_index_without_sorting(app, make_user, planner_data, sort, filters):
    """The query plan reads one user's slice of an index in the requested order, with no sort
    step, and never a table scan. (PostgreSQL, costing by its statistics, may sort the matches of
    a filter among a user's few tasks: with a filter, only the scan is ruled out there.)"""
    page, _ = listing_statements(filters, sort)
    values = {"user_id": 1, "completed": True, "priority": 2, "tag": "common", "q": "%x%", "due_before": datetime(2030, 1, 1)}
    statement = page.limit(20).offset(0).params(**{name: values[name] for name in page.compile().params if name in values})
    users = [make_user()["user"]["id"], make_user()["user"]["id"]]
    with app.app_context(), db.engine.begin() as connection:
        connection.execute(Task.__table__.insert(), [{**row, "user_id": users[row["user_id"] - 1]} for row in planner_data])
        # Every task tagged "common" (the filtered tag), one in twenty "x" too.
        for tag, condition in (("common", true()), ("x", Task.id % 20 == 0)):
            tagged = select(Task.id, Task.user_id, literal(tag)).where(Task.user_id.in_(users), condition)
            connection.execute(insert(TaskTag).from_select(["task_id", "user_id", "tag"], tagged))
        connection.exec_driver_sql("ANALYZE")
        statement = statement.params(user_id=users[0])
        sql = str(statement.compile(dialect=db.engine.dialect, compile_kwargs={"literal_binds": True}))
        if db.engine.dialect.name == "postgresql":
            plan = "\n".join(connection.exec_driver_sql("EXPLAIN " + sql.replace("%", "%%")).scalars())
            assert "Seq Scan" not in plan, plan  # never other users' rows, of tasks or of tags
            ordered = r"Index Scan (Backward )?using ix_tasks_user_\w+ on tasks.*\n.*Index Cond: .*user_id = "
            if not filters:
                assert "Sort" not in plan, plan
                assert re.search(ordered, plan), plan
        else:
            plan = "\n".join(row[-1] for row in connection.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
            assert "TEMP B-TREE" not in plan, plan
            assert not re.search(r"\bSCAN (tasks|task_tags)\b", plan), plan  # searches only, by index or key
            assert re.search(r"SEARCH tasks USING INDEX ix_tasks_user_\w+ \(user_id=\?", plan), plan


# What counts each filter's matches reads, whatever the account's size: an index alone (a tag:
# its rows, less those of the user's tasks in the trash, found by the trash's index).
COUNT_PLANS = {
    "tag": ("COVERING INDEX ix_task_tags_user_tag", r"Index Only Scan using ix_task_tags_user_tag"),
    "completed": ("COVERING INDEX ix_tasks_user_completed", r"Index Only Scan using ix_tasks_user_completed"),
    "priority": ("COVERING INDEX ix_tasks_user_priority", r"Index Only Scan using ix_tasks_user_priority"),
    # PostgreSQL reads (due_date IS NULL) = false as due_date IS NOT NULL, which no index leads
    # with: it reads the user's slice of one of their indexes.
    "due_after": ("INDEX ix_tasks_user_due", r"Index (Only )?Scan using ix_tasks_user_\w+"),
    "due_before": ("INDEX ix_tasks_user_due", r"Index (Only )?Scan using ix_tasks_user_\w+"),
}


@pytest.mark.parametrize("name", COUNT_PLANS)
def test_a_filtered_total_is_counted_from_an_index(app, make_user, planner_data, name):
    """Counting a filter's matches reads one user's slice of an index (SQLite: the index alone),
    not the table's rows: a total costs little per match."""
    _, count = listing_statements(frozenset({name}), "-created_at")
    values = {"completed": True, "priority": 2, "tag": "common", "due_before": datetime(2026, 1, 20), "due_after": datetime(2026, 1, 5)}
    users = [make_user()["user"]["id"], make_user()["user"]["id"]]
    with app.app_context(), db.engine.begin() as connection:
        connection.execute(Task.__table__.insert(), [{**row, "user_id": users[row["user_id"] - 1]} for row in planner_data])
        tagged = select(Task.id, Task.user_id, literal("common")).where(Task.user_id.in_(users))
        connection.execute(insert(TaskTag).from_select(["task_id", "user_id", "tag"], tagged))
        connection.exec_driver_sql("ANALYZE")
        params = {key: value for key, value in {**values, "user_id": users[0]}.items() if key in count.compile().params}
        sql = str(count.params(**params).compile(dialect=db.engine.dialect, compile_kwargs={"literal_binds": True}))
        sqlite_plan, postgres_plan = COUNT_PLANS[name]
        if db.engine.dialect.name == "postgresql":
            connection.exec_driver_sql("SET LOCAL enable_seqscan = off")  # a small table: else a scan is as cheap
            connection.exec_driver_sql("SET LOCAL enable_bitmapscan = off")
            plan = "\n".join(connection.exec_driver_sql("EXPLAIN " + sql).scalars())
            assert re.search(postgres_plan + r".*\n.*Index Cond: .*user_id = ", plan), plan
            assert "Seq Scan" not in plan, plan
        else:
            searches = [row[-1] for row in connection.exec_driver_sql("EXPLAIN QUERY PLAN " + sql) if row[-1].startswith("SEARCH")]
            assert re.fullmatch(rf"SEARCH (tasks|task_tags) USING {sqlite_plan}\w* \(user_id=\? AND .*\)", searches[0]), searches
            trash = [
                "SEARCH tasks USING COVERING INDEX ix_tasks_user_deleted (user_id=? AND deleted_at>?)",
                "SEARCH task_tags USING INDEX sqlite_autoindex_task_tags_1 (task_id=? AND tag=?)",
            ]
            assert searches[1:] == (trash if name == "tag" else []), searches


def test_a_tags_total_leaves_out_tasks_in_the_trash(client, listing, make_task, auth_headers):
    tasks = [make_task(title=f"t{n}", tags=["work"]) for n in range(3)]
    assert client.delete(f"/api/tasks/{tasks[0]['id']}", headers=auth_headers).status_code == 204
    response = listing("?tag=work&page_size=1")  # a full page: the total is counted
    assert response.status_code == 200
    assert [task["id"] for task in response.json] == [tasks[2]["id"]]
    assert pagination(response)["total"] == 2
    restored = client.post(f"/api/trash/{tasks[0]['id']}/restore", headers=auth_headers)
    assert restored.status_code == 200
    assert pagination(listing("?tag=work&page_size=1"))["total"] == 3


def test_a_due_range_is_counted_before_its_page(app, listing, make_task):
    """A due range matching none of many tasks: its count says so, and no page is read."""
    for n in range(3):
        make_task(title=f"t{n}")
    with recorded_selects(app) as selects:
        response = listing("?due_after=2020-01-01T00:00:00Z&sort=-created_at")
    assert response.status_code == 200
    assert response.json == [] and pagination(response)["total"] == 0
    assert len(selects) == 2 and "count(" in selects[-1].lower(), selects  # the session and user; the count


@pytest.mark.parametrize("value", ["２", "2_0", " 2", "+2", "2.0", "0x2", "٢", ""])
@pytest.mark.parametrize("name", ["page", "page_size"])
def test_page_numbers_are_ascii_digits_only(client, auth_headers, name, value):
    response = client.get(f"/api/tasks?{name}={value}", headers=auth_headers)
    assert response.status_code == 422
    assert response.json["errors"]["query"][name] == ["Not a valid integer."]
    assert client.get(f"/api/tasks?{name}=2", headers=auth_headers).status_code == 200


def test_search_matches_the_title_or_the_description_each_on_its_own(client, auth_headers, make_task):
    task = make_task(title="ab", description="cd")
    make_task(title="other", description="")
    search = lambda q: client.get("/api/tasks", query_string={"q": q}, headers=auth_headers)  # noqa: E731
    for q in ("\x1f", "b\x1fc", "bc", "b c"):
        response = search(q)
        assert response.status_code == 200 and response.json == [], q
    assert [t["id"] for t in search("B").json] == [task["id"]]
    assert [t["id"] for t in search("C").json] == [task["id"]]
