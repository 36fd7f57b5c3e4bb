"""A/B tests on a step: the variants a sequence file declares, and which one each person gets.

A step's ``variants`` list splits its readers; each variant may override the step's ``subject`` and/or
``template`` (the first is usually the step as written) and carries a ``weight`` (equal by default). A step's
``winner`` ends the test: everyone gets that variant from then on (nurture.sequences.experiments writes it).

Assignment is a pure function of (subscriber public id, sequence slug, step key): SHA-256 of the three, read
as a number in [0, 1), cut by the cumulative weights. It needs no state and no secret, so a resend, a
re-render, a preview and a worker on another machine all agree; the step key salts it, so the variant a
person gets on one step says nothing about the next test. A keyed HMAC would make it unguessable, but nothing
is gained by hiding which variant someone will get, and rotating ``NURTURE_SECRET_KEY`` would reshuffle every
test in flight.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

VARIANT_KEYS = {"key", "weight", "subject", "template"}
MAX_VARIANTS = 10


@dataclass(frozen=True)
class Variant:
    key: str
    weight: float = 1.0
    subject: str | None = None  # replaces the step's subject when set
    template: str | None = None  # replaces the step's template when set

    def canonical(self) -> dict[str, Any]:
        """Only the fields set, so adding an optional field later keeps stored digests."""
        data: dict[str, Any] = {"key": self.key, "weight": self.weight}
        if self.subject is not None:
            data["subject"] = self.subject
        if self.template is not None:
            data["template"] = self.template
        return data

    @classmethod
    def of(cls, data: dict[str, Any]) -> Variant:
        return cls(
            key=str(data["key"]),
            weight=float(data.get("weight", 1.0)),
            subject=data.get("subject"),
            template=data.get("template"),
        )


def fraction(public_id: str, slug: str, step_key: str) -> float:
    """The person's place in [0, 1) for this step's test; independent between steps and sequences."""
    digest = hashlib.sha256(f"{slug}\x00{step_key}\x00{public_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(public_id: str, slug: str, step_key: str, variants: Sequence[Variant]) -> Variant:
    """The variant this person gets on this step: the weight shares cut [0, 1) in the order written."""
    if not variants:
        raise ValueError("no variants")
    point = fraction(public_id, slug, step_key) * sum(v.weight for v in variants)
    running = 0.0
    for variant in variants:
        running += variant.weight
        if point < running:
            return variant
    return variants[-1]  # rounding at the top edge


@dataclass(frozen=True)
class Experiment:
    """A step's test as stored with a version: its variants and, once ended, the winner."""

    variants: tuple[Variant, ...]
    winner: str | None = None

    def variant(self, key: str) -> Variant:
        for variant in self.variants:
            if variant.key == key:
                return variant
        raise KeyError(f"no variant {key!r} (variants: {', '.join(v.key for v in self.variants)})")

    def choose(self, public_id: str, slug: str, step_key: str) -> Variant:
        if self.winner is not None:
            return self.variant(self.winner)
        return assign(public_id, slug, step_key, self.variants)

    def resolve(self, recorded: str | None, public_id: str, slug: str, step_key: str) -> Variant:
        """The variant a delivery goes out as: the one already recorded on it (a resend, or a row prepared
        before a winner was chosen) while this version still has it, else the person's choice now."""
        if recorded is not None and any(v.key == recorded for v in self.variants):
            return self.variant(recorded)
        return self.choose(public_id, slug, step_key)

    @classmethod
    def of_step(cls, step: dict[str, Any]) -> Experiment | None:
        """From a step of a stored definition (``SequenceVersion.definition``); None without variants."""
        raw = step.get("variants")
        if not raw:
            return None
        return cls(tuple(Variant.of(v) for v in raw), step.get("winner"))


def experiments_of(definition: dict[str, Any]) -> dict[str, Experiment]:
    """step key -> its test, for the steps of a stored definition that have one."""
    found: dict[str, Experiment] = {}
    for step in definition.get("steps", []):
        experiment = Experiment.of_step(step)
        if experiment is not None:
            found[step["key"]] = experiment
    return found


Problem = Callable[..., None]  # (message, step label) -> None, as the loader collects them
CheckTemplate = Callable[[str, str], bool]  # (template, where) -> usable, reporting why not
CheckSubject = Callable[[Any, str], "str | bool | None"]  # the loader's subject check


def parse_variants(
    raw: Any,
    label: str,
    problem: Problem,
    check_template: CheckTemplate,
    check_subject: CheckSubject,
    key_pattern: re.Pattern[str],
) -> tuple[Variant, ...]:
    """A step's ``variants`` list, each problem reported with the step's label."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) < 2:
        problem("variants must be a list of at least two variants, each a mapping with a key", label)
        return ()
    if len(raw) > MAX_VARIANTS:
        problem(f"variants: at most {MAX_VARIANTS} variants", label)
    found: list[Variant] = []
    seen: set[str] = set()
    for index, item in enumerate(raw, start=1):
        if not isinstance(item, dict):
            problem(f"variant #{index} must be a mapping with a key", label)
            continue
        key = item.get("key")
        if not isinstance(key, str) or not key_pattern.match(key):
            problem(
                f"variant #{index}: key {key!r} must be lower-case letters, digits, dashes or underscores",
                label,
            )
            continue
        where = f"variant {key!r}"
        for unknown in sorted(set(item) - VARIANT_KEYS):
            problem(f"{where}: unknown field {unknown!r} (allowed: {', '.join(sorted(VARIANT_KEYS))})", label)
        if key in seen:
            problem(f"duplicate variant key {key!r}", label)
            continue
        seen.add(key)
        weight = item.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
            problem(f"{where}: weight {weight!r} must be a positive number", label)
            continue
        template = item.get("template")
        if template is not None and not check_template(template, where):
            continue
        subject = check_subject(item.get("subject"), label)
        if subject is False:
            continue
        found.append(Variant(key, float(weight), subject or None, template))
    return tuple(found)


def parse_winner(raw: Any, variants: tuple[Variant, ...], label: str, problem: Problem) -> str | None:
    if raw is None:
        return None
    if not variants:
        problem("winner needs variants", label)
        return None
    if raw not in {v.key for v in variants}:
        problem(f"winner {raw!r} is not one of the variants ({', '.join(v.key for v in variants)})", label)
        return None
    return str(raw)
