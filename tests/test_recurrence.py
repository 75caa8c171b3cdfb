"""Recurring tasks: the RFC 5545 rules the contract supports, the next occurrence made when one
is completed (on every path that completes a task, once), and every refusal a 422 naming
`recurrence`. The expected dates are worked out here with the calendar module and plain date
arithmetic, not with dateutil (only the last tests, on the search, compare the service with
dateutil stepping the rule as written)."""

import calendar
import json
import re
from datetime import UTC, date, datetime, timedelta

import pytest
from dateutil.rrule import rrulestr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from todo_api import SEARCH_HORIZON, first_after, parse_recurrence

LINK = re.compile(r'^</api/tasks/(\d+)>; rel="next-occurrence"$')


def iso(moment):
    return moment.astimezone(UTC).isoformat()


def at(day, hour=9):
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def nth_weekday(year, month, weekday, n):
    """The n-th (from 1; -1 the last) `weekday` (0 = Monday) of a month."""
    days = [week[weekday] for week in calendar.monthcalendar(year, month) if week[weekday]]
    return date(year, month, days[n - 1 if n > 0 else n])


def add_months(year, month, count):
    index = year * 12 + month - 1 + count
    return index // 12, index % 12 + 1


def json_total(response):
    return json.loads(response.headers["X-Pagination"])["total"]


def linked(response):
    """The path of the next occurrence the answer links."""
    match = LINK.match(response.headers.get("Link", ""))
    assert match, response.headers.get("Link")
    return f"/api/tasks/{match.group(1)}"


def complete(client, headers, task, **extra_headers):
    """PATCH .../complete; returns (response, the next occurrence's JSON or None)."""
    response = client.patch(f"/api/tasks/{task['id']}/complete", headers={**headers, **extra_headers})
    assert response.status_code == 200, response.json
    if "Link" not in response.headers:
        return response, None
    following = client.get(linked(response), headers=headers)
    assert following.status_code == 200
    return response, following.json


def occurrences(client, headers, task, times):
    """Complete the task, then each next occurrence, `times` times; the due dates in turn."""
    dues = []
    for _ in range(times):
        _, task = complete(client, headers, task)
        assert task is not None
        dues.append(task["due_date"])
    return dues


# --- the dates ---


def test_daily_and_every_third_day(client, auth_headers, make_task):
    start = at(date(2026, 12, 30))
    daily = make_task(due_date=iso(start), recurrence="FREQ=DAILY")
    assert occurrences(client, auth_headers, daily, 3) == [iso(start + timedelta(days=n)) for n in (1, 2, 3)]
    third = make_task(due_date=iso(start), recurrence="FREQ=DAILY;INTERVAL=3")
    assert occurrences(client, auth_headers, third, 2) == [iso(start + timedelta(days=n)) for n in (3, 6)]


def test_weekly_on_given_days_and_every_other_week(client, auth_headers, make_task):
    tuesday = at(date(2026, 12, 1))
    assert tuesday.weekday() == 1
    task = make_task(due_date=iso(tuesday), recurrence="FREQ=WEEKLY;BYDAY=MO,WE")
    # Wednesday 2nd, Monday 7th, Wednesday 9th, Monday 14th.
    assert occurrences(client, auth_headers, task, 4) == [iso(tuesday + timedelta(days=n)) for n in (1, 6, 8, 13)]
    other = make_task(due_date=iso(tuesday), recurrence="INTERVAL=2;FREQ=WEEKLY")  # parts in any order
    assert occurrences(client, auth_headers, other, 2) == [iso(tuesday + timedelta(weeks=n)) for n in (2, 4)]


def test_monthly_keeps_the_day_and_bymonthday_31_skips_short_months(client, auth_headers, make_task):
    task = make_task(due_date=iso(at(date(2026, 11, 15))), recurrence="FREQ=MONTHLY")
    assert occurrences(client, auth_headers, task, 3) == [iso(at(date(*add_months(2026, 11, n), 15))) for n in (1, 2, 3)]
    last = make_task(due_date=iso(at(date(2027, 1, 31))), recurrence="FREQ=MONTHLY;BYMONTHDAY=31")
    months_of_31 = [(y, m) for y, m in (add_months(2027, 1, n) for n in range(1, 13)) if calendar.monthrange(y, m)[1] == 31]
    assert occurrences(client, auth_headers, last, 4) == [iso(at(date(y, m, 31))) for y, m in months_of_31[:4]]
    assert months_of_31[0] == (2027, 3)  # February and April skipped


