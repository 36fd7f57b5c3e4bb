"""POST /api/v1/events and the goal figures of GET /api/v1/sequences/{slug}/stats, over HTTP."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from nurture.core import clock
from nurture.core.db import transaction
from nurture.models import Enrollment, ExternalEvent
from nurture.subscribers.enrollment import add_subscriber
from tests.support.helpers import dispatch_inline, make_sender

START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
GOAL_COURSE = """
slug: course
name: The course
goals: [contacted]
exit_events: [became-patient]
steps:
  - {key: hello, delay: 0, template: demo/hello}
  - {key: goodbye, delay: 1d, template: demo/goodbye}
"""


@pytest.fixture
def course(sequences_dir: Path) -> Path:
    """The staff fixtures' course, with a goal and an exit event."""
    path = sequences_dir / "course.yaml"
    path.write_text(GOAL_COURSE)
    return path


@pytest.fixture
def ana(world) -> int:  # type: ignore[no-untyped-def]
    with clock.frozen(START), transaction(world) as session:
        subscriber, _ = add_subscriber(session, "ana@example.com", sequence_slug="course")
        return subscriber.id


def test_auth_and_roles(api, ana) -> None:  # type: ignore[no-untyped-def]
    body = {"email": "ana@example.com", "event": "contacted", "idempotency_key": "k1"}
    assert api(None, "POST", "/api/v1/events", json=body).status_code == 401
    viewer = api("viewer", "POST", "/api/v1/events", json=body)
    assert viewer.status_code == 403 and viewer.json()["error"]["code"] == "forbidden"
    assert api("editor", "POST", "/api/v1/events", json=body).status_code == 200


def test_a_goal_through_the_api_ends_the_enrollment_once(api, world, ana) -> None:  # type: ignore[no-untyped-def]
    with clock.frozen(START):
        dispatch_inline(world, make_sender(world))
        body = {
            "subscriber_id": ana,
            "event": "contacted",
            "properties": {"channel": "phone"},
            "idempotency_key": "crm-42",
        }
        first = api("editor", "POST", "/api/v1/events", json=body)
        again = api("admin", "POST", "/api/v1/events", json=body)
    assert first.status_code == 200, first.text
    assert first.json()["replayed"] is False
    assert first.json()["goals_met"] == [
        {"sequence": "course", "enrollment_id": 1, "goal": "contacted", "step_key": "hello", "cancelled": 1}
    ]
    assert again.status_code == 200 and again.json() == {**first.json(), "replayed": True}
    with transaction(world) as session:
        assert session.scalar(select(func.count()).select_from(ExternalEvent)) == 1
        assert session.scalars(select(ExternalEvent)).one().properties == {"channel": "phone"}
        enrollment = session.scalars(select(Enrollment)).one()
        assert (enrollment.status, enrollment.end_reason) == ("completed", "goal")
    reused = api(
        "editor",
        "POST",
        "/api/v1/events",
        json={**body, "event": "became-patient"},
    )
    assert reused.status_code == 409 and reused.json()["error"]["code"] == "conflict"
    stats = api("viewer", "GET", "/api/v1/sequences/course/stats").json()
    hello = stats["steps"][0]
    assert (hello["sent"], hello["goals"], hello["conversion_rate"]) == (1, 1, 1.0)
    assert (hello["clicks"], hello["clickers"]) == (0, 0)
    assert stats["goals"] == 1 and stats["enrollments"] == {"completed": 1}


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"email": "nobody@example.com", "event": "contacted", "idempotency_key": "k"}, 404, "not_found"),
        ({"subscriber_id": 999999, "event": "contacted", "idempotency_key": "k"}, 404, "not_found"),
        ({"email": "ana@example.com", "event": "contacted"}, 400, "invalid"),
        ({"email": "ana@example.com", "event": "", "idempotency_key": "k"}, 400, "invalid"),
        ({"event": "contacted", "idempotency_key": "k"}, 400, "invalid"),
    ],
)
def test_bad_requests_get_json_errors_and_change_nothing(api, world, ana, body, status, code) -> None:  # type: ignore[no-untyped-def]
    response = api("editor", "POST", "/api/v1/events", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    with transaction(world) as session:
        assert session.scalar(select(func.count()).select_from(ExternalEvent)) == 0
        assert session.scalars(select(Enrollment)).one().status == "active"


def test_a_body_that_is_not_json_is_a_400(api, ana) -> None:  # type: ignore[no-untyped-def]
    response = api(
        "editor",
        "POST",
        "/api/v1/events",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_request"


def test_results_page_shows_clicks_goals_and_conversion(api, world, ana, signed_in) -> None:  # type: ignore[no-untyped-def]
    with clock.frozen(START):
        dispatch_inline(world, make_sender(world))
    api(
        "editor",
        "POST",
        "/api/v1/events",
        json={"subscriber_id": ana, "event": "contacted", "idempotency_key": "x"},
    )
    page = signed_in("viewer").get("/admin/sequences/course/results")
    assert page.status_code == 200, page.text
    assert "Goals after this email" in page.text and "100.0%" in page.text and "goals met: 1" in page.text
