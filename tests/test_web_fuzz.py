"""The HTTP API fuzzed from its own description (web/openapi.json) by schemathesis, in-process over WSGI with the
real model and a real Redis: valid and invalid requests alike get a documented status and a body that matches
the description, never a 500 and never a traceback. Bounded: a few examples an operation, no deadline.

schemathesis's pytest plugin needs pytest's private node ids, which pytest 9 no longer has, so each operation
runs as a plain Hypothesis test of the cases schemathesis generates."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings, strategies as st
from schemathesis import GenerationMode

from web.app import HERE, create_app
from web.config import WebConfig

UNLIMITED = "100000 per minute"  # the limits are tested in test_web_app.py; here every request reaches the API
OPERATIONS = [(r.ok().method.upper(), r.ok().path)
              for r in schemathesis.openapi.from_path(HERE / "openapi.json").get_all_operations()]


@pytest.fixture(scope="module")
def api(tiny_bundle, redis_server):
    app = create_app(tiny_bundle, redis_server.url, "f" * 40, WebConfig(rate_limit=UNLIMITED), reads=UNLIMITED)
    return schemathesis.openapi.from_wsgi("/api/openapi.json", app)


def no_traceback(ctx, response, case) -> None:
    """Whatever the status, the body tells nothing of the server's insides."""
    text = response.text or ""
    assert "Traceback" not in text and 'File "' not in text, text[:300]


@pytest.mark.parametrize("method, path", OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_every_operation_answers_fuzzed_requests_as_documented(api, method, path):
    operation = api[path][method]
    cases = operation.as_strategy(GenerationMode.POSITIVE)
    if method == "POST":  # a body to break: wrong types, unknown fields, not JSON at all
        cases = st.one_of(cases, operation.as_strategy(GenerationMode.NEGATIVE))

    @given(cases)
    @settings(max_examples=10 if method == "POST" else 2, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case):
        case.call_and_validate(additional_checks=[no_traceback])

    fuzz()


def test_feedback_takes_a_turn_written_as_a_whole_float(api):
    """JSON has one kind of number, and the description says integer: 2.0 is turn 2 (as settings take it)."""
    case = api["/api/feedback"]["POST"].Case(body={"turn": 2.0, "vote": "up"}, media_type="application/json")
    assert case.call().status_code == 404  # no such reply in this new conversation: but not a 400
