"""Re-entry policies: what a confirmed signup does for someone already or previously in the sequence."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from nurture.core import clock
from nurture.core.config import get_settings
from nurture.core.db import transaction
from nurture.mail.transports import MemoryTransport
from nurture.models import ConsentRecord, Delivery, Enrollment, Event, Subscriber
from nurture.subscribers import consent, goals
from nurture.subscribers.enrollment import unsubscribe
from nurture.subscribers.signup import SignupForm, confirm, signup
from tests.support.helpers import dispatch_inline, make_sender, sync_sequences

START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
ORIGIN = consent.Origin("203.0.113.9", "pytest")
EMAIL = "ana@example.com"


def write_course(sequences_dir: Path, **policy: str) -> None:
    lines = "".join(f"{key}: {value}\n" for key, value in policy.items())
    (sequences_dir / "course.yaml").write_text(
        "slug: course\nname: The course\ngoals: [contacted]\n" + lines + "steps:\n"
        "  - {key: hello, delay: 0, template: demo/hello}\n"
        "  - {key: goodbye, delay: 1d, template: demo/goodbye}\n"
    )


def signup_and_confirm(factory: sessionmaker[Session]) -> None:
    form = SignupForm(EMAIL, None, None, "course", consent.CURRENT, "test")
    signup(factory, form, ORIGIN, get_settings())
    with transaction(factory) as session:
        record = session.scalars(select(ConsentRecord).order_by(ConsentRecord.id.desc())).first()
        assert record is not None
        confirm(session, record.public_id, ORIGIN)


def send_due(factory: sessionmaker[Session]) -> None:
    dispatch_inline(factory, make_sender(factory, MemoryTransport()))


def enrollments(factory: sessionmaker[Session]) -> list[tuple[str, str | None]]:
    with transaction(factory) as session:
        return [(e.status, e.end_reason) for e in session.scalars(select(Enrollment).order_by(Enrollment.id))]


def decisions(factory: sessionmaker[Session]) -> list[str]:
    with transaction(factory) as session:
        rows = session.scalars(select(Event).where(Event.kind == "enrollment_reentry").order_by(Event.id))
        return [e.detail["decision"] for e in rows]


def finish(factory: sessionmaker[Session], advance: Callable[[timedelta], None]) -> None:
    """Every email of the first enrollment sent."""
    send_due(factory)
    advance(timedelta(days=1, seconds=1))
    send_due(factory)


def reach_goal(factory: sessionmaker[Session], advance: Callable[[timedelta], None]) -> None:
    send_due(factory)
    goals.report_event(goals.parse_report({"email": EMAIL, "event": "contacted", "idempotency_key": "g"}))


def leave(factory: sessionmaker[Session], advance: Callable[[timedelta], None]) -> None:
    send_due(factory)
    with transaction(factory) as session:
        unsubscribe(session, session.scalars(select(Subscriber)).one(), "test")


def stay(factory: sessionmaker[Session], advance: Callable[[timedelta], None]) -> None:
    send_due(factory)


POLICIES = {
    "once": {},
    "after": {"reentry": "after", "reentry_cooldown": "30d"},
    "always": {"reentry": "always"},
}
ENDED = [("completed", finish, "finished"), ("goal", reach_goal, "goal")]


@pytest.fixture
def course(factory: sessionmaker[Session], sequences_dir: Path, set_env: Callable[..., None]) -> Callable:  # type: ignore[type-arg]
    set_env(confirm_daily_limit=100, signup_ip_limit=1000)

    def make(reentry: str, on_resignup: str) -> sessionmaker[Session]:
        write_course(sequences_dir, **POLICIES[reentry], on_resignup=on_resignup)
        sync_sequences(factory)
        return factory

    return make


@pytest.mark.parametrize("reentry", list(POLICIES))
@pytest.mark.parametrize(
    ("on_resignup", "decision", "expected"),
    [
        ("ignore", "ignored-already-enrolled", [("active", None)]),
        ("restart", "restarted", [("cancelled", "restarted"), ("active", None)]),
    ],
)
def test_signing_up_again_while_enrolled(course, reentry, on_resignup, decision, expected) -> None:  # type: ignore[no-untyped-def]
    world = course(reentry, on_resignup)
    with clock.frozen(START) as advance:
        signup_and_confirm(world)
        stay(world, advance)
        signup_and_confirm(world)
    assert enrollments(world) == expected
    assert decisions(world) == [decision]
    with transaction(world) as session:
        rows = session.execute(select(Delivery.enrollment_id, Delivery.status).order_by(Delivery.id)).all()
    if on_resignup == "restart":  # the old enrollment's unsent email is cancelled; the new one starts over
        assert [tuple(r) for r in rows] == [(1, "sent"), (1, "cancelled"), (2, "pending"), (2, "pending")]
    else:
        assert [tuple(r) for r in rows] == [(1, "sent"), (1, "pending")]


@pytest.mark.parametrize("on_resignup", ["ignore", "restart"])
@pytest.mark.parametrize(("situation", "ending", "reason"), ENDED)
@pytest.mark.parametrize(
    ("reentry", "decision"),
    [("once", "refused-once"), ("after", "refused-cooldown"), ("always", "reentered")],
)
def test_signing_up_again_after_the_enrollment_ended(  # type: ignore[no-untyped-def]
    course, on_resignup, situation, ending, reason, reentry, decision
) -> None:
    world = course(reentry, on_resignup)
    with clock.frozen(START) as advance:
        signup_and_confirm(world)
        ending(world, advance)
        advance(timedelta(days=2))
        signup_and_confirm(world)
    assert decisions(world) == [decision]
    after = [("completed", reason)] + ([("active", None)] if decision == "reentered" else [])
    assert enrollments(world) == after


@pytest.mark.parametrize(("situation", "ending", "reason"), ENDED)
def test_after_a_cooldown_refused_until_it_has_passed(course, situation, ending, reason) -> None:  # type: ignore[no-untyped-def]
    world = course("after", "ignore")
    with clock.frozen(START) as advance:
        signup_and_confirm(world)
        ending(world, advance)
        advance(timedelta(days=29, hours=23))
        signup_and_confirm(world)  # not yet
        assert enrollments(world) == [("completed", reason)]
        advance(timedelta(hours=2))
        signup_and_confirm(world)  # 30 days after it ended
    assert decisions(world) == ["refused-cooldown", "reentered"]
    assert enrollments(world) == [("completed", reason), ("active", None)]
    with transaction(world) as session:
        refused = session.scalars(
            select(Event).where(Event.kind == "enrollment_reentry").order_by(Event.id)
        ).first()
        assert refused is not None and refused.detail["eligible_at"]


@pytest.mark.parametrize("reentry", list(POLICIES))
@pytest.mark.parametrize(
    ("on_resignup", "decision", "expected"),
    [
        ("ignore", "continued", [("active", None)]),
        ("restart", "restarted", [("cancelled", "unsubscribed"), ("active", None)]),
    ],
)
def test_signing_up_again_after_unsubscribing(course, reentry, on_resignup, decision, expected) -> None:  # type: ignore[no-untyped-def]
    world = course(reentry, on_resignup)
    with clock.frozen(START) as advance:
        signup_and_confirm(world)
        leave(world, advance)
        advance(timedelta(days=3))
        signup_and_confirm(world)
    assert decisions(world) == [decision]
    assert enrollments(world) == expected
    with transaction(world) as session:
        assert session.scalars(select(Subscriber)).one().status == "active"
        pending = session.scalars(select(Delivery).where(Delivery.status == "pending")).all()
    # Continuing sends the remaining email; restarting sends the whole course again.
    assert len(pending) == (1 if on_resignup == "ignore" else 2)


def test_staff_removal_is_not_undone_by_a_signup(course) -> None:  # type: ignore[no-untyped-def]
    world = course("always", "restart")
    with clock.frozen(START) as advance:
        signup_and_confirm(world)
        stay(world, advance)
        with transaction(world) as session:
            enrollment = session.scalars(select(Enrollment)).one()
            goals.end_enrollment(session, enrollment, status="cancelled", reason="removed-by-staff")
        signup_and_confirm(world)
    assert decisions(world) == ["refused-removed-by-staff"]
    assert enrollments(world) == [("cancelled", "removed-by-staff")]