def test_the_last_day_of_each_month_by_a_negative_monthday(client, auth_headers, make_task):
    task = make_task(due_date=iso(at(date(2027, 1, 31))), recurrence="FREQ=MONTHLY;BYMONTHDAY=-1")
    expected = [date(*add_months(2027, 1, n), calendar.monthrange(*add_months(2027, 1, n))[1]) for n in (1, 2, 3)]
    assert occurrences(client, auth_headers, task, 3) == [iso(at(day)) for day in expected]
    assert expected[0] == date(2027, 2, 28)


@pytest.mark.parametrize(
    "rule, weekday, n",
    [("FREQ=MONTHLY;BYDAY=-1FR", 4, -1), ("FREQ=MONTHLY;BYDAY=2TU", 1, 2), ("FREQ=MONTHLY;BYDAY=+1MO", 0, 1)],
)
def test_monthly_by_weekday_with_an_ordinal(client, auth_headers, make_task, rule, weekday, n):
    first = nth_weekday(2026, 12, weekday, n)
    task = make_task(due_date=iso(at(first)), recurrence=rule)
    expected = [nth_weekday(*add_months(2026, 12, k), weekday, n) for k in (1, 2, 3, 4)]
    assert occurrences(client, auth_headers, task, 4) == [iso(at(day)) for day in expected]


def test_pay_rent_on_the_last_friday(client, auth_headers, make_task):
    # "The last Friday" from a due date that is not one: the first last-Friday after it.
    task = make_task(due_date=iso(at(date(2027, 1, 3))), recurrence="FREQ=MONTHLY;BYDAY=-1FR")
    _, following = complete(client, auth_headers, task)
    assert following["due_date"] == iso(at(nth_weekday(2027, 1, 4, -1)))


def test_yearly_and_february_29(client, auth_headers, make_task):
    task = make_task(due_date=iso(at(date(2026, 3, 10))), recurrence="FREQ=YEARLY")
    assert occurrences(client, auth_headers, task, 2) == [iso(at(date(2027, 3, 10))), iso(at(date(2028, 3, 10)))]
    leap = make_task(due_date=iso(at(date(2028, 2, 29))), recurrence="FREQ=YEARLY")
    leap_years = [year for year in range(2029, 2110) if calendar.isleap(year)]
    assert occurrences(client, auth_headers, leap, 2) == [iso(at(date(year, 2, 29))) for year in leap_years[:2]]
    # Across 2100, which is not a leap year: 2096, then 2104.
    late = make_task(due_date=iso(at(date(2096, 2, 29))), recurrence="FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29")
    assert occurrences(client, auth_headers, late, 1) == [iso(at(date(2104, 2, 29)))]


def test_yearly_by_month_and_an_ordinal_weekday(client, auth_headers, make_task):
    # Thanksgiving: the fourth Thursday of November.
    task = make_task(due_date=iso(at(nth_weekday(2026, 11, 3, 4))), recurrence="FREQ=YEARLY;BYMONTH=11;BYDAY=4TH")
    assert occurrences(client, auth_headers, task, 2) == [iso(at(nth_weekday(year, 11, 3, 4))) for year in (2027, 2028)]


def test_the_time_of_day_and_its_fraction_are_kept(client, auth_headers, make_task):
    task = make_task(due_date="2026-12-01T17:45:30.250000Z", recurrence="FREQ=DAILY")
    _, following = complete(client, auth_headers, task)
    assert following["due_date"] == "2026-12-02T17:45:30.250000+00:00"


# --- COUNT and UNTIL ---


def test_count_counts_down_and_ends_the_series(client, auth_headers, make_task):
    task = make_task(due_date=iso(at(date(2026, 12, 1))), recurrence="FREQ=DAILY;COUNT=3")
    _, second = complete(client, auth_headers, task)
    assert second["recurrence"] == "FREQ=DAILY;COUNT=2"
    _, third = complete(client, auth_headers, second)
    assert third["recurrence"] == "FREQ=DAILY;COUNT=1" and third["due_date"] == iso(at(date(2026, 12, 3)))
    response, fourth = complete(client, auth_headers, third)
    assert response.json["completed"] is True and fourth is None
    listed = client.get("/api/tasks", headers=auth_headers)
    assert len(listed.json) == 3 and json_total(listed) == 3  # the total is the owner's counter: it counted them


