"""Claims and leases on real databases."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from nurture.core import clock
from nurture.core.config import get_settings
from nurture.core.db import engine_of, transaction
from nurture.delivery import leases, receipts
from nurture.delivery.dispatch import claim_due, claim_room, dispatch_once, reap_expired
from nurture.models import Delivery, Enrollment, Event, SendReceipt
from tests.support.helpers import deliveries, statuses, subscribe, sync_sequences

START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)


@pytest.fixture
def world(factory, three_step):  # type: ignore[no-untyped-def]
    sync_sequences(factory)
    return factory


def test_claims_only_due_pending_rows_and_only_once(world):  # type: ignore[no-untyped-def]
    with clock.frozen(START) as advance:
        subscribe(world, "a@example.com", "three-step")
        subscribe(world, "b@example.com", "three-step")
        with transaction(world) as session:
            first = claim_due(session, limit=100, lease_seconds=60)
        with transaction(world) as session:
            again = claim_due(session, limit=100, lease_seconds=60)
        advance(timedelta(seconds=1))
        with transaction(world) as session:
            later = claim_due(session, limit=1, lease_seconds=60)
    assert len(first.ids) == 2 and again.ids == []
    assert len(later.ids) == 1  # the limit holds
    rows = {d.id: d for d in deliveries(world)}
    for delivery_id in first.ids:
        assert rows[delivery_id].status == "queued"
        assert rows[delivery_id].claim_token == first.token
        assert rows[delivery_id].lease_until == START + timedelta(seconds=60)


def test_reaper_returns_lost_claims_and_holds_rows_that_died_sending(world):  # type: ignore[no-untyped-def]
    with clock.frozen(START) as advance:
        subscribe(world, "a@example.com", "three-step")
        subscribe(world, "b@example.com", "three-step")
        with transaction(world) as session:
            claim = claim_due(session, limit=100, lease_seconds=60)
            session.execute(update(Delivery).where(Delivery.id == claim.ids[1]).values(status="sending"))
        with transaction(world) as session:
            early = reap_expired(session, policy="hold")
        advance(timedelta(seconds=61))
        with transaction(world) as session:
            late = reap_expired(session, policy="hold")
    assert (early.returned, early.ambiguous) == (0, 0)
    assert (late.returned, late.ambiguous) == (1, 1)
    rows = {d.id: d for d in deliveries(world)}
    assert rows[claim.ids[0]].status == "pending" and rows[claim.ids[0]].claim_token is None
    assert rows[claim.ids[1]].status == "ambiguous"


def test_a_broker_failure_releases_the_claim_at_once(world):  # type: ignore[no-untyped-def]
    def broken_broker(token: str, ids: list[int]) -> None:
        raise ConnectionError("broker down")

    with clock.frozen(START):
        subscribe(world, "a@example.com", "three-step")
        with pytest.raises(ConnectionError):
            dispatch_once(broken_broker, factory=world)
    assert statuses(world) == ["pending", "pending", "pending"]


def test_one_delivery_per_enrollment_and_step_is_enforced_by_the_database(world):  # type: ignore[no-untyped-def]
    with clock.frozen(START):
        subscribe(world, "a@example.com", "three-step")
    existing = deliveries(world)[0]
    with pytest.raises(IntegrityError), transaction(world) as session:
        session.add(
            Delivery(
                enrollment_id=existing.enrollment_id,
                step_id=existing.step_id,
                subscriber_id=existing.subscriber_id,
                due_at=START,
            )
        )
    assert len(deliveries(world)) == 3


def test_enrolling_twice_keeps_one_enrollment(world):  # type: ignore[no-untyped-def]
    subscribe(world, "a@example.com", "three-step")
    subscribe(world, "a@example.com", "three-step")
    with transaction(world) as session:
        assert session.scalar(select(func.count()).select_from(Enrollment)) == 1
    assert len(deliveries(world)) == 3


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_concurrent_dispatchers_on_postgres_never_claim_the_same_row(world):  # type: ignore[no-untyped-def]
    with clock.frozen(START):
        for n in range(150):
            subscribe(world, f"p{n}@example.com", "three-step")
    claimed: list[list[int]] = []
    barrier = threading.Barrier(4)

    def dispatcher() -> None:
        barrier.wait()
        mine: list[int] = []
        while True:
            with transaction(world) as session:
                claim = claim_due(session, limit=7, lease_seconds=60, now=START + timedelta(seconds=5))
            if not claim.ids:
                break
            mine.extend(claim.ids)
        claimed.append(mine)

    threads = [threading.Thread(target=dispatcher) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for mine in claimed for i in mine]
    assert len(every) == 450 == len(set(every))
    assert sum(1 for mine in claimed if mine) >= 2  # they really ran side by side


def test_claim_room_counts_waiting_claims_and_what_the_rate_limit_lets_out_in_half_a_lease(set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(claim_limit=10_000, lease_seconds=300, smtp_rate="0")
    assert claim_room(get_settings(), 0) == 10_000
    assert claim_room(get_settings(), 9_000) == 1_000  # backpressure: claims still waiting count
    set_env(smtp_rate="10/s")
    assert claim_room(get_settings(), 0) == 1_500  # 10/s x 150 s: all sent before the lease runs out
    assert claim_room(get_settings(), 1_400) == 100


def test_a_tick_claims_no_more_than_the_room_left_by_waiting_claims(world, set_env):  # type: ignore[no-untyped-def]
    set_env(claim_limit=3)
    handed: list[list[int]] = []
    with clock.frozen(START):
        for number in range(5):
            subscribe(world, f"r{number}@example.com", "three-step")
        assert dispatch_once(lambda token, ids: handed.append(ids), factory=world).claimed == 3
        assert (
            dispatch_once(lambda token, ids: handed.append(ids), factory=world).claimed == 0
        )  # still queued
    assert sum(len(ids) for ids in handed) == 3
    assert sorted(statuses(world)).count("queued") == 3


def test_a_tick_that_used_all_its_room_hands_its_middle_batch_over_as_the_refill(world, set_env):  # type: ignore[no-untyped-def]
    """Without it throughput stops at claim_limit / dispatch_interval: the queue would run dry until the
    next beat, however fast the workers are."""
    set_env(claim_limit=5, batch_size=1)
    plain: list[list[int]] = []
    refilling: list[list[int]] = []
    with clock.frozen(START):
        for number in range(7):
            subscribe(world, f"r{number}@example.com", "three-step")
        result = dispatch_once(
            lambda token, ids: plain.append(ids),
            factory=world,
            refill_with=lambda token, ids: refilling.append(ids),
        )
    assert result.claimed == 5 and result.full
    assert len(plain) == 4 and len(refilling) == 1  # batches of one: the third of five is the refill
    assert refilling[0] not in plain


def test_a_tick_claims_in_slices_and_hands_each_over_as_soon_as_it_commits(world, set_env, monkeypatch):  # type: ignore[no-untyped-def]
    """The first batch goes while the rest of the room is still unclaimed; the slice that fills the room
    carries the refill."""
    from nurture.delivery import dispatch

    monkeypatch.setattr(dispatch, "CLAIM_SLICE", 3)
    set_env(claim_limit=8, batch_size=1)
    queued_when_handed: list[int] = []
    refilling: list[int] = []

    def enqueue(token: str, ids: list[int]) -> None:
        queued_when_handed.append(statuses(world).count("queued"))

    def refill(token: str, ids: list[int]) -> None:
        enqueue(token, ids)
        refilling.extend(ids)

    with clock.frozen(START):
        for number in range(10):
            subscribe(world, f"r{number}@example.com", "three-step")
        result = dispatch_once(enqueue, factory=world, refill_with=refill)
    assert result.claimed == 8 and result.full
    assert queued_when_handed == [3, 3, 3, 6, 6, 6, 8, 8]  # slices of 3, 3 and 2, each handed on commit
    assert len(refilling) == 1 and statuses(world).count("queued") == 8


def test_a_tick_that_took_everything_due_asks_for_no_refill(world, set_env):  # type: ignore[no-untyped-def]
    set_env(claim_limit=5, batch_size=1)
    refilling: list[list[int]] = []
    with clock.frozen(START):
        for number in range(3):
            subscribe(world, f"r{number}@example.com", "three-step")
        result = dispatch_once(
            lambda token, ids: None, factory=world, refill_with=lambda token, ids: refilling.append(ids)
        )
    assert result.claimed == 3 and not result.full and refilling == []


def test_the_refill_batch_runs_the_next_tick_when_it_is_done(world, set_env):  # type: ignore[no-untyped-def]
    """Through Celery's own API (eager): one beat's tick sends everything due, though each tick may claim
    only four, because each full claim's middle batch runs the next tick."""
    from nurture import tasks
    from nurture.celery_app import app
    from nurture.mail.transports import MEMORY_OUTBOX

    set_env(claim_limit=4, batch_size=1, frequency_cap_hours=0)
    MEMORY_OUTBOX.outbox.clear()
    tasks.process_sender.cache_clear()
    app.conf.task_always_eager = True
    try:
        with clock.frozen(START):
            for number in range(11):
                subscribe(world, f"r{number}@example.com", "three-step")
            tasks.dispatch_due()
    finally:
        app.conf.task_always_eager = False
        tasks.process_sender.cache_clear()
    assert sorted(m.recipient for m in MEMORY_OUTBOX.outbox) == sorted(f"r{n}@example.com" for n in range(11))
    assert statuses(world).count("sent") == 11


