"""Search the recurrence grammar for the rules that cost the most CPU to judge.

Hypothesis generates rules the contract's parts allow (valid or not) and due dates anywhere in
the calendar, and steers towards the slowest with `target`: each rule is parsed and its next
date looked for, as a POST with that rule does. Prints the slowest found, with their CPU time.

    .venv/bin/python scripts/recurrence_cost.py --examples 3000
"""

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path

from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from todo_api import RecurrenceError, first_after, parse_recurrence  # noqa: E402

DAYS = ["MO", "TU", "WE", "TH", "FR", "SA", "SU"]


@st.composite
def rules(draw):
    """Rules of the contract's parts, with long lists and any ordinals: valid or refused."""
    freq = draw(st.sampled_from(["DAILY", "WEEKLY", "MONTHLY", "YEARLY"]))
    parts = [f"FREQ={freq}"]
    if draw(st.booleans()):
        parts.append(f"INTERVAL={draw(st.integers(1, 1000))}")
    if draw(st.booleans()):
        parts.append("BYMONTH=" + ",".join(map(str, draw(st.lists(st.integers(1, 12), min_size=1, max_size=12)))))
    if draw(st.booleans()):
        day = st.one_of(st.integers(1, 31), st.integers(-31, -1))
        parts.append("BYMONTHDAY=" + ",".join(map(str, draw(st.lists(day, min_size=1, max_size=62)))))
    if draw(st.booleans()):
        ordinal = st.one_of(st.just(""), st.integers(-53, 53).filter(bool))
        items = st.tuples(ordinal, st.sampled_from(DAYS)).map(lambda item: f"{item[0]}{item[1]}")
        parts.append("BYDAY=" + ",".join(draw(st.lists(items, min_size=1, max_size=60))))
    return ";".join(draw(st.permutations(parts)))[:500]


def judge(rule, due):
    """What a POST does with a rule: parse it, then look for its next date."""
    try:
        return first_after(parse_recurrence(rule)[0], due)
    except RecurrenceError:
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--show", type=int, default=5)
    args = parser.parse_args()
    seen = []

    @settings(max_examples=args.examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(rule=rules(), due=st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)))
    def cost(rule, due):
        started = time.process_time()
        judge(rule, due)
        spent = time.process_time() - started
        seen.append((spent, rule, due))
        target(spent)

    cost()
    seen.sort(reverse=True)
    spent = sorted(item[0] for item in seen)
    print(f"{len(seen)} rules; CPU per rule: median {spent[len(spent) // 2] * 1000:.2f} ms, max {spent[-1] * 1000:.2f} ms")
    for seconds, rule, due in seen[: args.show]:
        print(f"{seconds * 1000:7.2f} ms  due {due.isoformat()}  {rule}")


if __name__ == "__main__":
    main()
