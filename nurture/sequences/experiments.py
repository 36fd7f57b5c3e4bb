"""A/B test results per variant, and the comparison that says whether the leader really leads.

Counted by the database from the variant recorded on each delivery (nurture.delivery.sender writes it when
the email is first prepared), never recomputed: a person who was sent ``b`` counts for ``b`` even after the
test ended. The comparison is a two-proportion z-test (statsmodels' ``proportions_ztest``, pooled, two-sided)
of the leading variant's unique-clicker rate against each other variant's; a difference is called significant
only when p < ``ALPHA``, and every comparison says "not yet significant" until then.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from nurture.mail.templates import EmailTemplates
from nurture.models import (
    Delivery,
    DeliveryStatus,
    Enrollment,
    GoalCompletion,
    LinkClick,
    Sequence,
    Step,
    TrackedLink,
)
from nurture.sequences import versions
from nurture.sequences.loader import definition_from
from nurture.staff import accounts

ALPHA = 0.05
METRIC = "unique_clickers / sent"
NOT_YET = "not yet significant"


@dataclass
class VariantStats:
    key: str
    sent: int = 0
    clicks: int = 0
    unique_clickers: int = 0
    unsubscribes: int = 0  # unsubscribed when this was the last email they had been sent
    goals: int = 0  # goal completions whose last email before the goal was this variant

    @property
    def rate(self) -> float:
        return self.unique_clickers / self.sent if self.sent else 0.0


@dataclass(frozen=True)
class Versus:
    """The leader against one other variant."""

    variant: str
    z: float | None
    p_value: float | None
    significant: bool
    verdict: str


@dataclass(frozen=True)
class Comparison:
    metric: str
    leader: str | None
    against: list[Versus]
    alpha: float = ALPHA


@dataclass
class StepTest:
    variants: list[VariantStats] = field(default_factory=list)
    winner: str | None = None  # set once staff ended the test

    def comparison(self) -> Comparison:
        return compare(self.variants)

    def as_dict(self) -> dict[str, Any]:
        return {
            "variants": [asdict(v) for v in self.variants],
            "comparison": asdict(self.comparison()),
            "winner": self.winner,
        }


def two_proportions(successes: tuple[int, int], trials: tuple[int, int]) -> tuple[float, float] | None:
    """(z, two-sided p) for the first proportion against the second; None when the test is undefined (no
    trials on a side, or nobody or everybody succeeding on both, where the pooled variance is zero)."""
    if min(trials) == 0:
        return None
    pooled = sum(successes) / sum(trials)
    if pooled in (0.0, 1.0):
        return None
    # Imported here: statsmodels (with numpy, scipy, pandas) takes a second or two to import, and every
    # process that imports the results module (worker, CLI) would pay it at start; only a stats answer does.
    from statsmodels.stats.proportion import proportions_ztest

    z, p = proportions_ztest(list(successes), list(trials), alternative="two-sided")
    return float(z), float(p)


def compare(variants: Iterable[VariantStats]) -> Comparison:
    ranked = sorted(variants, key=lambda v: (-v.rate, -v.sent, v.key))
    if not ranked or not any(v.sent for v in ranked):
        return Comparison(METRIC, None, [])
    leader, others = ranked[0], ranked[1:]
    against: list[Versus] = []
    for other in others:
        result = two_proportions((leader.unique_clickers, other.unique_clickers), (leader.sent, other.sent))
        if result is None:
            against.append(Versus(other.key, None, None, False, NOT_YET))
            continue
        z, p = result
        significant = p < ALPHA
        verdict = (
            f"{leader.key} leads {other.key}, p = {p:.4f}" if significant else f"{NOT_YET} (p = {p:.4f})"
        )
        against.append(Versus(other.key, round(z, 4), p, significant, verdict))
    return Comparison(METRIC, leader.key, against)


def step_tests(session: Session, sequence: Sequence, by_id: dict[int, str]) -> dict[str, StepTest]:
    """step key -> its test's figures, for every step key that has (or had) variants in any version."""
    tests: dict[str, StepTest] = {}
    for version in sequence.versions:
        for step in version.definition.get("steps", []):
            if step.get("variants"):
                test = tests.setdefault(step["key"], StepTest())
                if version.id == sequence.current_version_id:
                    test.winner = step.get("winner")
                known = {v.key for v in test.variants}
                test.variants.extend(
                    VariantStats(v["key"]) for v in step["variants"] if v["key"] not in known
                )
    if not tests:
        return tests
    step_ids = [step_id for step_id, key in by_id.items() if key in tests]

    def variant(step_id: int, key: str | None) -> VariantStats | None:
        if key is None:
            return None
        test = tests[by_id[step_id]]
        for item in test.variants:
            if item.key == key:
                return item
        item = VariantStats(key)  # a variant since dropped from the file still shows what it did
        test.variants.append(item)
        return item

    sent = session.execute(
        select(Delivery.step_id, Delivery.variant, func.count())
        .where(Delivery.step_id.in_(step_ids), Delivery.status == DeliveryStatus.sent)
        .group_by(Delivery.step_id, Delivery.variant)
    )
    for step_id, key, count in sent:
        if (item := variant(step_id, key)) is not None:
            item.sent += count

    clicks = session.execute(
        select(
            LinkClick.step_id,
            Delivery.variant,
            func.count(),
            func.count(func.distinct(LinkClick.subscriber_id)),
        )
        .join(TrackedLink, TrackedLink.id == LinkClick.link_id)
        .join(Delivery, Delivery.id == TrackedLink.delivery_id)
        .where(LinkClick.step_id.in_(step_ids), LinkClick.kind == "click")
        .group_by(LinkClick.step_id, Delivery.variant)
    )
    for step_id, key, total, unique in clicks:
        if (item := variant(step_id, key)) is not None:
            item.clicks += total
            item.unique_clickers += unique

    goals = session.execute(
        select(GoalCompletion.step_id, Delivery.variant, func.count())
        .join(Delivery, Delivery.id == GoalCompletion.delivery_id)
        .where(GoalCompletion.step_id.in_(step_ids))
        .group_by(GoalCompletion.step_id, Delivery.variant)
    )
    for step_id, key, count in goals:
        if (item := variant(step_id, key)) is not None:
            item.goals += count

    # Unsubscribed after a variant: the last email sent to each unsubscribed enrollment, as stats.py counts
    # "unsubscribed_after" per step.
    last = (
        select(Delivery.enrollment_id, func.max(Step.position).label("position"))
        .join(Step, Step.id == Delivery.step_id)
        .join(Enrollment, Enrollment.id == Delivery.enrollment_id)
        .where(
            Enrollment.sequence_id == sequence.id,
            Enrollment.end_reason == "unsubscribed",
            Delivery.status == DeliveryStatus.sent,
        )
        .group_by(Delivery.enrollment_id)
        .subquery()
    )
    unsubscribes = session.execute(
        select(Delivery.step_id, Delivery.variant, func.count())
        .join(Step, Step.id == Delivery.step_id)
        .join(last, (last.c.enrollment_id == Delivery.enrollment_id) & (last.c.position == Step.position))
        .where(Delivery.status == DeliveryStatus.sent, Delivery.step_id.in_(step_ids))
        .group_by(Delivery.step_id, Delivery.variant)
    )
    for step_id, key, count in unsubscribes:
        if (item := variant(step_id, key)) is not None:
            item.unsubscribes += count
    return tests