def test_count_keeps_the_rest_of_the_rule_as_written(client, auth_headers, make_task):
    task = make_task(due_date=iso(at(date(2026, 12, 1))), recurrence="COUNT=10;FREQ=WEEKLY;BYDAY=TU")
    _, following = complete(client, auth_headers, task)
    assert following["recurrence"] == "COUNT=9;FREQ=WEEKLY;BYDAY=TU"


def test_until_as_a_date_includes_that_whole_day(client, auth_headers, make_task):
    task = make_task(due_date=iso(at(date(2026, 12, 1), hour=21)), recurrence="FREQ=DAILY;UNTIL=20261203")
    assert occurrences(client, auth_headers, task, 2) == [iso(at(date(2026, 12, d), hour=21)) for d in (2, 3)]
    last = client.get("/api/tasks?sort=-due_date&page_size=1", headers=auth_headers).json[0]
    assert complete(client, auth_headers, last)[1] is None  # the 4th is after UNTIL


def test_until_as_a_utc_date_time_is_inclusive(client, auth_headers, make_task):
    task = make_task(due_date=iso(at(date(2026, 12, 1))), recurrence="FREQ=DAILY;UNTIL=20261202T090000Z")
    _, following = complete(client, auth_headers, task)
    assert following["due_date"] == iso(at(date(2026, 12, 2)))
    assert complete(client, auth_headers, following)[1] is None
    early = make_task(due_date=iso(at(date(2026, 12, 1))), recurrence="FREQ=DAILY;UNTIL=20261202T085959Z")
    assert complete(client, auth_headers, early)[1] is None


# --- what the successor is, and once ---


def test_the_next_occurrence_copies_the_task_and_is_a_task_like_any_other(client, auth_headers, make_task):
    task = make_task(
        title="Water the plants", description="All of them", priority="high", tags=["home", "garden"],
        due_date="2026-12-01T08:00:00Z", recurrence="FREQ=DAILY;INTERVAL=3",
    )  # fmt: skip
    cursor = client.get("/api/tasks/changes", headers=auth_headers).json["cursor"]
    response, following = complete(client, auth_headers, task)
    assert response.json["completed"] is True and response.json["id"] == task["id"]
    assert following["id"] != task["id"]
    assert following | {"id": 0, "created_at": "", "updated_at": ""} == {
        "id": 0, "title": "Water the plants", "description": "All of them", "completed": False, "completed_at": None,
        "priority": "high", "due_date": "2026-12-04T08:00:00+00:00", "tags": ["garden", "home"],
        "created_at": "", "updated_at": "", "recurrence": "FREQ=DAILY;INTERVAL=3",
    }  # fmt: skip
    listed = client.get("/api/tasks?completed=false&tag=garden&sort=due_date", headers=auth_headers)
    assert [t["id"] for t in listed.json] == [following["id"]]
    assert json_total(listed) == 1
    changes = client.get(f"/api/tasks/changes?cursor={cursor}", headers=auth_headers).json["changes"]
    assert {change["id"] for change in changes} == {task["id"], following["id"]}
    full = client.get("/api/tasks/changes", headers=auth_headers).json["changes"]
    assert {change["id"] for change in full} == {task["id"], following["id"]}


def test_an_occurrence_makes_its_successor_once(client, auth_headers, make_task):
    task = make_task(due_date=iso(at(date(2026, 12, 1))), recurrence="FREQ=DAILY")
    assert complete(client, auth_headers, task)[1] is not None
    reopened, none = complete(client, auth_headers, task)
    assert reopened.json["completed"] is False and none is None
    again, none = complete(client, auth_headers, task)
    assert again.json["completed"] is True and none is None
    patched = client.patch(f"/api/tasks/{task['id']}", json={"completed": False}, headers=auth_headers)
    assert patched.status_code == 200
    patched = client.patch(f"/api/tasks/{task['id']}", json={"completed": True}, headers=auth_headers)
    assert patched.status_code == 200 and "Link" not in patched.headers
    assert len(client.get("/api/tasks", headers=auth_headers).json) == 2


