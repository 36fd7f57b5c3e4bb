"""A/B tests: deterministic assignment that follows the weights, the variant sent and recorded on SQLite and
PostgreSQL (and kept across a resend), per-variant results with a two-proportion test checked against the
textbook formula, and ending a test with a winner."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from nurture.cli import main
from nurture.core import clock
from nurture.core.config import get_settings
from nurture.core.db import transaction
from nurture.mail.templates import EmailTemplates
from nurture.mail.transports import MemoryTransport
from nurture.models import Delivery, LinkClick, Sequence, StaffUser, Step, Subscriber, TrackedLink
from nurture.sequences import version_plans, versions
from nurture.sequences.experiments import (
    NOT_YET,
    ExperimentError,
    VariantStats,
    compare,
    two_proportions,
    winner_draft,
)
from nurture.sequences.loader import SequenceValidationError, load_file
from nurture.sequences.results import sequence_stats
from nurture.sequences.variants import Variant, assign
from nurture.staff.accounts import Actor
from tests.support.helpers import dispatch_inline, make_sender, subscribe, sync_sequences
from tests.support.processes import SmtpScript, SmtpServer

START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
PEOPLE = [f"{number:032x}" for number in range(1000)]  # shaped like Subscriber.public_id

AB = """
slug: ab
name: AB course
steps:
  - key: welcome
    delay: 0
    template: demo/hello
    variants:
      - {key: a}
      - {key: b, subject: "Variant B: your course begins"}
  - key: later
    delay: 1s
    template: demo/middle
    variants:
      - {key: x, template: demo/goodbye, weight: 80}
      - {key: y, weight: 20}
"""


def _counts(variants: list[Variant], step: str = "welcome") -> dict[str, int]:
    counts = dict.fromkeys((v.key for v in variants), 0)
    for person in PEOPLE:
        counts[assign(person, "ab", step, variants).key] += 1
    return counts


def _bound(n: int, share: float) -> float:
    """Four standard deviations of a binomial count: a fair split falls outside once in ~16,000 runs."""
    return 4 * math.sqrt(n * share * (1 - share))


def test_a_50_50_split_over_1000_people_is_within_statistical_bounds() -> None:
    counts = _counts([Variant("a"), Variant("b")])
    assert counts == {"a": 488, "b": 512}  # the figures, fixed by the hash (docs/experiments.md)
    assert abs(counts["a"] - 500) < _bound(1000, 0.5)  # 63.2


def test_an_80_20_split_over_1000_people_is_within_statistical_bounds() -> None:
    counts = _counts([Variant("a", weight=80), Variant("b", weight=20)])
    assert counts == {"a": 787, "b": 213}
    assert abs(counts["b"] - 200) < _bound(1000, 0.2)  # 50.6


def test_assignment_is_the_same_every_time_and_independent_between_steps() -> None:
    pair = [Variant("a"), Variant("b")]
    first = [assign(p, "ab", "welcome", pair).key for p in PEOPLE]
    assert first == [assign(p, "ab", "welcome", pair).key for p in PEOPLE]
    other_step = [assign(p, "ab", "later", pair).key for p in PEOPLE]
    same = sum(x == y for x, y in zip(first, other_step, strict=True))
    # The step key salts the hash: knowing someone's variant on one step says nothing about the next.
    assert abs(same - 500) < _bound(1000, 0.5), same


# --- validation -------------------------------------------------------------------------------------------


def _validate(tmp_path: Path, steps: str) -> list[str]:
    path = tmp_path / "bad.yaml"
    path.write_text(f"slug: bad\nname: Bad\nsteps:\n{steps}")
    with pytest.raises(SequenceValidationError) as caught:
        load_file(path, EmailTemplates(get_settings().templates_dir))
    return [str(p) for p in caught.value.problems]


def test_validation_names_file_step_and_variant(tmp_path: Path) -> None:
    problems = _validate(
        tmp_path,
        """  - key: welcome
    delay: 0
    template: demo/hello
    winner: c
    variants:
      - {key: a, colour: red}
      - {key: a}
      - {key: b, weight: 0}
      - {key: d, template: demo/nope}
      - {key: e, subject: "{{ unclosed"}
