"""Sequence versions: drafts, the plan for enrollments in flight, publishing, archiving.

A version is an immutable snapshot of a definition. Enrollments are pinned to the version they joined until
a publish moves them. Publishing a new version offers two choices for the enrollments in flight:

* ``stay`` (the default): each keeps its version and its timetable; only new enrollments use the new one.
* ``move``: each continues at the step key it was waiting for (its *next key*), in the new version: that step
  and every later step of the new version it has not received yet are re-timed with the new delays from the
  last email it was sent (or from when it enrolled), fitted to the new window, at least :data:`MIN_GAP`
  apart, never before now; emails that would be due already are spread by the resume rate limit. An
  enrollment whose next key was removed *stops*: it ends and its open emails are cancelled. Nothing already
  sent is sent again (keys are compared, so a renamed step counts as removed + added).

:func:`nurture.sequences.version_plans.compute_plan` decides, per enrollment, what a publish will do
(``nurture sequences plan``, the staff UI, the API and :func:`publish_version` all call it, so what staff
read is what then happens); this module keeps drafts and applies plans. Publishing
runs in one transaction that holds the sequence row and the open delivery rows of the sequence locked
(``FOR UPDATE``; the dispatcher's claim skips locked rows), so no dispatcher can claim a half-migrated
enrollment. Rows a worker holds (``queued``/``sending``) are left alone: they are the worker's, go out with
the old version's template, and count as that step being sent.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, or_, select, text, update
from sqlalchemy.orm import Session

from nurture.core import clock
from nurture.models import (
    Delivery,
    DeliveryStatus,
    Enrollment,
    EnrollmentStatus,
    Sequence,
    SequenceStatus,
    SequenceVersion,
    Step,
    events,
)
from nurture.sequences import control
from nurture.sequences.control import ControlError
from nurture.sequences.loader import SequenceDefinition
from nurture.sequences.version_plans import (
    OPEN,
    STOP_REASON,
    Migrate,
    Outcome,
    Plan,
    compute_plan,
    shape_of_version,
)
from nurture.staff import accounts


class VersionError(ControlError):
    """A version action that does not apply now; ``code`` is stable for API clients."""


# --- drafts ---------------------------------------------------------------------------------------------


def pending_draft(session: Session, sequence: Sequence) -> SequenceVersion | None:
    """The unpublished version waiting for review, if any (at most one is kept)."""
    return session.scalar(
        select(SequenceVersion)
        .where(SequenceVersion.sequence_id == sequence.id, SequenceVersion.published_at.is_(None))
        .order_by(SequenceVersion.number.desc())
        .limit(1)
    )


def discard_draft(session: Session, draft: SequenceVersion) -> None:
    """Delete an unpublished version: nobody is enrolled in it and no delivery names its steps."""
    session.execute(delete(Step).where(Step.version_id == draft.id))
    session.execute(delete(SequenceVersion).where(SequenceVersion.id == draft.id))
    session.expire_all()


def store_version(
    session: Session,
    sequence: Sequence,
    definition: SequenceDefinition,
    *,
    origin: str,
    author: str | None,
    published: bool,
    now: datetime | None = None,
) -> SequenceVersion:
    """Write ``definition`` as the next version of ``sequence`` (published or a draft); not yet current."""
    number = (
        session.scalar(
            select(func.max(SequenceVersion.number)).where(SequenceVersion.sequence_id == sequence.id)
        )
        or 0
    ) + 1
    window = definition.window
    version = SequenceVersion(
        sequence_id=sequence.id,
        number=number,
        definition_hash=definition.digest(),
        definition=definition.canonical(),
        timezone=definition.timezone,
        window_days=",".join(str(d) for d in sorted(window.days)) if window else None,
        window_start=window.start.strftime("%H:%M") if window else None,
        window_end=window.end.strftime("%H:%M") if window else None,
        holidays=definition.holidays,
        origin=origin,
        author=author,
        published_at=(now or clock.now()) if published else None,
    )
    session.add(version)
    session.flush()
    session.add_all(
        Step(
            version_id=version.id,
            key=step.key,
            position=step.position,
            delay_seconds=int(step.delay.total_seconds()),
            template=step.template,
            subject=step.subject,
            use_window=step.use_window,
        )
        for step in definition.steps
    )
    session.flush()
    session.refresh(version)
    return version


def save_draft(
    session: Session, sequence: Sequence, definition: SequenceDefinition, *, origin: str, author: str | None
) -> SequenceVersion:
    """Store ``definition`` as the sequence's draft, replacing an earlier unpublished one."""
    digest = definition.digest()
    live = sequence.current_version
    if live is not None and live.definition_hash == digest:
        raise VersionError("unchanged", "nothing changed: this is the live version")
    existing = pending_draft(session, sequence)
    if existing is not None:
        if existing.definition_hash == digest:
            return existing
        discard_draft(session, existing)
    return store_version(session, sequence, definition, origin=origin, author=author, published=False)


