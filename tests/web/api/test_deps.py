"""The staff JSON API: token auth, the role matrix, JSON errors, and each action's effect in the database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from nurture.core import clock
from nurture.core.db import transaction
from nurture.models import AuditLog, Delivery, Sequence, Subscriber, Suppression
from nurture.subscribers.enrollment import add_subscriber, unsubscribe
from nurture.subscribers.suppression import erased_key
from tests.support.helpers import dispatch_inline, make_sender

START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)  # Monday 10:00 in New York

READS = [
    ("GET", "/api/v1/sequences", None),
    ("GET", "/api/v1/sequences/course", None),
    ("GET", "/api/v1/sequences/course/stats", None),
    ("GET", "/api/v1/subscribers?q=example", None),
]
WRITES = [
    ("POST", "/api/v1/sequences/course/pause", None),
    ("POST", "/api/v1/sequences/course/schedule", {"activate_at": "2030-01-01T09:00:00Z"}),
    ("POST", "/api/v1/sequences/course/enroll", {"emails": ["nobody@example.com"]}),
]


@pytest.mark.parametrize(("method", "path", "body"), READS + WRITES)
def test_no_or_bad_token_is_401_json(api, client, method, path, body) -> None:  # type: ignore[no-untyped-def]
    for headers in ({}, {"Authorization": "Bearer nrt_not-a-real-token"}, {"Authorization": "Basic eDp5"}):
        response = client.request(method, path, headers=headers, json=body)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("role", ["viewer", "editor", "admin"])
def test_role_matrix(api, role) -> None:  # type: ignore[no-untyped-def]
    for method, path, body in READS:
        assert api(role, method, path, json=body).status_code == 200, path
    for method, path, body in WRITES:
        response = api(role, method, path, json=body)
        if role == "viewer":
            assert response.status_code == 403, path
            assert response.json()["error"]["code"] == "forbidden"
        else:
            assert response.status_code == 200, (path, response.text)
        if path.endswith("/pause") and response.status_code == 200:
            assert (
                api(role, "POST", "/api/v1/sequences/course/resume", json={"policy": "shift"}).status_code
                == 200
            )


def test_pause_resume_schedule_change_the_database_and_are_audited(api, world) -> None:  # type: ignore[no-untyped-def]
    with clock.frozen(START):
        with transaction(world) as session:
            add_subscriber(session, "ana@example.com", sequence_slug="course")
        paused = api("editor", "POST", "/api/v1/sequences/course/pause")
        assert paused.status_code == 200 and paused.json()["held"] == 4
        assert api("editor", "POST", "/api/v1/sequences/course/pause").status_code == 409
        with transaction(world) as session:
            assert set(session.scalars(select(Delivery.status))) == {"held"}
        bad = api("editor", "POST", "/api/v1/sequences/course/resume", json={"policy": "later"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid"
        resumed = api("editor", "POST", "/api/v1/sequences/course/resume", json={"policy": "send_due"})
        assert resumed.status_code == 200 and resumed.json()["resumed"] == 4
        for value in ("tomorrow", "2030-01-01T09:00:00", "2020-01-01T09:00:00Z", 5):
            response = api("editor", "POST", "/api/v1/sequences/course/schedule", json={"activate_at": value})
            assert response.status_code == 400, value
        scheduled = api(
            "editor",
            "POST",
            "/api/v1/sequences/course/schedule",
            json={"activate_at": "2026-03-09T14:00:00Z"},
        )
        assert scheduled.status_code == 200 and scheduled.json()["status"] == "scheduled"
        detail = api("viewer", "GET", "/api/v1/sequences/course").json()
        assert detail["status"] == "scheduled" and [s["key"] for s in detail["step_list"]] == [
            "hello",
            "middle",
            "later",
            "goodbye",
        ]
        assert (
            detail["step_list"][1]["delay"] == "1d"
            and detail["window"]["description"] == "Mon-Fri 09:00-17:00"
        )
    with transaction(world) as session:
        actions = [(a.actor, a.action) for a in session.scalars(select(AuditLog).order_by(AuditLog.id))]
    assert actions == [
        ("editor@staff.example.com", "sequence.pause"),
        ("editor@staff.example.com", "sequence.resume"),
        ("editor@staff.example.com", "sequence.schedule"),
    ]


def test_unknown_sequence_and_subscriber_are_404_json(api) -> None:  # type: ignore[no-untyped-def]
    for path in ("/api/v1/sequences/nope", "/api/v1/subscribers/999999", "/api/v1/subscribers/abc"):
        response = api("viewer", "GET", path)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert api("editor", "POST", "/api/v1/sequences/nope/pause").status_code == 404
    garbage = api(
        "editor",
        "POST",
        "/api/v1/sequences/course/resume",
        content=b"{nope",
        headers={"Content-Type": "application/json"},
    )
    assert garbage.status_code == 400 and garbage.json()["error"]["code"] == "bad_request"


def test_enroll_skips_unsubscribed_suppressed_erased_and_already_enrolled(api, world, sequences_dir) -> None:  # type: ignore[no-untyped-def]
    (sequences_dir / "other.yaml").write_text(
        "slug: other\nname: Other\nsteps:\n  - {key: hello, delay: 0, template: demo/hello}\n"
    )
    from tests.support.helpers import sync_sequences

    sync_sequences(world)
    with transaction(world) as session:
        for name in ("fresh", "gone", "blocked", "erased", "inside"):
            add_subscriber(
                session, f"{name}@example.com", sequence_slug="other" if name == "inside" else None
            )
        unsubscribe(
            session, session.scalar(select(Subscriber).where(Subscriber.email == "gone@example.com")), "t"
        )
        session.add(Suppression(email="blocked@example.com", reason="manual"))
        session.add(Suppression(email=erased_key("erased@example.com"), reason="erased"))
    emails = [f"{n}@example.com" for n in ("fresh", "gone", "blocked", "erased", "inside", "ghost")] + [
        "bad@"
    ]
    response = api("editor", "POST", "/api/v1/sequences/other/enroll", json={"emails": emails})
    assert response.status_code == 200, response.text
    body = response.json()
    assert {
        k: body[k] for k in ("enrolled", "already_enrolled", "unsubscribed", "suppressed", "not_found")
    } == {
        "enrolled": 1,
        "already_enrolled": 1,
        "unsubscribed": 1,
        "suppressed": 2,
        "not_found": 1,
    }
    assert body["invalid"] == ["bad@"]
    again = api("editor", "POST", "/api/v1/sequences/course/enroll", json={"all_active": True})
    assert again.json()["enrolled"] == 2 and again.json()["suppressed"] == 2  # fresh and inside
    both = api("editor", "POST", "/api/v1/sequences/course/enroll", json={"all_active": True, "emails": []})
    assert both.status_code == 400
    past = {"all_active": True, "start_at": "2001-01-01T00:00:00Z"}
    assert api("editor", "POST", "/api/v1/sequences/other/enroll", json=past).status_code == 400


def test_subscriber_explain_log_and_stats(api, world) -> None:  # type: ignore[no-untyped-def]
    with clock.frozen(START) as advance:
        with transaction(world) as session:
            add_subscriber(session, "ana@example.com", first_name="Ana", sequence_slug="course")
            add_subscriber(session, "bo@example.com", sequence_slug="course")
        sender = make_sender(world)
        dispatch_inline(world, sender)
        with transaction(world) as session:
            unsubscribe(
                session, session.scalar(select(Subscriber).where(Subscriber.email == "bo@example.com")), "t"
            )
        advance(timedelta(days=1))
        dispatch_inline(world, sender)
    found = api("viewer", "GET", "/api/v1/subscribers?email=ANA@example.com").json()["subscribers"]
    assert [s["email"] for s in found] == ["ana@example.com"]
    assert api("viewer", "GET", "/api/v1/subscribers?q=ana").json()["subscribers"][0]["first_name"] == "Ana"
    assert api("viewer", "GET", "/api/v1/subscribers?email=not-an-email").status_code == 400
    bo = api("viewer", "GET", "/api/v1/subscribers?email=bo@example.com").json()["subscribers"][0]
    detail = api("viewer", "GET", f"/api/v1/subscribers/{bo['id']}").json()
    outcomes = [(d["step"], d["status"], d["skip_reason"]) for d in detail["enrollments"][0]["deliveries"]]
    assert outcomes[0] == ("hello", "sent", None)
    assert outcomes[1:] == [(k, "cancelled", "unsubscribed") for k in ("middle", "later", "goodbye")]
    stats = api("viewer", "GET", "/api/v1/sequences/course/stats").json()
    by_key = {s["key"]: s for s in stats["steps"]}
    assert by_key["hello"]["sent"] == 2 and by_key["hello"]["unsubscribed_after"] == 1
    assert by_key["middle"]["sent"] == 1 and by_key["middle"]["cancelled"] == 1
    assert by_key["later"]["scheduled"] == 1
    listing = api("viewer", "GET", "/api/v1/sequences").json()["sequences"]
    assert listing[0]["standing"] == {"hello": 0, "middle": 0, "later": 1, "goodbye": 0}
    with transaction(world) as session:
        assert session.scalar(select(Sequence.status)) == "active"


def test_openapi_lists_the_api_and_not_the_admin_pages(client) -> None:  # type: ignore[no-untyped-def]
    paths = client.get("/openapi.json").json()["paths"]
    assert "/api/v1/sequences/{slug}/resume" in paths and "/api/v1/subscribers/{subscriber_id}" in paths
    assert not any(path.startswith("/admin") for path in paths)