class ExperimentError(ValueError):
    pass


def winner_draft(
    session: Session,
    sequence: Sequence,
    step_key: str,
    variant: str,
    actor: accounts.Actor,
    templates: EmailTemplates,
) -> Any:
    """End the test on ``step_key``: a draft of the live version in which that step's ``winner`` is
    ``variant``, so that once published everyone who gets the step gets that variant. Nothing changes until
    staff have seen the draft's plan and published it (nurture.sequences.versions), like any other edit."""
    live = sequence.current_version
    if live is None:
        raise ExperimentError(f"sequence {sequence.slug!r} has no live version")
    raw = versions.as_file_data(live)
    for step in raw["steps"]:
        if step["key"] == step_key:
            break
    else:
        raise ExperimentError(f"sequence {sequence.slug!r} has no step {step_key!r}")
    keys = [v["key"] for v in step.get("variants", [])]
    if not keys:
        raise ExperimentError(f"step {step_key!r} has no A/B test")
    if variant not in keys:
        raise ExperimentError(f"step {step_key!r} has no variant {variant!r} (variants: {', '.join(keys)})")
    if step.get("winner") is not None:
        raise ExperimentError(f"the test on {step_key!r} has already ended: everyone gets {step['winner']!r}")
    step["winner"] = variant
    definition = definition_from(raw, Path(f"{sequence.slug}.yaml"), templates)
    return versions.save_staff_draft(session, sequence, definition, actor)