def save_staff_draft(
    session: Session, sequence: Sequence, definition: SequenceDefinition, actor: accounts.Actor
) -> SequenceVersion:
    """A draft saved by staff (UI or API), audited in the same transaction. Origin "ui": a file sync will
    not overwrite it (docs/staff.md, Versions)."""
    before = {"draft": getattr(pending_draft(session, sequence), "number", None)}
    draft = save_draft(session, sequence, definition, origin="ui", author=actor.email)
    accounts.audit(
        session,
        actor,
        "sequence.draft",
        f"sequence:{sequence.slug}",
        before,
        {"draft": draft.number, "definition": draft.definition},
    )
    return draft


# --- publish and archive ----------------------------------------------------------------------------------


def lock(session: Session, slug: str) -> Sequence:
    try:
        return control.lock(session, slug)
    except ControlError as exc:
        raise VersionError(exc.code, exc.message) from None


def snapshot(sequence: Sequence) -> dict[str, Any]:
    version = sequence.current_version
    return {"status": sequence.status, "version": version.number if version else None}


def publish_version(
    session: Session,
    sequence: Sequence,
    version: SequenceVersion,
    choice: Migrate,
    *,
    per_minute: int,
    now: datetime | None = None,
) -> Plan:
    """Make ``version`` current and apply the plan to the enrollments in flight; the caller holds the
    sequence row locked (:func:`lock`) and owns the transaction."""
    now = now or clock.now()
    if sequence.status == SequenceStatus.archived:
        raise VersionError("conflict", f"sequence {sequence.slug!r} is archived: restore it first")
    plan = compute_plan(
        session, sequence, shape_of_version(version), choice, per_minute=per_minute, now=now, lock=True
    )
    _apply(session, plan, version, now)
    version.published_at = version.published_at or now
    sequence.current_version_id = version.id
    if sequence.status == SequenceStatus.draft:
        sequence.status = SequenceStatus.active
    session.flush()
    session.refresh(sequence)
    events.record(
        session,
        "sequence-published",
        sequence=sequence.slug,
        version=version.number,
        migrate=choice.value,
        **plan.counts(),
    )
    return plan


def _apply(session: Session, plan: Plan, version: SequenceVersion, now: datetime) -> None:
    """Write the plan: a few batched statements, whatever the number of enrollments."""
    step_ids = {s.key: s.id for s in version.steps}
    table = Delivery.__table__
    moves: list[dict[str, Any]] = []
    inserts: list[dict[str, Any]] = []
    moved: list[int] = []
    stopped: list[int] = []
    cancels: dict[str, list[int]] = defaultdict(list)
    for entry in plan.enrollments:
        if entry.outcome is Outcome.stay:
            continue
        reused: set[int] = set()
        if entry.outcome is Outcome.move:
            for new in entry.new:
                existing = entry.open_ids.get(new.key)
                if existing is not None:
                    # The same key's waiting row now names the new version's step: one row per email.
                    moves.append(
                        {"row_id": existing, "new_step": step_ids[new.key], "new_due": new.due_at,
                         "new_status": new.status}
                    )  # fmt: skip
                    reused.add(existing)
                else:
                    inserts.append(
                        {"enrollment_id": entry.enrollment_id, "step_id": step_ids[new.key],
                         "subscriber_id": entry.subscriber_id, "due_at": new.due_at, "status": new.status}
                    )  # fmt: skip
            moved.append(entry.enrollment_id)
            reason = f"not-in-v{version.number}"
        else:
            stopped.append(entry.enrollment_id)
            reason = STOP_REASON
        cancels[reason].extend(i for i in entry.open_ids.values() if i not in reused)
    if moves and session.get_bind().dialect.name == "postgresql":
        _move_rows_postgresql(session, moves)
    elif moves:
        session.execute(
            update(table)
            # (an OR, not IN: an expanding IN cannot be part of an executemany)
            .where(table.c.id == bindparam("row_id"), or_(*(table.c.status == status for status in OPEN)))
            .values(
                step_id=bindparam("new_step"), due_at=bindparam("new_due"), status=bindparam("new_status")
            ),
            moves,
        )
    if inserts:
        session.execute(insert(table), inserts)
    for ids in _chunks(moved):
        session.execute(
            update(Enrollment)
            .where(Enrollment.id.in_(ids))
            .values(version_id=version.id)
            .execution_options(synchronize_session=False)
        )
    for ids in _chunks(stopped):
        session.execute(
            update(Enrollment)
            .where(Enrollment.id.in_(ids))
            .values(status=EnrollmentStatus.cancelled, ended_at=now, end_reason=STOP_REASON)
            .execution_options(synchronize_session=False)
        )
    for reason, row_ids in cancels.items():
        for ids in _chunks(row_ids):
            session.execute(
                update(table)
                .where(table.c.id.in_(ids), table.c.status.in_(OPEN))
                .values(status=DeliveryStatus.cancelled, skip_reason=reason)
            )
    session.flush()