def test_patch_and_put_with_completed_true_make_it_too_with_the_values_after_the_change(client, auth_headers, make_task):
    task = make_task(title="Old", due_date=iso(at(date(2026, 12, 1))), recurrence="FREQ=DAILY")
    response = client.patch(
        f"/api/tasks/{task['id']}", json={"title": "New", "completed": True, "recurrence": "FREQ=WEEKLY"}, headers=auth_headers
    )
    assert response.status_code == 200
    following = client.get(linked(response), headers=auth_headers).json
    assert (following["title"], following["recurrence"]) == ("New", "FREQ=WEEKLY")
    assert following["due_date"] == iso(at(date(2026, 12, 8)))

    other = make_task(title="Put me", due_date=iso(at(date(2026, 12, 1))), recurrence="FREQ=DAILY")
    body = {"title": "Put", "completed": True, "due_date": iso(at(date(2026, 12, 5))), "recurrence": "FREQ=MONTHLY", "tags": ["x"]}
    response = client.put(f"/api/tasks/{other['id']}", json=body, headers=auth_headers)
    assert response.status_code == 200
    following = client.get(linked(response), headers=auth_headers).json
    assert (following["title"], following["due_date"], following["tags"]) == ("Put", iso(at(date(2027, 1, 5))), ["x"])
    assert following["priority"] == "medium" and following["completed"] is False


def test_the_phase_ii_path_makes_it_too(app, client, auth_headers, make_task):
    user_id = client.get("/api/auth/me", headers=auth_headers).json["id"]
    task = make_task(due_date=iso(at(date(2026, 12, 1))), recurrence="FREQ=DAILY")
    response = client.patch(f"/api/{user_id}/tasks/{task['id']}/complete", headers=auth_headers)
    assert response.status_code == 200
    assert client.get(linked(response), headers=auth_headers).json["due_date"] == "2026-12-02T09:00:00+00:00"


def test_an_idempotent_replay_makes_no_second_successor_and_links_the_same_one(client, auth_headers, make_task):
    task = make_task(due_date=iso(at(date(2026, 12, 1))), recurrence="FREQ=DAILY")
    first, following = complete(client, auth_headers, task, **{"Idempotency-Key": "complete-once"})
    replayed, same = complete(client, auth_headers, task, **{"Idempotency-Key": "complete-once"})
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert replayed.headers["Link"] == first.headers["Link"] and same["id"] == following["id"]
    assert len(client.get("/api/tasks", headers=auth_headers).json) == 2


def test_a_task_created_completed_or_made_recurring_once_completed_makes_none(client, auth_headers, make_task):
    created = make_task(due_date=iso(at(date(2026, 12, 1))), recurrence="FREQ=DAILY", completed=True)
    assert created["completed"] is True
    task = make_task(due_date=iso(at(date(2026, 12, 1))), completed=True)
    response = client.patch(f"/api/tasks/{task['id']}", json={"recurrence": "FREQ=DAILY"}, headers=auth_headers)
    assert response.status_code == 200 and "Link" not in response.headers
    assert len(client.get("/api/tasks", headers=auth_headers).json) == 2


def test_rules_are_kept_as_sent_and_case_does_not_matter(client, auth_headers, make_task):
    task = make_task(due_date=iso(at(date(2026, 12, 1))), recurrence="freq=weekly;byday=mo")
    assert task["recurrence"] == "freq=weekly;byday=mo"
    _, following = complete(client, auth_headers, task)
    assert following["due_date"] == iso(at(date(2026, 12, 7)))


def test_a_recurrence_can_be_removed(client, auth_headers, make_task):
    task = make_task(due_date=iso(at(date(2026, 12, 1))), recurrence="FREQ=DAILY")
    response = client.patch(f"/api/tasks/{task['id']}", json={"recurrence": None, "due_date": None}, headers=auth_headers)
    assert response.status_code == 200 and response.json["recurrence"] is None
    assert complete(client, auth_headers, response.json)[1] is None


# --- refusals: 422 naming recurrence ---

