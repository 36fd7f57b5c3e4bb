"""Sequences in the database: sync YAML definitions into immutable versions, and read them back.

How YAML files and the staff editor share a sequence (docs/staff.md, "Versions"): every version records its
origin. Sync publishes a changed file as a new version, except when the live version (or a pending draft)
came from the staff UI: then it refuses for that sequence unless forced, so a deploy with a stale file never
silently reverts a change staff published. ``nurture sequences export SLUG`` writes the live version back as
YAML, after which sync finds nothing to do.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from nurture.models import Sequence, SequenceStatus, SequenceVersion
from nurture.sequences.loader import SequenceDefinition


@dataclass(frozen=True)
class SyncResult:
    slug: str
    action: str  # "created", "created as draft", "new version", "new draft", "unchanged", "refused"
    version: int
    detail: str = ""  # the plan summary of a publish, or why sync refused

    def line(self) -> str:
        text = f"{self.slug}: {self.action} (version {self.version})"
        return f"{text}: {self.detail}" if self.detail else text


def sync_definition(
    session: Session,
    definition: SequenceDefinition,
    *,
    migrate: str = "stay",
    draft: bool = False,
    force: bool = False,
    per_minute: int | None = None,
) -> SyncResult:
    """Create the sequence or a new version of it, only when the definition differs from the current one.

    A file with ``status: draft`` (or ``draft=True``) is stored unpublished; otherwise a changed definition is
    published at once, its enrollments in flight handled by ``migrate`` (``stay`` or ``move``).
    """
    from nurture.sequences import version_plans, versions  # both read windows from this module

    as_draft = draft or definition.status == "draft"
    rate = per_minute if per_minute is not None else _rate()
    sequence = session.scalar(select(Sequence).where(Sequence.slug == definition.slug).with_for_update())
    digest = definition.digest()
    if sequence is None:
        sequence = Sequence(
            slug=definition.slug,
            name=definition.name,
            status=SequenceStatus.draft if as_draft else SequenceStatus.active,
        )
        session.add(sequence)
        session.flush()
        version = versions.store_version(
            session, sequence, definition, origin="file", author=None, published=not as_draft
        )
        if not as_draft:
            sequence.current_version_id = version.id
        session.flush()
        return SyncResult(definition.slug, "created as draft" if as_draft else "created", version.number)

    current = sequence.current_version
    pending = versions.pending_draft(session, sequence)
    if current is not None and current.definition_hash == digest:
        if pending is not None and pending.origin == "file" and not as_draft:
            # The file went back to what is live: its own stale draft goes.
            versions.discard_draft(session, pending)
        return SyncResult(definition.slug, "unchanged", current.number)
    if (
        pending is not None
        and pending.definition_hash == digest
        and (as_draft or sequence.status == SequenceStatus.draft)
    ):
        return SyncResult(definition.slug, "unchanged", pending.number, "draft")
    if not force:
        refusal = _ui_conflict(current, pending)
        if refusal:
            return SyncResult(definition.slug, "refused", current.number if current else 0, refusal)
    sequence.name = definition.name
    if pending is not None:
        versions.discard_draft(session, pending)
        sequence = session.get_one(Sequence, sequence.id)
    if as_draft or sequence.status == SequenceStatus.draft:
        version = versions.save_draft(session, sequence, definition, origin="file", author=None)
        return SyncResult(definition.slug, "new draft", version.number, "publish it to make it live")
    version = versions.store_version(
        session, sequence, definition, origin="file", author=None, published=False
    )
    plan = versions.publish_version(
        session, sequence, version, version_plans.Migrate(migrate), per_minute=rate
    )
    counts = plan.counts()
    detail = ""
    if plan.enrollments:
        detail = f"{migrate}: {counts['move']} moved, {counts['stop']} stopped, {counts['stay']} stayed"
    return SyncResult(definition.slug, "new version", version.number, detail)


def _ui_conflict(current: SequenceVersion | None, pending: SequenceVersion | None) -> str:
    if current is not None and current.origin == "ui":
        who = f" by {current.author}" if current.author else ""
        return (
            f"the live version {current.number} was published from the staff UI{who} and the file differs; "
            f"run `nurture sequences export {current.sequence.slug}` to update the file, "
            "or sync --force to publish the file over it"
        )
    if pending is not None and pending.origin == "ui":
        who = f" by {pending.author}" if pending.author else ""
        return (
            f"a draft (version {pending.number}) saved in the staff UI{who} is waiting; publish or discard "
            "it first, or sync --force to replace it with the file"
        )
    return ""


def _rate() -> int:
    from nurture.core.config import get_settings

    return get_settings().limits.resume_rate_per_minute


def get_sequence(session: Session, slug: str) -> Sequence | None:
    return session.scalar(select(Sequence).where(Sequence.slug == slug))
