"""Conditional steps (``only_if``): each kind of condition checked when the step comes due, on SQLite and
PostgreSQL; a false one skips the step with the reason ``condition``, and later steps keep their due times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from nurture.core import clock
from nurture.core.config import get_settings
from nurture.core.db import transaction
from nurture.mail.templates import EmailTemplates
from nurture.mail.transports import MemoryTransport
from nurture.models import Delivery, Event, LinkClick, Sequence, Step, Subscriber, TrackedLink
from nurture.sequences.loader import SequenceValidationError, load_file
from nurture.sequences.results import sequence_stats
from nurture.sequences.variants import Variant, assign
from tests.support.helpers import dispatch_inline, make_sender, subscribe, sync_sequences

START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
COND = """
slug: cond
name: Conditional
steps:
  - key: welcome
    delay: 0
    template: demo/hello
    variants: [{key: a}, {key: b}]
  - {key: clickers, delay: 1h, template: demo/middle, only_if: {clicked: welcome}}
  - {key: quiet, delay: 1h, template: demo/middle, only_if: {not_clicked: welcome}}
  - {key: doctors, delay: 1h, template: demo/goodbye, only_if: {attribute: {role: doctor}}}
  - {key: as-a, delay: 1h, template: demo/goodbye, only_if: {variant: {welcome: a}}}
  - {key: as-b, delay: 1h, template: demo/goodbye, only_if: {variant: {welcome: b}}}
  - {key: last, delay: 1h, template: demo/goodbye}
"""
STEPS = ["welcome", "clickers", "quiet", "doctors", "as-a", "as-b", "last"]


@pytest.fixture
def cond_world(factory, sequences_dir: Path):  # type: ignore[no-untyped-def]
    (sequences_dir / "cond.yaml").write_text(COND)
    sync_sequences(factory)
    return factory


def _by_person(factory) -> dict[str, dict[str, tuple[str, str | None, datetime]]]:  # type: ignore[no-untyped-def]
    """email -> step key -> (status, skip reason, due time)."""
    found: dict[str, dict[str, tuple[str, str | None, datetime]]] = {}
    with transaction(factory) as session:
        for email, key, status, reason, due in session.execute(
            select(Subscriber.email, Step.key, Delivery.status, Delivery.skip_reason, Delivery.due_at)
            .join(Delivery, Delivery.subscriber_id == Subscriber.id)
            .join(Step, Step.id == Delivery.step_id)
        ):
            found.setdefault(email, {})[key] = (status, reason, due)
    return found


def test_each_kind_of_condition_is_checked_when_the_step_comes_due(cond_world, set_env) -> None:  # type: ignore[no-untyped-def]
    transport = MemoryTransport()
    with clock.frozen(START) as advance:
        subscribe(cond_world, "doc@example.com", "cond")
        subscribe(cond_world, "pat@example.com", "cond")
        before = _by_person(cond_world)
        sender = make_sender(cond_world, transport)
        assert dispatch_inline(cond_world, sender)["sent"] == 2
        with transaction(cond_world) as session:
            doctor = session.scalar(select(Subscriber).where(Subscriber.email == "doc@example.com"))
            # Set after enrolment: a condition reads the attribute when its step comes due, not at signup.
            doctor.attributes = {"role": "doctor"}
            welcome = session.scalar(
                select(Delivery)
                .join(Step, Step.id == Delivery.step_id)
                .where(Delivery.subscriber_id == doctor.id, Step.key == "welcome")
            )
            link = TrackedLink(token="c" * 32, delivery_id=welcome.id, kind="click", url="https://x.test/")
            session.add(link)
            session.flush()
            session.add(
                LinkClick(link_id=link.id, subscriber_id=doctor.id, step_id=welcome.step_id, kind="click")
            )
            public_ids = {e: p for e, p in session.execute(select(Subscriber.email, Subscriber.public_id))}
        for _ in STEPS[1:]:
            advance(timedelta(hours=1))
            dispatch_inline(cond_world, sender)
    after = _by_person(cond_world)
    pair = [Variant("a"), Variant("b")]
    for email, clicked, doctor in (("doc@example.com", True, True), ("pat@example.com", False, False)):
        variant = assign(public_ids[email], "cond", "welcome", pair).key
        want = {
            "welcome": True,
            "clickers": clicked,
            "quiet": not clicked,
            "doctors": doctor,
            "as-a": variant == "a",
            "as-b": variant == "b",
            "last": True,
        }
        for key, sent in want.items():
            status, reason, due = after[email][key]
            assert (status, reason) == (("sent", None) if sent else ("skipped", "condition")), (email, key)
            # A skip moves nothing: every due time is the one set at enrolment, each delay counted from the
            # step before's due time, skipped or not.
            assert due == before[email][key][2] == START + timedelta(hours=STEPS.index(key))
    with transaction(cond_world) as session:
        # doc: quiet and one of as-a/as-b; pat: clickers, doctors and the other of as-a/as-b.
        skipped_events = session.scalars(select(Event).where(Event.kind == "skipped")).all()
        assert len(skipped_events) == 5 and {e.detail["reason"] for e in skipped_events} == {"condition"}
        sequence = session.scalar(select(Sequence).where(Sequence.slug == "cond"))
        figures = {s.key: s for s in sequence_stats(session, sequence).steps}
    assert figures["clickers"].skipped == {"condition": 1} and figures["clickers"].sent == 1
    assert figures["as-a"].skipped.get("condition", 0) + figures["as-b"].skipped.get("condition", 0) == 2
    assert figures["last"].sent == 2 and figures["last"].skipped == {}


def _problems(tmp_path: Path, steps: str) -> list[str]:
    path = tmp_path / "bad.yaml"
    path.write_text(f"slug: bad\nname: Bad\nsteps:\n{steps}")
    with pytest.raises(SequenceValidationError) as caught:
        load_file(path, EmailTemplates(get_settings().templates_dir))
    return [str(p) for p in caught.value.problems]


def test_validation_of_conditions_names_file_and_step(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        """  - {key: one, delay: 0, template: demo/hello, only_if: {clicked: two}}
  - {key: two, delay: 1d, template: demo/hello, only_if: {clicked: nowhere}}
  - {key: three, delay: 1d, template: demo/hello, only_if: {variant: {two: a}}}
  - {key: four, delay: 1d, template: demo/hello, only_if: {opened: one}}
  - {key: five, delay: 1d, template: demo/hello, only_if: {not_clicked: five}}
  - {key: six, delay: 1d, template: demo/hello, variants: [{key: a}, {key: b}]}
  - {key: seven, delay: 1d, template: demo/hello, only_if: {variant: {six: c}}}
  - {key: eight, delay: 1d, template: demo/hello, only_if: {attribute: {role: [1, 2]}}}