""",
    )
    assert "bad.yaml: step #1 ('welcome'): variant 'a': unknown field 'colour' " in problems[0]
    assert "bad.yaml: step #1 ('welcome'): duplicate variant key 'a'" in problems
    assert "bad.yaml: step #1 ('welcome'): variant 'b': weight 0 must be a positive number" in problems
    assert any(p.startswith("bad.yaml: step #1 ('welcome'): variant 'd': unknown template") for p in problems)
    assert any(p.startswith("bad.yaml: step #1 ('welcome'): subject does not compile") for p in problems)
    assert "bad.yaml: step #1 ('welcome'): winner 'c' is not one of the variants (a)" in problems


def test_a_single_variant_is_not_a_test(tmp_path: Path) -> None:
    problems = _validate(tmp_path, "  - {key: w, delay: 0, template: demo/hello, variants: [{key: a}]}\n")
    assert problems == [
        "bad.yaml: step #1 ('w'): variants must be a list of at least two variants, each a mapping with a key"
    ]


def test_a_file_without_variants_keeps_its_digest(sequences_dir: Path, three_step: Path) -> None:
    definition = load_file(three_step, EmailTemplates(get_settings().templates_dir))
    assert all("variants" not in step for step in definition.canonical()["steps"])


# --- the two-proportion test ------------------------------------------------------------------------------


def _textbook(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """The pooled two-proportion z-test written out (e.g. Agresti, Categorical Data Analysis, 3.1.3); the
    two-sided p from the normal tail via erfc. Equal to R's prop.test(c(x1, x2), c(n1, n2), correct=FALSE),
    whose X-squared is z squared."""
    pooled = (x1 + x2) / (n1 + n2)
    z = (x1 / n1 - x2 / n2) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return z, math.erfc(abs(z) / math.sqrt(2))


@pytest.mark.parametrize(
    ("x1", "n1", "x2", "n2"),
    [(30, 500, 50, 500), (120, 1000, 90, 1000), (7, 40, 3, 45), (512, 2000, 440, 1980)],
)
def test_two_proportions_agrees_with_the_textbook_formula(x1: int, n1: int, x2: int, n2: int) -> None:
    result = two_proportions((x1, x2), (n1, n2))
    assert result is not None
    z, p = result
    want_z, want_p = _textbook(x1, n1, x2, n2)
    assert z == pytest.approx(want_z, rel=1e-9)
    assert p == pytest.approx(want_p, rel=1e-9)


def test_two_proportions_against_written_values() -> None:
    # 30/500 vs 50/500: z = -0.04 / sqrt(0.08 * 0.92 * 0.004) = -2.3313, p = 0.01974 (prop.test X² = 5.4348).
    z, p = two_proportions((30, 50), (500, 500)) or (0.0, 0.0)
    assert round(z, 4) == -2.3313 and round(p, 5) == 0.01974
    assert two_proportions((0, 0), (10, 10)) is None  # nobody clicked: the test says nothing yet
    assert two_proportions((1, 0), (10, 0)) is None


def test_the_comparison_says_not_yet_until_the_numbers_do() -> None:
    early = compare(
        [VariantStats("a", sent=50, unique_clickers=6), VariantStats("b", sent=50, unique_clickers=4)]
    )
    assert early.leader == "a"
    assert not early.against[0].significant and early.against[0].verdict.startswith(NOT_YET)
    late = compare(
        [VariantStats("a", sent=1000, unique_clickers=120), VariantStats("b", sent=1000, unique_clickers=80)]
    )
    assert late.leader == "a" and late.against[0].significant
    assert late.against[0].p_value == pytest.approx(_textbook(120, 1000, 80, 1000)[1], rel=1e-5)
    assert compare([VariantStats("a"), VariantStats("b")]).leader is None


# --- sending, on both databases ---------------------------------------------------------------------------


@pytest.fixture
def ab_world(factory, sequences_dir: Path):  # type: ignore[no-untyped-def]
    (sequences_dir / "ab.yaml").write_text(AB)
    sync_sequences(factory)
    return factory


def _sent(transport: MemoryTransport) -> dict[str, list[str]]:
    """recipient -> subjects, in order."""
    found: dict[str, list[str]] = {}
    for stored in transport.outbox:
        found.setdefault(stored.recipient, []).append(str(message_from_bytes(stored.data)["Subject"]))
    return found


def test_each_person_gets_their_variant_and_it_is_recorded(ab_world, set_env) -> None:  # type: ignore[no-untyped-def]
    transport = MemoryTransport()
    with clock.frozen(START) as advance:
        for number in range(20):
            subscribe(ab_world, f"p{number:02}@example.com", "ab")
        sender = make_sender(ab_world, transport)
        assert dispatch_inline(ab_world, sender)["sent"] == 20
        advance(timedelta(seconds=2))
        assert dispatch_inline(ab_world, sender)["sent"] == 20
    subjects = _sent(transport)
    with transaction(ab_world) as session:
        rows = session.execute(
            select(Subscriber.email, Subscriber.public_id, Step.key, Delivery.variant)
            .join(Delivery, Delivery.subscriber_id == Subscriber.id)
            .join(Step, Step.id == Delivery.step_id)
            .order_by(Delivery.id)
        ).all()
    seen: set[str] = set()
    for email, public_id, step, variant in rows:
        pair = [Variant("a"), Variant("b")] if step == "welcome" else [Variant("x", 80), Variant("y", 20)]
        assert variant == assign(public_id, "ab", step, pair).key
        seen.add(variant)
        first, second = subjects[email]
        if step == "welcome":
            assert first == (
                "Variant B: your course begins" if variant == "b" else "Demo 1 of 3: your first nurture email"
            )
        else:  # x overrides the template: goodbye's subject, numbered as step 2 of 2
            assert second == (
                "Demo 3 of 3: that is the whole sequence"
                if variant == "x"
                else "Demo 2 of 3: the schedule lives in the database"
            )
    assert seen == {"a", "b", "x", "y"}


def test_a_resend_goes_out_as_the_same_variant(ab_world, set_env) -> None:  # type: ignore[no-untyped-def]
    with SmtpServer(SmtpScript(drop_after_data=1)) as smtp, clock.frozen(START):
        set_env(smtp_url=smtp.url, ambiguous_policy="resend")
        subscribe(ab_world, "re@example.com", "ab")
        sender = make_sender(ab_world)
        assert dispatch_inline(ab_world, sender) == {"ambiguous": 1}
        with transaction(ab_world) as session:
            recorded = session.scalars(select(Delivery.variant).order_by(Delivery.id)).first()
            public_id = session.scalar(select(Subscriber.public_id))
        assert recorded == assign(public_id, "ab", "welcome", [Variant("a"), Variant("b")]).key
        assert dispatch_inline(ab_world, sender) == {"sent": 1}
    subjects = [r.message["Subject"] for r in smtp.received]
    assert len(subjects) == 2 and subjects[0] == subjects[1]
    ids = [r.message["Message-ID"] for r in smtp.received]
    assert ids[0] == ids[1]
    assert subjects[0] == (
        "Variant B: your course begins" if recorded == "b" else "Demo 1 of 3: your first nurture email"
    )
    with transaction(ab_world) as session:
        assert session.scalars(select(Delivery.variant).order_by(Delivery.id)).first() == recorded


def test_a_recorded_variant_wins_over_the_hash(ab_world, set_env) -> None:  # type: ignore[no-untyped-def]
    transport = MemoryTransport()
    with clock.frozen(START):
        subscribe(ab_world, "rec@example.com", "ab")
        with transaction(ab_world) as session:
            delivery = session.scalars(select(Delivery).order_by(Delivery.id)).first()
            public_id = session.scalar(select(Subscriber.public_id))
            hashed = assign(public_id, "ab", "welcome", [Variant("a"), Variant("b")]).key
            delivery.variant = "a" if hashed == "b" else "b"
            forced = delivery.variant
        dispatch_inline(ab_world, make_sender(ab_world, transport))
    subject = _sent(transport)["rec@example.com"][0]
    assert (subject == "Variant B: your course begins") == (forced == "b")


def _click(session, delivery: Delivery, times: int = 1) -> None:  # type: ignore[no-untyped-def]
    """As /l/{token} records it: the email's tracked link, and one click row per click."""
    link = TrackedLink(
        token=f"t{delivery.id:031}", delivery_id=delivery.id, kind="click", url="https://x.test/"
    )
    session.add(link)
    session.flush()
    for _ in range(times):
        session.add(
            LinkClick(
                link_id=link.id, subscriber_id=delivery.subscriber_id, step_id=delivery.step_id, kind="click"
            )
        )