REFUSED = [
    "",
    "RRULE:FREQ=DAILY",
    "FREQ=HOURLY",
    "FREQ=SECONDLY",
    "INTERVAL=2",
    "FREQ",
    "FREQ=",
    "FREQ=DAILY;",
    "FREQ=DAILY;;COUNT=2",
    "FREQ=DAILY;FREQ=WEEKLY",
    "FREQ=DAILY;COUNT=2;COUNT=3",
    "FREQ=DAILY;COUNT=2;UNTIL=20270101",
    "FREQ=DAILY;INTERVAL=0",
    "FREQ=DAILY;INTERVAL=1001",
    "FREQ=DAILY;INTERVAL=-1",
    "FREQ=DAILY;INTERVAL=1.5",
    "FREQ=DAILY;COUNT=0",
    "FREQ=DAILY;COUNT=1001",
    "FREQ=DAILY;UNTIL=2027-01-01",
    "FREQ=DAILY;UNTIL=20270230",
    "FREQ=DAILY;UNTIL=20270101T000000",
    "FREQ=DAILY;UNTIL=20270101T250000Z",
    "FREQ=WEEKLY;BYDAY=2TU",
    "FREQ=DAILY;BYDAY=1MO",
    "FREQ=MONTHLY;BYDAY=6MO",
    "FREQ=MONTHLY;BYDAY=0MO",
    "FREQ=YEARLY;BYDAY=54MO",
    "FREQ=YEARLY;BYMONTH=1;BYDAY=6MO",  # within a month: rrule itself fails on it (IndexError)
    "FREQ=YEARLY;BYDAY=20MO;BYMONTH=3",
    "FREQ=WEEKLY;BYDAY=XX",
    "FREQ=WEEKLY;BYDAY=MO,",
    "FREQ=MONTHLY;BYMONTHDAY=32",
    "FREQ=MONTHLY;BYMONTHDAY=0",
    "FREQ=MONTHLY;BYMONTHDAY=-32",
    "FREQ=WEEKLY;BYMONTHDAY=1",
    "FREQ=YEARLY;BYMONTH=13",
    "FREQ=YEARLY;BYMONTH=0",
    "FREQ=YEARLY;BYMONTH=-1",
    "FREQ=DAILY;BYSETPOS=1",
    "FREQ=DAILY;WKST=MO",
    "FREQ=DAILY;BYHOUR=9",
    "FREQ=YEARLY;BYYEARDAY=1",
    "FREQ=YEARLY;BYWEEKNO=1",
    "FREQ= DAILY",
    " FREQ=DAILY",
    "FREQ=DAILY\n",
    # Rules that never produce a date:
    "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=31",
    "FREQ=MONTHLY;BYMONTH=2;BYMONTHDAY=30",
    "FREQ=YEARLY;BYMONTH=4,6,9,11;BYMONTHDAY=31",
    "FREQ=MONTHLY;BYMONTH=2;BYMONTHDAY=-30",
    "FREQ=DAILY;INTERVAL=7;BYDAY=MO",  # from a Tuesday, every seventh day is a Tuesday
    "FREQ=MONTHLY;INTERVAL=12;BYMONTHDAY=31",  # due on February 1 (below): only Februaries
]


@pytest.mark.parametrize("rule", REFUSED)
def test_an_unsupported_or_impossible_rule_is_a_422_naming_recurrence(client, auth_headers, make_task, rule):
    body = {"title": "t", "due_date": "2026-12-01T09:00:00Z", "recurrence": rule}
    if rule == "FREQ=MONTHLY;INTERVAL=12;BYMONTHDAY=31":
        body["due_date"] = "2027-02-01T09:00:00Z"  # only Februaries: never a 31st
    response = client.post("/api/tasks", json=body, headers=auth_headers)
    assert response.status_code == 422, (rule, response.json)
    assert list(response.json["errors"]["json"]) == ["recurrence"], response.json
    task = make_task(due_date=body["due_date"])
    response = client.patch(f"/api/tasks/{task['id']}", json={"recurrence": rule}, headers=auth_headers)
    assert response.status_code == 422 and list(response.json["errors"]["json"]) == ["recurrence"]


@pytest.mark.parametrize("value", [5, True, ["FREQ=DAILY"], {"FREQ": "DAILY"}, "FREQ=DAILY;" + "COUNT=2;" * 100])
def test_a_recurrence_that_is_not_a_short_string_is_a_422(client, auth_headers, value):
    response = client.post("/api/tasks", json={"title": "t", "due_date": "2026-12-01T09:00:00Z", "recurrence": value}, headers=auth_headers)
    assert response.status_code == 422 and list(response.json["errors"]["json"]) == ["recurrence"]


