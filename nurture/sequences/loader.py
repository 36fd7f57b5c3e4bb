"""Read and validate sequence files (``<slug>.yaml``).

Validation collects every problem in every file before giving up, and each message names the file, the step
and what is wrong, so one run of ``nurture sequences validate`` shows the whole list to fix.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from jinja2 import TemplateError

from nurture.core.ids import parse_id
from nurture.mail.templates import EmailTemplates, UnsafeTemplateError
from nurture.sequences.conditions import Condition, parse_condition
from nurture.sequences.holidays import CalendarError, parse_calendar
from nurture.sequences.policy import POLICY_KEYS, parse_policy
from nurture.sequences.review import NO_REVIEW, REVIEW_KEYS, Review, parse_review
from nurture.sequences.schedule import ScheduleError, SendWindow, format_delay, parse_delay, zone
from nurture.sequences.variants import Variant, parse_variants, parse_winner

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
STEP_KEY = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
TOP_LEVEL_KEYS = {"slug", "name", "description", "timezone", "window", "steps"} | POLICY_KEYS
TOP_LEVEL_KEYS |= {"status", "holidays"} | REVIEW_KEYS
STEP_KEYS = {"key", "delay", "template", "subject", "window", "variants", "winner", "only_if"}
# `status: draft` stores a new sequence (or a new version of one) without publishing it
# (nurture.sequences.versions).
FILE_STATUSES = ("active", "draft")
MAX_SUBJECT = 300
WINDOW_KEYS = {"days", "start", "end"}


@dataclass(frozen=True)
class StepDefinition:
    key: str
    position: int  # 1-based
    delay: timedelta
    template: str
    subject: str | None = None  # replaces the template's subject.txt when set
    # ``window: false``: due at its delay whatever the hour, day or holiday (nurture.sequences.timetable).
    use_window: bool = True
    # An A/B test on this step (nurture.sequences.variants), and the variant that won it once ended.
    variants: tuple[Variant, ...] = ()
    winner: str | None = None
    # Sent only when this holds at its due time, else skipped (nurture.sequences.conditions).
    only_if: Condition | None = None

    def variant(self, key: str) -> StepDefinition:
        """The step as this variant sends it (its subject and template overrides applied)."""
        for variant in self.variants:
            if variant.key == key:
                return replace(
                    self,
                    template=variant.template or self.template,
                    subject=variant.subject if variant.subject is not None else self.subject,
                )
        known = ", ".join(v.key for v in self.variants) or "none"
        raise KeyError(f"step {self.key!r} has no variant {key!r} (variants: {known})")


@dataclass(frozen=True)
class SequenceDefinition:
    slug: str
    name: str
    description: str
    timezone: str | None
    window: SendWindow | None
    steps: tuple[StepDefinition, ...]
    source: Path
    # Goals, exits, re-entry, tracking (nurture.sequences.policy): only the keys the file sets.
    policy: dict[str, Any] = field(default_factory=dict)
    status: str = "active"  # not part of the digest: publishing a draft is not a new definition
    holidays: str | None = (
        None  # a holiday calendar code (nurture.sequences.holidays) whose dates close the window
    )
    review: Review = NO_REVIEW  # who reviewed the content and when, shown in the footer

    def canonical(self) -> dict[str, Any]:
        """The definition as plain data: what is stored with a version and hashed to detect changes."""
        window = None
        if self.window is not None:
            window = {
                "days": sorted(self.window.days),
                "start": self.window.start.strftime("%H:%M"),
                "end": self.window.end.strftime("%H:%M"),
            }
        return {
            "slug": self.slug,
            "name": self.name,
            "description": self.description,
            "timezone": self.timezone,
            "window": window,
            # "subject" and "window" only when set, so definitions written before them keep their digest.
            "steps": [
                {"key": s.key, "delay": format_delay(s.delay), "template": s.template}
                | ({"subject": s.subject} if s.subject is not None else {})
                | ({} if s.use_window else {"window": False})
                | ({"variants": [v.canonical() for v in s.variants]} if s.variants else {})
                | ({"winner": s.winner} if s.winner is not None else {})
                | ({"only_if": s.only_if.canonical()} if s.only_if is not None else {})
                for s in self.steps
            ],
            **({"holidays": self.holidays} if self.holidays else {}),
            **self.review.canonical(),
            **self.policy,
        }

    def digest(self) -> str:
        encoded = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(encoded).hexdigest()

    def step(self, key_or_position: str) -> StepDefinition:
        """A step by its key or its 1-based position (the CLI's STEP argument)."""
        for step in self.steps:
            if step.key == key_or_position:
                return step
        position = parse_id(key_or_position)
        if position is not None and 1 <= position <= len(self.steps):
            return self.steps[position - 1]
        keys = ", ".join(s.key for s in self.steps)
        raise KeyError(f"sequence {self.slug!r} has no step {key_or_position!r} (steps: {keys})")


@dataclass(frozen=True)
class Problem:
    file: str
    step: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: step {self.step}: " if self.step else f"{self.file}: "
        return where + self.message


class SequenceValidationError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems

    def summary(self) -> str:
        """Every problem on one line, without the file name (for a form or an API answer)."""
        return "; ".join((f"step {p.step}: " if p.step else "") + p.message for p in self.problems)


def load_file(path: Path, templates: EmailTemplates) -> SequenceDefinition:
    """One validated definition, or :class:`SequenceValidationError` listing every problem in the file."""
    name = path.name
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SequenceValidationError([Problem(name, None, f"cannot read: {exc}")]) from None
    except yaml.YAMLError as exc:
        raise SequenceValidationError([Problem(name, None, f"not valid YAML: {exc}")]) from None
    return definition_from(raw, path, templates)


def definition_from(raw: Any, path: Path, templates: EmailTemplates) -> SequenceDefinition:
    """Validate plain data shaped like a sequence file (the staff editor builds the same mapping), so a
    definition from the UI passes exactly the checks a YAML file does; ``path`` names it in messages."""
    problems: list[Problem] = []
    name = path.name

    def problem(message: str, step: str | None = None) -> None:
        problems.append(Problem(name, step, message))

    if not isinstance(raw, dict):
        raise SequenceValidationError([Problem(name, None, "must be a mapping with slug, name and steps")])

    for unknown in sorted(set(raw) - TOP_LEVEL_KEYS):
        problem(f"unknown field {unknown!r} (allowed: {', '.join(sorted(TOP_LEVEL_KEYS))})")

    slug = raw.get("slug")
    if not isinstance(slug, str) or not SLUG.match(slug):
        problem(f"slug {slug!r} must be lower-case letters, digits and dashes")
        slug = path.stem
    elif slug != path.stem:
        problem(f"slug {slug!r} must match the file name {path.stem!r}")
    seq_name = raw.get("name")
    if not isinstance(seq_name, str) or not seq_name.strip():
        problem("name is required")
        seq_name = slug
    description = raw.get("description") or ""

    timezone = raw.get("timezone")
    if timezone is not None:
        try:
            zone(str(timezone))
        except ScheduleError as exc:
            problem(f"bad time zone: {exc}")

    window = _window(raw.get("window"), problem)
    holidays = _holidays(raw.get("holidays"), problem)
    review = parse_review(raw, problem)
    steps = _steps(raw.get("steps"), templates, problem)
    status = raw.get("status", "active")
    if status not in FILE_STATUSES:
        problem(f"status {status!r} must be one of {', '.join(FILE_STATUSES)}")
    policy = parse_policy(raw, problem)

    if problems:
        raise SequenceValidationError(problems)
    return SequenceDefinition(
        slug=slug,
        name=seq_name.strip(),
        description=str(description).strip(),
        timezone=str(timezone) if timezone is not None else None,
        window=window,
        steps=tuple(steps),
        source=path,
        policy=policy,
        status=str(status),
        holidays=holidays,
        review=review,
    )


def _window(raw: Any, problem: Any) -> SendWindow | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        problem("window must be a mapping with days, start and end")
        return None
    for unknown in sorted(set(raw) - WINDOW_KEYS):
        problem(f"window: unknown field {unknown!r}")
    try:
        return SendWindow.parse(raw.get("days", "daily"), str(raw.get("start", "")), str(raw.get("end", "")))
    except ScheduleError as exc:
        problem(f"window never opens or is malformed: {exc}")
        return None


def _holidays(raw: Any, problem: Any) -> str | None:
    if raw is None:
        return None
    try:
        return parse_calendar(raw).code
    except CalendarError as exc:
        problem(str(exc))
        return None


def _use_window(raw: Any, label: str, problem: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    problem(
        f"window {raw!r} must be true (the default: follow the sequence's send window) or false "
        "(send at the step's due time, at any hour, day or holiday)",
        label,
    )
    return True


def _steps(raw: Any, templates: EmailTemplates, problem: Any) -> list[StepDefinition]:
    if not isinstance(raw, list) or not raw:
        problem("steps must be a non-empty list")
        return []
    steps: list[StepDefinition] = []
    conditions: dict[str, tuple[Any, str]] = {}  # key -> (raw only_if, label): checked once all are known
    seen: set[str] = set()
    for position, item in enumerate(raw, start=1):
        label = f"#{position}"
        if not isinstance(item, dict):
            problem("must be a mapping with key, delay and template", label)
            continue
        key = item.get("key")
        if isinstance(key, str) and STEP_KEY.match(key):
            label = f"#{position} ({key!r})"
        else:
            problem(f"key {key!r} must be lower-case letters, digits, dashes or underscores", label)
            key = f"step-{position}"
        for unknown in sorted(set(item) - STEP_KEYS):
            problem(f"unknown field {unknown!r}", label)
        if key in seen:
            problem(f"duplicate key {key!r}", label)
        seen.add(key)
        try:
            delay = parse_delay(item.get("delay", ""))
        except ScheduleError as exc:
            problem(f"bad delay: {exc}", label)
            delay = timedelta(0)
        template = item.get("template")
        if not _template_ok(template, templates, label, problem):
            continue
        use_window = _use_window(item.get("window", True), label, problem)
        subject = _subject(item.get("subject"), templates, label, problem)
        if subject is False:
            continue
        variants = parse_variants(
            item.get("variants"),
            label,
            problem,
            lambda name, where, label=label: _template_ok(name, templates, label, problem, where),
            lambda raw, where: _subject(raw, templates, where, problem),
            STEP_KEY,
        )
        winner = parse_winner(item.get("winner"), variants, label, problem)
        if item.get("only_if") is not None:
            conditions[key] = (item["only_if"], label)
        steps.append(
            StepDefinition(
                key, position, delay, template, subject=subject or None, use_window=use_window,
                variants=variants, winner=winner,
            )
        )  # fmt: skip
    known = {s.key: (s.position, tuple(v.key for v in s.variants)) for s in steps}
    for index, step in enumerate(steps):
        if step.key in conditions:
            raw_condition, label = conditions[step.key]
            condition = parse_condition(raw_condition, label, step.position, known, problem)
            steps[index] = replace(step, only_if=condition)
    return steps


def _template_ok(template: Any, templates: EmailTemplates, label: str, problem: Any, where: str = "") -> bool:
    """A usable template folder (present, compiling, inside the sandbox's rules), else reported."""
    prefix = f"{where}: " if where else ""
    if not isinstance(template, str) or not template.strip() or ".." in template:
        problem(f"{prefix}template {template!r} must be a folder under templates/email/", label)
        return False
    missing = templates.exists(template)
    if missing:
        problem(f"{prefix}unknown template {template!r}: missing {', '.join(missing)}", label)
        return False
    return _compiles(lambda: templates.check(template), f"{prefix}template {template!r}", label, problem)


def _subject(raw: Any, templates: EmailTemplates, label: str, problem: Any) -> str | bool | None:
    """A step's subject override folded to one line, None when absent, False when it is bad."""
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw.strip():
        problem("subject must be non-empty text when given", label)
        return False
    subject = " ".join(raw.split())
    if len(subject) > MAX_SUBJECT:
        problem(f"subject is longer than {MAX_SUBJECT} characters", label)
        return False
    compiled = _compiles(lambda: templates.compile_subject(subject), "subject", label, problem)
    return subject if compiled else False


def _compiles(compile_it: Any, what: str, label: str, problem: Any) -> bool:
    """Whether Jinja compiles it inside the sandbox's rules; a refusal or a syntax error is reported."""
    try:
        compile_it()
    except UnsafeTemplateError as exc:
        problem(f"{what} is refused: {exc}", label)
        return False
    except TemplateError as exc:
        problem(f"{what} does not compile: {exc}", label)
        return False
    return True


def load_all(directory: Path, templates: EmailTemplates) -> list[SequenceDefinition]:
    """Every ``*.yaml`` in the directory, validated; one error lists the problems of all files."""
    definitions: list[SequenceDefinition] = []
    problems: list[Problem] = []
    files = sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml"))
    if not files:
        raise SequenceValidationError([Problem(str(directory), None, "no sequence files (*.yaml) found")])
    for path in files:
        try:
            definitions.append(load_file(path, templates))
        except SequenceValidationError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SequenceValidationError(problems)
    return definitions


def find(directory: Path, slug: str, templates: EmailTemplates) -> SequenceDefinition:
    path = directory / f"{slug}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in directory.glob("*.yaml"))) or "none"
        raise SequenceValidationError([Problem(f"{slug}.yaml", None, f"no such sequence (known: {known})")])
    return load_file(path, templates)