def _move_rows_postgresql(session: Session, moves: list[dict[str, Any]]) -> None:
    """One ``UPDATE ... FROM unnest(arrays)``: four array parameters however many rows. A row-by-row
    executemany, or a compiled VALUES list, costs seconds per 10,000 rows while the publish holds locks."""
    session.execute(
        text(
            "UPDATE deliveries AS d SET step_id = m.step_id, due_at = m.due_at, status = m.status "
            "FROM unnest(CAST(:ids AS integer[]), CAST(:steps AS integer[]), CAST(:dues AS timestamptz[]), "
            "CAST(:statuses AS text[])) AS m(id, step_id, due_at, status) "
            "WHERE d.id = m.id AND d.status IN ('pending', 'held')"
        ),
        {
            "ids": [m["row_id"] for m in moves],
            "steps": [m["new_step"] for m in moves],
            "dues": [m["new_due"] for m in moves],
            "statuses": [str(m["new_status"]) for m in moves],
        },
    )


def _chunks(ids: list[int], size: int = 1000) -> list[list[int]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def archive(session: Session, sequence: Sequence, *, stop: bool, now: datetime | None = None) -> int:
    """No new enrollments; with ``stop`` the ones in flight end too. Returns the emails cancelled."""
    now = now or clock.now()
    if sequence.status == SequenceStatus.archived:
        raise VersionError("conflict", f"sequence {sequence.slug!r} is already archived")
    if sequence.status == SequenceStatus.draft:
        raise VersionError("conflict", f"sequence {sequence.slug!r} is a draft: nothing to archive")
    sequence.status = SequenceStatus.archived
    sequence.paused_at = None
    sequence.activate_at = None
    cancelled = 0
    if stop:
        live = select(Enrollment.id).where(
            Enrollment.sequence_id == sequence.id,
            Enrollment.status.in_((EnrollmentStatus.active, EnrollmentStatus.paused)),
        )
        ids = list(session.scalars(live))
        if ids:
            cancelled = (
                session.execute(
                    update(Delivery)
                    .where(
                        Delivery.enrollment_id.in_(ids),
                        Delivery.status.in_((*OPEN, DeliveryStatus.queued)),
                    )
                    .values(
                        status=DeliveryStatus.cancelled, skip_reason="sequence-archived", lease_until=None
                    )
                    .execution_options(synchronize_session=False)
                ).rowcount
                or 0
            )
            session.execute(
                update(Enrollment)
                .where(Enrollment.id.in_(ids))
                .values(status=EnrollmentStatus.cancelled, ended_at=now, end_reason="sequence-archived")
                .execution_options(synchronize_session=False)
            )
    session.flush()
    events.record(session, "sequence-archived", sequence=sequence.slug, stop=stop, cancelled=cancelled)
    return cancelled


def restore(session: Session, sequence: Sequence) -> None:
    if sequence.status != SequenceStatus.archived:
        raise VersionError("conflict", f"sequence {sequence.slug!r} is not archived")
    sequence.status = SequenceStatus.active
    session.flush()


# --- one staff action, audited ----------------------------------------------------------------------------


def publish(
    session: Session,
    slug: str,
    choice: Migrate,
    *,
    actor: accounts.Actor | None,
    per_minute: int,
    now: datetime | None = None,
) -> tuple[Plan | None, str]:
    """Publish the pending draft of ``slug`` (or restore an archived sequence without one), audited.
    Returns the applied plan (None for a restore) and a one-line summary."""
    sequence = lock(session, slug)
    before = snapshot(sequence)
    draft = pending_draft(session, sequence)
    if draft is None:
        if sequence.status == SequenceStatus.archived:
            restore(session, sequence)
            accounts.audit(session, actor, "sequence.restore", f"sequence:{slug}", before, snapshot(sequence))
            return None, f"{slug}: restored from the archive (version {before['version']})"
        raise VersionError("no_draft", f"sequence {slug!r} has no draft version to publish")
    plan = publish_version(session, sequence, draft, choice, per_minute=per_minute, now=now)
    after = {**snapshot(sequence), "migrate": choice.value, **plan.counts()}
    accounts.audit(session, actor, "sequence.publish", f"sequence:{slug}", before, after)
    return plan, summary(plan)


def summary(plan: Plan) -> str:
    counts = plan.counts()
    return (
        f"{plan.slug}: version {plan.new.number} published ({plan.choice.value}): {counts['move']} moved, "
        f"{counts['stop']} stopped, {counts['stay']} stayed"
    )


def archive_action(
    session: Session, slug: str, *, stop: bool, actor: accounts.Actor | None, now: datetime | None = None
) -> int:
    sequence = lock(session, slug)
    before = snapshot(sequence)
    cancelled = archive(session, sequence, stop=stop, now=now)
    after = {**snapshot(sequence), "stop": stop, "cancelled": cancelled}
    accounts.audit(session, actor, "sequence.archive", f"sequence:{slug}", before, after)
    return cancelled


def plan_for_draft(
    session: Session, sequence: Sequence, choice: Migrate, *, per_minute: int
) -> tuple[SequenceVersion, Plan]:
    draft = pending_draft(session, sequence)
    if draft is None:
        raise VersionError("no_draft", f"sequence {sequence.slug!r} has no draft version")
    return draft, compute_plan(session, sequence, shape_of_version(draft), choice, per_minute=per_minute)


def describe_plan(plan: Plan, draft_of: str | None = None) -> list[str]:
    """The plan as lines of text, for the CLI."""
    live = f"v{plan.live_number}" if plan.live_number else "none"
    new = f"v{plan.new.number}" if plan.new.number else (draft_of or "the file on disk")
    lines = [f"{plan.slug}: live {live} → {new}; {len(plan.enrollments)} enrollments in flight"]
    if plan.diff is not None:
        d = plan.diff
        if d.empty:
            lines.append("  no changes")
        if d.removed:
            lines.append(f"  removed steps: {', '.join(d.removed)}")
        if d.added:
            lines.append(f"  added steps: {', '.join(d.added)}")
        for key, notes in d.changed.items():
            lines.append(f"  changed {key}: {'; '.join(notes)}")
        for note in d.settings:
            lines.append(f"  changed {note}")
    lines.append("  by step key (enrollments waiting for it; under stay | under move):")
    for row in plan.by_key():
        extra = f", {row['sending_now']} with an email being sent now" if row["sending_now"] else ""
        lines.append(f"    {row['key']}: {row['waiting']} waiting{extra}; stay: unchanged | {row['move']}")
    counts = plan.counts()
    lines.append(
        f"  under move: {counts['move']} move, {counts['stop']} stop; under stay: all "
        f"{len(plan.enrollments)} stay. Emails being sent right now are left alone."
    )
    return lines


# --- files ----------------------------------------------------------------------------------------------

_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def as_file_data(version: SequenceVersion) -> dict[str, Any]:
    """A stored version as the mapping a sequence file holds (the loader reads it back to the same digest)."""
    data = dict(version.definition)
    window = data.get("window")
    if window:
        data["window"] = {
            "days": ",".join(_DAY_NAMES[d] for d in window["days"]),
            "start": window["start"],
            "end": window["end"],
        }
    data["steps"] = [dict(step) for step in data.get("steps", [])]
    return data


def to_yaml(version: SequenceVersion) -> str:
    import yaml

    header = (
        f"# version {version.number} of {version.definition.get('slug')}, "
        f"from {'the staff UI' if version.origin == 'ui' else 'a file'}"
        f"{' by ' + version.author if version.author else ''}\n"
    )
    return header + yaml.safe_dump(as_file_data(version), sort_keys=False, allow_unicode=True, width=110)
