"""schemathesis hooks for scripts/fuzz.py: leave out bodies whose validity the OpenAPI
document cannot state, and requests whose validity depends on earlier ones."""

import re
import uuid

import schemathesis

VALID_KEY = re.compile(r"[!-~]([ -~]{0,253}[!-~])?")


@schemathesis.hook
def filter_body(context, body):
    """Tags: the schema can say "at most 20 items", the service allows at most 20 *distinct*
    after trimming and lower-casing. A longer list that folds to 20 or fewer is valid for the
    service and invalid for the schema, so neither answer would be a finding: it is not sent."""
    tags = body.get("tags") if isinstance(body, dict) else None
    if not isinstance(tags, list) or len(tags) <= 20 or not all(isinstance(tag, str) for tag in tags):
        return True
    return len({tag.strip().lower() for tag in tags}) > 20


@schemathesis.hook
def before_call(context, case, kwargs):
    """Runs before every request of every phase.

    Cursors (`after` on listings, `cursor` on sync) are opaque: only one the service made is
    valid, so a generated one is never valid data in the service's sense; they are left out
    (tests/test_keyset.py and tests/test_sync.py send malformed ones). A valid Idempotency-Key
    is made unique to its call: a key reused for another request is rightly a 422 and a replay
    answers with an earlier state, neither of which a schema can say (tests/test_idempotency.py
    covers both). A recurrence rule is sent as null: whether a rule is supported, can produce a
    date and has the due date it needs (on PATCH, perhaps the task's, so a recurring task would
    make a later `due_date: null` a 422) is beyond a schema (tests/test_recurrence.py)."""
    if case.query:
        for name in ("after", "cursor"):
            case.query.pop(name, None)
    body = case.body if isinstance(case.body, dict) else {}
    if isinstance(body.get("recurrence"), str):
        body["recurrence"] = None
    for name, value in list((case.headers or {}).items()):
        if name.lower() == "idempotency-key" and isinstance(value, str) and VALID_KEY.fullmatch(value):
            case.headers[name] = f"{value[:200]}.{uuid.uuid4().hex}"