@pytest.mark.parametrize("policy", ["resend", "hold"])
def test_the_reaper_settles_a_dead_attempt_by_its_receipts(world, policy):  # type: ignore[no-untyped-def]
    """A worker died after the server took two emails of a group of five (their receipts are written) and
    while the third was on the wire: two sent, one unknown, two never handed over."""
    with clock.frozen(START) as advance:
        for n in range(5):
            subscribe(world, f"r{n}@example.com", "three-step")
        with transaction(world) as session:
            claim = claim_due(session, limit=100, lease_seconds=60)
            ids = claim.ids
            attempt = f"{claim.token}.dead"
            assert leases.DELIVERIES.begin(session, claim.token, ids, attempt=attempt, lease_seconds=60)
        writer = receipts.ReceiptWriter(engine_of(world))
        for delivery_id in ids[:2]:
            writer.write(delivery_id, f"<m{delivery_id}@example.com>", clock.now())
        writer.close()
        advance(timedelta(seconds=61))
        with transaction(world) as session:
            reaped = reap_expired(session, policy=policy)
    assert (reaped.settled.accepted, reaped.settled.unknown, reaped.settled.returned) == (
        ids[:2],
        ids[2:3],
        ids[3:],
    )
    rows = {d.id: d for d in deliveries(world)}
    assert [rows[i].status for i in ids] == [
        "sent",
        "sent",
        "pending" if policy == "resend" else "ambiguous",
    ] + ["pending"] * 2
    assert rows[ids[0]].message_id == f"<m{ids[0]}@example.com>"
    assert [rows[i].attempts for i in ids] == [1, 1, 1, 0, 0]  # only the unknown one counts an attempt
    with transaction(world) as session:
        sent = sorted(session.scalars(select(Event.delivery_id).where(Event.kind == "sent")))
        unknown = session.scalars(select(Event).where(Event.kind == "ambiguous")).all()
        left = session.scalar(select(func.count()).select_from(SendReceipt))
    assert sent == ids[:2] and left == 0
    assert [(e.delivery_id, e.detail["resolution"]) for e in unknown] == [
        (ids[2], "resent" if policy == "resend" else "held")
    ]