def test_a_recurring_task_needs_a_due_date(client, auth_headers, make_task):
    response = client.post("/api/tasks", json={"title": "t", "recurrence": "FREQ=DAILY"}, headers=auth_headers)
    assert response.status_code == 422 and list(response.json["errors"]["json"]) == ["recurrence"]
    undated = make_task()
    response = client.patch(f"/api/tasks/{undated['id']}", json={"recurrence": "FREQ=DAILY"}, headers=auth_headers)
    assert response.status_code == 422 and list(response.json["errors"]["json"]) == ["recurrence"]
    recurring = make_task(due_date="2026-12-01T09:00:00Z", recurrence="FREQ=DAILY")
    response = client.patch(f"/api/tasks/{recurring['id']}", json={"due_date": None}, headers=auth_headers)
    assert response.status_code == 422 and list(response.json["errors"]["json"]) == ["recurrence"]
    response = client.put(f"/api/tasks/{recurring['id']}", json={"title": "no date", "recurrence": "FREQ=DAILY"}, headers=auth_headers)
    assert response.status_code == 422 and list(response.json["errors"]["json"]) == ["recurrence"]
    assert client.get(f"/api/tasks/{recurring['id']}", headers=auth_headers).json == recurring  # nothing changed


def test_another_users_recurring_task_is_a_404_and_makes_nothing(client, auth_headers, other_auth_headers, make_task):
    task = make_task(due_date="2026-12-01T09:00:00Z", recurrence="FREQ=DAILY")
    assert client.patch(f"/api/tasks/{task['id']}/complete", headers=other_auth_headers).status_code == 404
    assert client.get("/api/tasks", headers=other_auth_headers).json == []
    assert len(client.get("/api/tasks", headers=auth_headers).json) == 1


# --- the search: the same dates as dateutil's rrule stepping the rule as written ---
#
# rrule walks period by period, and a rule that never matches walks to the year 9999 (seconds
# of CPU); the service reasons about months and years instead. dateutil is the reference: every
# rule of the grammar, a due date anywhere. A due date before 9600 is checked against rrule
# 400k years later, where its walk is short: the Gregorian calendar repeats every 400 years
# (146,097 days: 4,800 months, 20,871 weeks), so rrule's dates move by exactly that much.

SHIFT = 400


def reference(rule, due):
    """rrule's first date after `due` within SEARCH_HORIZON, the rule starting at `due`."""
    start = due.replace(microsecond=0)
    end = start + SEARCH_HORIZON if start.year + 400 <= 9999 else datetime.max.replace(microsecond=0)
    found = rrulestr(rule, dtstart=start).replace(until=end).after(start)
    return None if found is None else found.replace(microsecond=due.microsecond)


def shifted_reference(rule, due):
    cycles = max(0, (9600 - due.year - 1) // SHIFT)
    late = reference(rule, due.replace(year=due.year + SHIFT * cycles))
    return None if late is None else late.replace(year=late.year - SHIFT * cycles)


WEEKDAY = st.sampled_from(["MO", "TU", "WE", "TH", "FR", "SA", "SU"])


@st.composite
def rules(draw):
    freq = draw(st.sampled_from(["DAILY", "WEEKLY", "MONTHLY", "YEARLY"]))
    parts = [f"FREQ={freq}"]
    if draw(st.booleans()):
        parts.append(f"INTERVAL={draw(st.one_of(st.integers(1, 14), st.integers(1, 1000)))}")
    if draw(st.booleans()):
        parts.append("BYMONTH=" + ",".join(map(str, draw(st.lists(st.integers(1, 12), min_size=1, max_size=12, unique=True)))))
    if freq != "WEEKLY" and draw(st.booleans()):
        day = st.one_of(st.integers(1, 31), st.integers(-31, -1))
        parts.append("BYMONTHDAY=" + ",".join(map(str, draw(st.lists(day, min_size=1, max_size=8, unique=True)))))
    if draw(st.booleans()):
        limit = {"MONTHLY": 5, "YEARLY": 5 if any(part.startswith("BYMONTH=") for part in parts) else 53}.get(freq)
        ordinal = st.one_of(st.just(""), st.integers(1, limit), st.integers(-limit, -1)) if limit else st.just("")
        items = st.tuples(ordinal, WEEKDAY).map(lambda item: f"{item[0]}{item[1]}")
        parts.append("BYDAY=" + ",".join(draw(st.lists(items, min_size=1, max_size=8, unique=True))))
    return ";".join(draw(st.permutations(parts)))


DUE = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59))


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(rule=rules(), due=DUE)
def test_the_next_date_is_rrules_own_for_any_rule_and_due_date(rule, due):
    assert first_after(parse_recurrence(rule)[0], due) == shifted_reference(rule, due)


