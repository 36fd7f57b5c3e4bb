"""Sequences in the database: sync YAML definitions into immutable versions, and read them back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import time

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from nurture.models import Sequence, SequenceVersion, Step
from nurture.schedule import SendWindow
from nurture.sequences.loader import SequenceDefinition


@dataclass(frozen=True)
class SyncResult:
    slug: str
    action: str  # "created", "new version", "unchanged"
    version: int


def sync_definition(session: Session, definition: SequenceDefinition) -> SyncResult:
    """Create the sequence or a new version of it, only when the definition differs from the current one."""
    sequence = session.scalar(select(Sequence).where(Sequence.slug == definition.slug).with_for_update())
    digest = definition.digest()
    if sequence is None:
        sequence = Sequence(slug=definition.slug, name=definition.name)
        session.add(sequence)
        session.flush()
        action = "created"
    else:
        current = sequence.current_version
        if current is not None and current.definition_hash == digest:
            return SyncResult(definition.slug, "unchanged", current.number)
        action = "new version"
        sequence.name = definition.name
    number = (
        session.scalar(
            select(func.max(SequenceVersion.number)).where(SequenceVersion.sequence_id == sequence.id)
        )
        or 0
    ) + 1
    version = SequenceVersion(
        sequence_id=sequence.id,
        number=number,
        definition_hash=digest,
        definition=definition.canonical(),
        timezone=definition.timezone,
        window_days=",".join(str(d) for d in sorted(definition.window.days)) if definition.window else None,
        window_start=definition.window.start.strftime("%H:%M") if definition.window else None,
        window_end=definition.window.end.strftime("%H:%M") if definition.window else None,
    )
    session.add(version)
    session.flush()
    for step in definition.steps:
        session.add(
            Step(
                version_id=version.id,
                key=step.key,
                position=step.position,
                delay_seconds=int(step.delay.total_seconds()),
                template=step.template,
            )
        )
    sequence.current_version_id = version.id
    session.flush()
    return SyncResult(definition.slug, action, number)


def window_of(version: SequenceVersion) -> SendWindow | None:
    if not version.window_days or not version.window_start or not version.window_end:
        return None
    return SendWindow(
        days=frozenset(int(d) for d in version.window_days.split(",")),
        start=time.fromisoformat(version.window_start),
        end=time.fromisoformat(version.window_end),
    )


def get_sequence(session: Session, slug: str) -> Sequence | None:
    return session.scalar(select(Sequence).where(Sequence.slug == slug))