def test_results_per_variant_and_ending_the_test(ab_world, set_env) -> None:  # type: ignore[no-untyped-def]
    transport = MemoryTransport()
    with clock.frozen(START) as advance:
        for number in range(30):
            subscribe(ab_world, f"s{number:02}@example.com", "ab")
        sender = make_sender(ab_world, transport)
        dispatch_inline(ab_world, sender)
        with transaction(ab_world) as session:
            welcome = session.scalars(
                select(Delivery).join(Step, Step.id == Delivery.step_id).where(Step.key == "welcome")
            ).all()
            clicked_b = [d for d in welcome if d.variant == "b"]
            for number, delivery in enumerate(clicked_b):  # everyone on b clicks, twice for the first
                _click(session, delivery, 2 if number == 0 else 1)
            sequence = session.scalar(select(Sequence).where(Sequence.slug == "ab"))
            figures = {s.key: s for s in sequence_stats(session, sequence).steps}
            by_variant = {v["key"]: v for v in figures["welcome"].variants}
            sent_b = sum(1 for d in welcome if d.variant == "b")
            assert by_variant["b"]["sent"] == sent_b and by_variant["a"]["sent"] == 30 - sent_b
            assert by_variant["b"]["unique_clickers"] == sent_b and by_variant["b"]["clicks"] == sent_b + 1
            assert by_variant["a"]["clicks"] == 0
            comparison = figures["welcome"].comparison
            assert comparison["leader"] == "b"
            _z, p = _textbook(sent_b, sent_b, 0, 30 - sent_b)
            assert comparison["against"][0]["p_value"] == pytest.approx(p, rel=1e-5)
            assert comparison["against"][0]["significant"]
            assert figures["later"].variants is not None and figures["later"].winner is None

            user = StaffUser(email="editor@staff.example.com", role="editor", password_hash="-")
            session.add(user)
            session.flush()
            actor = Actor.of(user)
            templates = EmailTemplates(get_settings().templates_dir)
            with pytest.raises(ExperimentError, match="no variant 'z'"):
                winner_draft(session, sequence, "later", "z", actor, templates)
            draft = winner_draft(session, sequence, "later", "y", actor, templates)
            plan = version_plans.compute_plan(
                session,
                sequence,
                version_plans.shape_of_version(draft),
                version_plans.Migrate.move,
                per_minute=600,
            )
            assert plan.counts()["move"] == 30  # the plan staff see before publishing
            versions.publish(session, "ab", version_plans.Migrate.move, actor=actor, per_minute=600)
        advance(timedelta(hours=1))
        dispatch_inline(ab_world, sender)
    later = [subjects[1] for subjects in _sent(transport).values()]
    assert len(later) == 30 and set(later) == {"Demo 2 of 3: the schedule lives in the database"}  # all y
    with transaction(ab_world) as session:
        sequence = session.scalar(select(Sequence).where(Sequence.slug == "ab"))
        figures = {s.key: s for s in sequence_stats(session, sequence).steps}
        assert figures["later"].winner == "y"
        assert {v["key"]: v["sent"] for v in figures["later"].variants} == {"x": 0, "y": 30}
        with pytest.raises(ExperimentError, match="already ended"):
            winner_draft(session, sequence, "later", "x", actor, templates)