# Rules whose dates are rare, or never come, and due dates at the ends of the calendar.
HARD = [
    ("FREQ=MONTHLY;BYDAY=5MO;BYMONTHDAY=1", "2026-01-01T00:00:00"),
    ("FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO", "2096-03-01T09:00:00"),
    ("FREQ=DAILY;BYMONTH=2;BYMONTHDAY=29;BYDAY=SU", "2096-03-01T09:00:00"),
    ("FREQ=DAILY;INTERVAL=14;BYDAY=TU", "2026-11-30T09:00:00"),
    ("FREQ=WEEKLY;INTERVAL=999;BYMONTH=2;BYDAY=MO", "2026-11-30T09:00:00"),
    ("FREQ=DAILY;INTERVAL=1000;BYMONTH=2;BYMONTHDAY=29", "2026-11-30T09:00:00.250000"),
    ("FREQ=YEARLY;INTERVAL=400", "2026-11-30T09:00:00"),  # exactly at the horizon: found
    ("FREQ=YEARLY;INTERVAL=401", "2026-11-30T09:00:00"),  # past it: none
    ("FREQ=YEARLY;INTERVAL=4", "2024-02-29T09:00:00"),
    ("FREQ=YEARLY;BYDAY=53FR", "0001-01-01T00:00:00"),
    ("FREQ=MONTHLY;BYMONTHDAY=-1", "9999-12-30T23:59:59"),
    ("FREQ=DAILY", "9999-12-31T00:00:00"),
    ("FREQ=MONTHLY;BYDAY=MO,2TU", "2026-01-01T00:00:00"),  # rrule: a day both a Monday and a second Tuesday
]


@pytest.mark.parametrize("rule, due", HARD)
def test_rare_and_impossible_rules_give_rrules_answer(rule, due):
    due = datetime.fromisoformat(due)
    assert first_after(parse_recurrence(rule)[0], due) == shifted_reference(rule, due)


def test_the_horizon_is_400_years(client, auth_headers):
    body = {"title": "t", "due_date": "2026-11-30T09:00:00Z"}
    assert client.post("/api/tasks", json={**body, "recurrence": "FREQ=YEARLY;INTERVAL=400"}, headers=auth_headers).status_code == 201
    refused = client.post("/api/tasks", json={**body, "recurrence": "FREQ=YEARLY;INTERVAL=401"}, headers=auth_headers)
    assert refused.status_code == 422 and "400 years" in refused.json["errors"]["json"]["recurrence"][0]


def test_the_rule_from_hardening_iii_is_refused(client, auth_headers, make_task):
    """Every day listed but one that cannot be: rrule walks ten thousand years to say so."""
    days = ",".join(f"{sign}{day}" for sign in ("", "-") for day in range(4, 29))
    byday = "MO,TU,WE,TH,FR,SA,SU," + ",".join(f"{n}{d}" for d in ("MO", "TU", "WE", "TH", "FR", "SA", "SU") for n in (5, -5))
    for freq in ("MONTHLY", "YEARLY"):
        rule = f"FREQ={freq};BYMONTH=1,2,3,4,5,6,7,8,9,10,11,12;BYDAY={byday};BYMONTHDAY={days}"
        body = {"title": "t", "due_date": "0001-01-01T00:00:00Z", "recurrence": rule}
        response = client.post("/api/tasks", json=body, headers=auth_headers)
        assert response.status_code == 422 and list(response.json["errors"]["json"]) == ["recurrence"]
        task = make_task(due_date="0001-01-01T00:00:00Z")
        response = client.patch(f"/api/tasks/{task['id']}", json={"recurrence": rule}, headers=auth_headers)
        assert response.status_code == 422 and list(response.json["errors"]["json"]) == ["recurrence"]
