"""The JSON API's contract at its edges: what /openapi.json promises for every route, and the input it
refuses before it reaches the database (each of these was a 500 on PostgreSQL, or an answer the spec did
not list, before the API was typed)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from nurture.models import AuditLog, ExternalEvent, WebhookEndpoint

TOO_BIG = str(2**31)  # one past the largest INTEGER id
ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorBody"}
HOOK = {"url": "http://127.0.0.1:9/hooks", "event_types": ["subscribed"]}


def count(world, model) -> int:  # type: ignore[no-untyped-def]
    from nurture.core.db import transaction

    with transaction(world) as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/subscribers/{}"),
        ("POST", "/api/v1/subscribers/{}/erase"),
        ("POST", "/api/v1/users/{}/deactivate"),
        ("POST", "/api/v1/users/1/tokens/{}/revoke"),
        ("GET", "/api/v1/webhooks/{}"),
        ("POST", "/api/v1/webhooks/1/deliveries/{}/replay"),
        ("POST", "/api/v1/deliveries/{}/mark-sent"),
    ],
)
def test_ids_beyond_the_integer_columns_are_404(api, method, path) -> None:  # type: ignore[no-untyped-def]
    answer = api("admin", method, path.format(TOO_BIG))
    assert answer.status_code == 404, answer.text
    assert answer.json()["error"]["code"] == "not_found"


def test_an_event_for_a_subscriber_id_no_row_can_have_is_a_400(api, world) -> None:  # type: ignore[no-untyped-def]
    body = {"subscriber_id": 2**31, "event": "contacted", "idempotency_key": "k"}
    answer = api("editor", "POST", "/api/v1/events", json=body)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid"
    assert count(world, ExternalEvent) == 0


@pytest.mark.parametrize(
    "raw",
    [
        b'{"url": "http://127.0.0.1:9/hooks", "event_types": ["subscribed"], "description": "a\\u0000b"}',
        b'{"url": "http://127.0.0.1:9/hooks", "event_types": ["subscribed"], "description": "\\ud800"}',
        b'{"url": "http://127.0.0.1:9/hooks", "event_types": ["subscribed"], "x\\u0000": 1}',
        b'{"url": "http://127.0.0.1:9/hooks", "event_types": ["subscribed"], "d": '
        + b"[" * 40
        + b"]" * 40
        + b"}",
    ],
)
def test_text_no_column_can_hold_and_absurd_nesting_are_400_and_write_nothing(api, world, raw) -> None:  # type: ignore[no-untyped-def]
    answer = api(
        "admin", "POST", "/api/v1/webhooks", content=raw, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "invalid"
    assert count(world, WebhookEndpoint) == 0 and count(world, AuditLog) == 0


def test_nul_in_the_query_is_400_and_in_the_path_404(api) -> None:  # type: ignore[no-untyped-def]
    query = api("viewer", "GET", "/api/v1/subscribers?q=a%00b")
    assert query.status_code == 400 and query.json()["error"]["code"] == "invalid"
    assert api("viewer", "GET", "/api/v1/deliveries/unknown?sequence=a%00b").status_code == 400
    path = api("viewer", "GET", "/api/v1/sequences/a%00b")
    assert path.status_code == 404 and path.json()["error"]["code"] == "not_found"


def test_bodies_keep_their_json_types(api) -> None:  # type: ignore[no-untyped-def]
    assert api("editor", "POST", "/api/v1/sequences/course/pause").status_code == 200
    for body in ({"policy": 1}, {"policy": ["shift"]}, {}, []):
        answer = api("editor", "POST", "/api/v1/sequences/course/resume", json=body)
        assert answer.status_code == 400, (body, answer.text)
    named = api("editor", "POST", "/api/v1/sequences/course/resume", json={})
    assert named.json()["error"]["message"].startswith("policy:")
    events = api(
        "editor", "POST", "/api/v1/events", json={"subscriber_id": "1", "event": "x", "idempotency_key": "k"}
    )
    assert events.status_code == 400 and "subscriber_id" in events.json()["error"]["message"]


def test_a_form_body_still_works_and_other_types_are_415(api) -> None:  # type: ignore[no-untyped-def]
    assert api("editor", "POST", "/api/v1/sequences/course/pause").status_code == 200
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    xml = api(
        "editor",
        "POST",
        "/api/v1/sequences/course/resume",
        content=b"<p/>",
        headers={"Content-Type": "text/xml"},
    )
    assert xml.status_code == 415 and xml.json()["error"]["code"] == "bad_request"
    resumed = api("editor", "POST", "/api/v1/sequences/course/resume", content=b"policy=shift", headers=form)
    assert resumed.status_code == 200 and resumed.json()["policy"] == "shift"


def test_a_body_over_the_cap_is_413(api) -> None:  # type: ignore[no-untyped-def]
    big = json.dumps({"emails": ["a@example.com"] * 4000}).encode()
    answer = api(
        "editor",
        "POST",
        "/api/v1/sequences/course/enroll",
        content=big,
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "bad_request"


def test_paths_no_route_has_answer_in_the_error_shape(api) -> None:  # type: ignore[no-untyped-def]
    missing = api("viewer", "GET", "/api/v1/nothing/here")
    assert missing.status_code == 404 and missing.json() == {
        "error": {"code": "not_found", "message": "Not Found"}
    }
    wrong = api("viewer", "DELETE", "/api/v1/sequences")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    assert "GET" in wrong.headers["allow"]


def test_the_spec_lists_every_body_answer_and_error(client) -> None:  # type: ignore[no-untyped-def]
    spec = client.get("/openapi.json").json()
    operations = [
        (method, path, operation)
        for path, item in spec["paths"].items()
        if path.startswith("/api/v1/")
        for method, operation in item.items()
    ]
    assert len(operations) >= 40
    for method, path, operation in operations:
        where = f"{method.upper()} {path}"
        responses = operation["responses"]
        assert "422" not in responses, where  # validation errors are 400s in the API's shape
        assert {"401", "503"} <= set(responses), where
        assert operation["security"] == [{"token": []}], where
        for status, response in responses.items():
            if status.startswith(("4", "5")):
                assert response["content"] == {"application/json": {"schema": ERROR_SCHEMA}}, (where, status)
            else:
                [content] = response["content"].values()
                assert content["schema"], (where, status)
        if path.endswith(("/pause", "/resume", "/schedule", "/enroll", "/draft", "/publish", "/archive")):
            assert "application/json" in operation["requestBody"]["content"], where
    csv = spec["paths"]["/api/v1/subscribers.csv"]["get"]["responses"]["200"]["content"]
    assert list(csv) == ["text/csv"]
    upload = spec["paths"]["/api/v1/subscribers/import"]["post"]["requestBody"]["content"]
    assert "text/csv" in upload