def test_preview_and_test_send_take_a_variant(ab_world, set_env) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    shown = runner.invoke(
        main, ["sequences", "preview", "ab", "welcome", "--format", "text", "--variant", "b"]
    )
    assert shown.exit_code == 0, shown.output
    assert shown.output.startswith("Subject: Variant B: your course begins")
    plain = runner.invoke(main, ["sequences", "preview", "ab", "welcome", "--format", "text"])
    assert plain.output.startswith("Subject: Demo 1 of 3")
    missing = runner.invoke(main, ["sequences", "preview", "ab", "welcome", "--variant", "q"])
    assert missing.exit_code != 0 and "no variant 'q'" in missing.output
    with SmtpServer() as smtp:
        set_env(smtp_url=smtp.url)
        sent = runner.invoke(main, ["send-test", "ab", "later", "--to", "me@example.com", "--variant", "x"])
        assert sent.exit_code == 0, sent.output
    assert smtp.received[0].message["Subject"] == "Demo 3 of 3: that is the whole sequence"


def test_an_edit_in_the_staff_editor_keeps_a_steps_test_and_condition(sequences_dir: Path) -> None:
    from nurture.models import SequenceVersion
    from nurture.web.admin.editor import _raw_definition

    (sequences_dir / "ab.yaml").write_text(AB)
    definition = load_file(sequences_dir / "ab.yaml", EmailTemplates(get_settings().templates_dir))
    stored = definition.canonical()
    stored["steps"][1]["only_if"] = {"variant": {"welcome": "b"}}
    base = SequenceVersion(definition=stored)
    row = {"order": "", "subject": "", "any_hour": False, "remove": False, "new": False}
    form = {
        "name": "AB course, renamed",
        "timezone": "",
        "window_days": "",
        "window_start": "",
        "window_end": "",
        "steps": [
            row | {"key": "welcome", "delay": "0", "template": "demo/hello"},
            row | {"key": "later", "delay": "2s", "template": "demo/middle"},  # the delay edited
        ],
    }
    raw = _raw_definition(base, form, ["demo/hello", "demo/middle"])
    assert raw["steps"][0]["variants"] == stored["steps"][0]["variants"]
    assert raw["steps"][1]["variants"] == stored["steps"][1]["variants"]
    assert raw["steps"][1]["only_if"] == {"variant": {"welcome": "b"}} and raw["steps"][1]["delay"] == "2s"
