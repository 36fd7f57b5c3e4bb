"""Pause, resume and schedule a whole sequence, with the real dispatcher and sender, on SQLite and PostgreSQL.

100 subscribers in four zones join over three days, so at the pause they stand at every step; the pause lasts
three days (across a weekend); resume with each policy; then the clock runs until everything is sent.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from nurture.core import clock
from nurture.core.db import transaction
from nurture.mail.transports import MemoryTransport
from nurture.models import Delivery, DeliveryStatus, Enrollment, Sequence, Step, Subscriber
from nurture.sequences.control import MIN_GAP, ControlError, ResumePolicy, lock, pause, resume, schedule
from nurture.sequences.schedule import next_open, resolve_zone
from nurture.sequences.timetable import window_of
from nurture.subscribers.enrollment import add_subscriber
from tests.support.helpers import dispatch_inline, make_sender

START = datetime(2026, 3, 2, 13, 0, tzinfo=UTC)  # a Monday
ZONES = ["America/New_York", "Europe/Berlin", "Asia/Tokyo", None]
RATE = 10  # per minute: low enough that 100 subscribers must be spread


class Run:
    """Moves the test clock from due time to due time, dispatching and sending in-process at each."""

    def __init__(self, factory: sessionmaker[Session], advance) -> None:  # type: ignore[no-untyped-def]
        self.factory = factory
        self.advance = advance
        self.sender = make_sender(factory, MemoryTransport())
        self.tick = 0
        self.sent: dict[int, int] = {}  # delivery id -> tick that sent it
        self.sent_at: dict[int, datetime] = {}

    def until(self, moment: datetime) -> None:
        while True:
            with transaction(self.factory) as session:
                due = session.scalar(
                    select(func.min(Delivery.due_at)).where(Delivery.status == DeliveryStatus.pending)
                )
            if due is not None and not isinstance(due, datetime):
                due = datetime.fromisoformat(str(due)).replace(tzinfo=UTC)
            if due is None or due > moment:
                break
            if due > clock.now():
                self.advance(due - clock.now())
            self.tick += 1
            dispatch_inline(self.factory, self.sender)
            with transaction(self.factory) as session:
                for delivery_id, sent_at in session.execute(
                    select(Delivery.id, Delivery.sent_at).where(Delivery.status == DeliveryStatus.sent)
                ):
                    if delivery_id not in self.sent:
                        self.sent[delivery_id] = self.tick
                        self.sent_at[delivery_id] = sent_at
        if moment > clock.now():
            self.advance(moment - clock.now())


def _rows(factory: sessionmaker[Session]) -> list[tuple[int, int, int, str, datetime]]:
    """(delivery id, enrollment id, step position, status, due_at) for every delivery."""
    with transaction(factory) as session:
        return [
            tuple(row)  # type: ignore[misc]
            for row in session.execute(
                select(Delivery.id, Delivery.enrollment_id, Step.position, Delivery.status, Delivery.due_at)
                .join(Step, Step.id == Delivery.step_id)
                .order_by(Delivery.enrollment_id, Step.position)
            )
        ]


def _populate(world: sessionmaker[Session], run: Run) -> None:
    for i in range(100):
        run.until(START + timedelta(minutes=43 * i))  # spread over three days
        with transaction(world) as session:
            add_subscriber(
                session, f"s{i}@example.com", timezone=ZONES[i % len(ZONES)], sequence_slug="course"
            )


@pytest.mark.parametrize("policy", [ResumePolicy.shift, ResumePolicy.send_due])
def test_pause_holds_and_resume_keeps_every_step_in_order(world, set_env, policy) -> None:  # type: ignore[no-untyped-def]
    set_env(resume_rate_per_minute=str(RATE))
    with clock.frozen(START) as advance:
        run = Run(world, advance)
        _populate(world, run)
        paused_at = START + timedelta(days=3, hours=7)  # Thursday
        run.until(paused_at)
        before = {row[0]: row for row in _rows(world)}
        positions = Counter(
            min(pos for (_, e, pos, status, _) in before.values() if e == enrollment and status == "pending")
            for enrollment in {row[1] for row in before.values()}
            if any(r[1] == enrollment and r[3] == "pending" for r in before.values())
        )
        assert len(positions) >= 3, f"subscribers should stand at several steps: {positions}"
        sent_before = len(run.sent)

        with transaction(world) as session:
            held = pause(session, lock(session, "course"))
        assert held == sum(1 for row in before.values() if row[3] == "pending")
        assert {row[3] for row in _rows(world)} <= {"sent", "held"}

        resumed_at = paused_at + timedelta(days=3)  # Sunday
        run.until(resumed_at)
        assert len(run.sent) == sent_before, "nothing may be sent while paused"

        with transaction(world) as session:
            result = resume(session, lock(session, "course"), policy, per_minute=RATE)
        assert result.resumed == held and result.cancelled == 0
        after = {row[0]: row for row in _rows(world)}
        assert {row[3] for row in after.values()} <= {"sent", "pending"}

        if policy is ResumePolicy.shift:
            _assert_shifted(world, before, after, timedelta(days=3), resumed_at)
        else:
            _assert_due_spread(before, after, resumed_at)

        run.until(resumed_at + timedelta(days=30))

    final = _rows(world)
    assert {row[3] for row in final} == {"sent"}, "nobody skips a step: every email is sent"
    assert len(final) == 400
    by_enrollment: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for delivery_id, enrollment, position, _, _ in final:
        by_enrollment[enrollment].append((position, delivery_id))
        assert not paused_at <= run.sent_at[delivery_id] < resumed_at
    for steps in by_enrollment.values():
        ticks = [run.sent[d] for _, d in sorted(steps)]
        assert ticks == sorted(ticks) and len(set(ticks)) == 4, "steps arrive in order, never two at once"
        times = [run.sent_at[d] for _, d in sorted(steps)]
        assert all(later - earlier >= MIN_GAP for earlier, later in pairwise(times))
    if policy is ResumePolicy.send_due:
        # What fell due during the pause goes out at the promised rate, not as a flood.
        released = [d for d, row in before.items() if row[3] == "pending" and row[4] <= resumed_at]
        per_minute = Counter(int(run.sent_at[d].timestamp() // 60) for d in released)
        assert max(per_minute.values()) <= RATE


def _assert_shifted(world, before, after, length: timedelta, now: datetime) -> None:  # type: ignore[no-untyped-def]
    """Each waiting email moved by the pause length (re-fitted into the window), never earlier."""
    with transaction(world) as session:
        sequence = session.scalar(select(Sequence).where(Sequence.slug == "course"))
        window = window_of(sequence.current_version)
        zones = {
            e.id: resolve_zone(e.subscriber.timezone, sequence.current_version.timezone)
            for e in session.scalars(select(Enrollment))
        }
    exact = 0
    for delivery_id, row in before.items():
        if row[3] != "pending":
            continue
        new_due = after[delivery_id][4]
        assert new_due >= row[4] + length or new_due >= now
        if new_due == next_open(row[4] + length, window, zones[row[1]]):
            exact += 1
    # Rows due (or within a minute of due) at the pause are spread by the limiter; all others shift exactly.
    assert exact >= 0.9 * sum(1 for r in before.values() if r[3] == "pending")


def _assert_due_spread(before, after, now: datetime) -> None:  # type: ignore[no-untyped-def]
    released = [after[d][4] for d, row in before.items() if row[3] == "pending" and row[4] <= now]
    assert released, "the pause should have let some emails fall due"
    assert all(due >= now for due in released)
    per_minute = Counter(int(due.timestamp() // 60) for due in released)
    assert max(per_minute.values()) <= RATE
    kept = [d for d, row in before.items() if row[3] == "pending" and row[4] > now + timedelta(days=2)]
    assert all(after[d][4] >= before[d][4] for d in kept)


def test_pause_twice_and_resume_unpaused_are_refused(world) -> None:  # type: ignore[no-untyped-def]
    with transaction(world) as session:
        pause(session, lock(session, "course"))
    with pytest.raises(ControlError) as info, transaction(world) as session:
        pause(session, lock(session, "course"))
    assert info.value.code == "conflict"
    with transaction(world) as session:
        resume(session, lock(session, "course"), ResumePolicy.send_due, per_minute=60)
    with pytest.raises(ControlError), transaction(world) as session:
        resume(session, lock(session, "course"), ResumePolicy.shift, per_minute=60)


def test_joining_a_paused_sequence_waits_and_leaving_during_a_pause_cancels(world) -> None:  # type: ignore[no-untyped-def]
    from nurture.subscribers.enrollment import unsubscribe

    with clock.frozen(START) as advance:
        with transaction(world) as session:
            add_subscriber(session, "early@example.com", sequence_slug="course")
            pause(session, lock(session, "course"))
        advance(timedelta(days=1))
        with transaction(world) as session:
            add_subscriber(session, "during@example.com", sequence_slug="course")
            early = session.scalar(select(Subscriber).where(Subscriber.email == "early@example.com"))
            unsubscribe(session, early, "test")
        # Leaving withdraws held emails at once, like pending ones.
        assert sorted(row[3] for row in _rows(world)) == ["cancelled"] * 4 + ["held"] * 4
        advance(timedelta(days=1))
        with transaction(world) as session:
            result = resume(session, lock(session, "course"), ResumePolicy.shift, per_minute=60)
        assert (result.resumed, result.cancelled) == (4, 0)
        # The one who joined a day into the pause is shifted by the day they waited, not the whole pause.
        during = [row[4] for row in _rows(world) if row[3] == "pending"]
        # (Due Tuesday 09:00 New York when they joined at 08:00; resumed a day later: Wednesday 09:00.)
        assert during[0] == datetime(2026, 3, 4, 14, 0, tzinfo=UTC)


def test_schedule_starts_everyone_at_activation(world) -> None:  # type: ignore[no-untyped-def]
    activate = datetime(2026, 3, 9, 14, 0, tzinfo=UTC)  # Monday 10:00 in New York
    with clock.frozen(START):
        with transaction(world) as session:
            add_subscriber(session, "before@example.com", sequence_slug="course")
            schedule(session, lock(session, "course"), activate)
            add_subscriber(session, "after@example.com", sequence_slug="course")
        rows = _rows(world)
        firsts = [row[4] for row in rows if row[2] == 1]
        assert firsts == [activate, activate]
        seconds = [row[4] for row in rows if row[2] == 2]
        assert seconds == [activate + timedelta(days=1)] * 2
        with pytest.raises(ControlError), transaction(world) as session:
            schedule(session, lock(session, "course"), START - timedelta(hours=1))
