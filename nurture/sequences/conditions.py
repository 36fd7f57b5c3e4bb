"""Conditional steps: ``only_if`` in a sequence file, checked when the step comes due.

One condition per step, on what the person did earlier in the same enrollment or on who they are:

* ``{clicked: STEP}`` / ``{not_clicked: STEP}``: a tracked link in that earlier step's email was (or was
  not) clicked;
* ``{attribute: {NAME: VALUE}}``: the subscriber's attribute NAME equals VALUE;
* ``{variant: {STEP: KEY}}``: that earlier step went out to them as variant KEY (nurture.sequences.variants).

A step whose condition is false is skipped with the reason ``condition`` (nurture.delivery.sender); the due
times of the steps after it were set at enrolment, so their delays still count from the skipped step's due
time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

KINDS = ("clicked", "not_clicked", "attribute", "variant")
REASON = "condition"  # the skip reason: counted and shown like every other


@dataclass(frozen=True)
class Condition:
    kind: str  # one of KINDS
    step: str | None = None  # clicked, not_clicked, variant: the earlier step's key
    name: str | None = None  # attribute: its name
    value: Any = None  # attribute: the value to equal; variant: the variant key

    def canonical(self) -> dict[str, Any]:
        if self.kind in ("clicked", "not_clicked"):
            return {self.kind: self.step}
        if self.kind == "attribute":
            return {"attribute": {self.name: self.value}}
        return {"variant": {self.step: self.value}}

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Condition:
        """From the canonical form stored with a version (already validated)."""
        ((kind, body),) = data.items()
        if kind in ("clicked", "not_clicked"):
            return cls(kind, step=body)
        ((key, value),) = body.items()
        if kind == "attribute":
            return cls(kind, name=key, value=value)
        return cls(kind, step=key, value=value)

    def holds(self, facts: Facts) -> bool:
        if self.kind == "clicked":
            return self.step in facts.clicked
        if self.kind == "not_clicked":
            return self.step not in facts.clicked
        if self.kind == "attribute":
            return self.name in facts.attributes and facts.attributes[self.name] == self.value
        return facts.variants.get(self.step or "") == self.value

    def describe(self) -> str:
        if self.kind == "clicked":
            return f"only if they clicked in {self.step!r}"
        if self.kind == "not_clicked":
            return f"only if they did not click in {self.step!r}"
        if self.kind == "attribute":
            return f"only if {self.name} = {self.value!r}"
        return f"only if {self.step!r} went out as variant {self.value!r}"


@dataclass(frozen=True)
class Facts:
    """What a condition may look at, for one enrollment when its step comes due."""

    clicked: frozenset[str]  # keys of this enrollment's steps with a click on a tracked link
    variants: Mapping[str, str]  # step key -> the variant recorded on this enrollment's delivery
    attributes: Mapping[str, Any]


def conditions_of(definition: Mapping[str, Any]) -> dict[str, Condition]:
    """step key -> its condition, for the steps of a stored definition that have one."""
    return {
        step["key"]: Condition.of(step["only_if"])
        for step in definition.get("steps", [])
        if step.get("only_if")
    }


Problem = Callable[..., None]


def parse_condition(
    raw: Any, label: str, position: int, steps: Mapping[str, tuple[int, tuple[str, ...]]], problem: Problem
) -> Condition | None:
    """A step's ``only_if``; ``steps`` maps every step key of the file to (position, its variant keys), so a
    condition naming an unknown step, this step or a later one is reported with this step's label."""
    if raw is None:
        return None
    usage = (
        "only_if must be one of {clicked: STEP}, {not_clicked: STEP}, {attribute: {NAME: VALUE}}, "
        "{variant: {STEP: KEY}}"
    )
    if not isinstance(raw, dict) or len(raw) != 1:
        problem(usage, label)
        return None
    ((kind, body),) = raw.items()
    if kind not in KINDS:
        problem(f"only_if: unknown condition {kind!r} ({usage.split(' must be ')[1]})", label)
        return None
    if kind in ("clicked", "not_clicked"):
        if not isinstance(body, str) or not _earlier(body, label, position, steps, problem):
            return None
        return Condition(kind, step=body)
    if not isinstance(body, dict) or len(body) != 1:
        problem(
            f"only_if: {kind} needs one {'NAME: VALUE' if kind == 'attribute' else 'STEP: KEY'} pair", label
        )
        return None
    ((key, value),) = body.items()
    if kind == "attribute":
        if not isinstance(key, str) or not key or not isinstance(value, str | int | float | bool):
            problem("only_if: attribute needs a name and a plain value (text, number, true/false)", label)
            return None
        return Condition(kind, name=key, value=value)
    if not isinstance(key, str) or not _earlier(key, label, position, steps, problem):
        return None
    variants = steps[key][1]
    if not variants:
        problem(f"only_if: step {key!r} has no variants", label)
        return None
    if value not in variants:
        problem(f"only_if: step {key!r} has no variant {value!r} (variants: {', '.join(variants)})", label)
        return None
    return Condition(kind, step=key, value=value)


def _earlier(
    key: str, label: str, position: int, steps: Mapping[str, tuple[int, tuple[str, ...]]], problem: Problem
) -> bool:
    if key not in steps:
        problem(f"only_if: unknown step {key!r} (steps: {', '.join(steps)})", label)
        return False
    if steps[key][0] >= position:
        problem(f"only_if: step {key!r} does not come before this step: a condition looks back", label)
        return False
    return True