""",
    )
    looks_back = "does not come before this step: a condition looks back"
    assert problems == [
        f"bad.yaml: step #1 ('one'): only_if: step 'two' {looks_back}",
        "bad.yaml: step #2 ('two'): only_if: unknown step 'nowhere' "
        "(steps: one, two, three, four, five, six, seven, eight)",
        "bad.yaml: step #3 ('three'): only_if: step 'two' has no variants",
        "bad.yaml: step #4 ('four'): only_if: unknown condition 'opened' (one of {clicked: STEP}, "
        "{not_clicked: STEP}, {attribute: {NAME: VALUE}}, {variant: {STEP: KEY}})",
        f"bad.yaml: step #5 ('five'): only_if: step 'five' {looks_back}",
        "bad.yaml: step #7 ('seven'): only_if: step 'six' has no variant 'c' (variants: a, b)",
        "bad.yaml: step #8 ('eight'): only_if: attribute needs a name and a plain value "
        "(text, number, true/false)",
    ]


def test_conditions_are_part_of_the_stored_definition(sequences_dir: Path) -> None:
    (sequences_dir / "cond.yaml").write_text(COND)
    definition = load_file(sequences_dir / "cond.yaml", EmailTemplates(get_settings().templates_dir))
    stored = {s["key"]: s.get("only_if") for s in definition.canonical()["steps"]}
    assert stored["doctors"] == {"attribute": {"role": "doctor"}}
    assert stored["as-b"] == {"variant": {"welcome": "b"}}
    assert stored["last"] is None
