"""``nurture sequences ...`` and ``nurture send-test``: validate, sync, plan, publish, export, enroll, the
timeline, previews and test sends."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import click

from nurture.cli.common import load_settings
from nurture.core import clock


@click.group()
def sequences() -> None:
    """Sequence files: validate, sync into the database, list, preview and timeline."""


def _templates():  # type: ignore[no-untyped-def]
    from nurture.mail.templates import EmailTemplates

    return EmailTemplates(load_settings().templates_dir)


def _load_all():  # type: ignore[no-untyped-def]
    from nurture.sequences.loader import SequenceValidationError, load_all

    try:
        return load_all(load_settings().sequences_dir, _templates())
    except SequenceValidationError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        raise SystemExit(1) from None


def _load_one(slug: str):  # type: ignore[no-untyped-def]
    from nurture.sequences.loader import SequenceValidationError, find

    try:
        return find(load_settings().sequences_dir, slug, _templates())
    except SequenceValidationError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        raise SystemExit(1) from None


@sequences.command("validate")
def sequences_validate() -> None:
    """Check every sequence file; each problem names the file, the step and what is wrong."""
    definitions = _load_all()
    for definition in definitions:
        click.echo(f"ok: {definition.source.name} ({definition.slug}, {len(definition.steps)} steps)")


MIGRATE_HELP = (
    "Enrollments in flight: 'stay' keeps them on their version (safe default); 'move' continues each at the "
    "same step key in the new version, re-timed (see `nurture sequences plan SLUG`)."
)


@sequences.command("sync")
@click.option(
    "--migrate", type=click.Choice(["stay", "move"]), default="stay", show_default=True, help=MIGRATE_HELP
)
@click.option("--draft", is_flag=True, help="Store changed files as unpublished drafts (publish them later).")
@click.option("--force", is_flag=True, help="Publish files over versions (or drafts) made in the staff UI.")
@click.option("--strict", is_flag=True, help="Exit 1 when a file was refused (for CI checks).")
def sequences_sync(migrate: str, draft: bool, force: bool, strict: bool) -> None:
    """Store the sequence files in the database; a new version only where a definition changed.

    A file is refused, and its sequence keeps the version staff published in the UI, when that version (or a
    UI draft) differs from it; the exit status stays 0 so a deploy's migrate step does not stop everything
    over a safe outcome, unless --strict."""
    lines = sync_files(migrate=migrate, draft=draft, force=force)
    refused = False
    for line in lines:
        refused = refused or ": refused " in line
        click.echo(("warning: " if ": refused " in line else "") + line, err=": refused " in line)
    if refused and strict:
        raise SystemExit(1)


def sync_files(migrate: str = "stay", draft: bool = False, force: bool = False) -> list[str]:
    """Sync every file in one transaction: a publish and its migration commit together or not at all."""
    from nurture.core.db import transaction
    from nurture.sequences.sync import sync_definition
    from nurture.staff.accounts import audit

    definitions = _load_all()
    lines = []
    with transaction() as session:
        for definition in definitions:
            result = sync_definition(session, definition, migrate=migrate, draft=draft, force=force)
            if result.action not in ("unchanged", "refused"):
                audit(session, None, "sequence.sync", f"sequence:{result.slug}", None, result.__dict__)
            lines.append(result.line())
    return lines


def _version_error(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    raise SystemExit(1)


@sequences.command("plan")
@click.argument("slug")
def sequences_plan(slug: str) -> None:
    """What publishing the file on disk would do to the enrollments in flight, by step key."""
    from nurture.core.db import transaction
    from nurture.sequences import version_plans, versions
    from nurture.sequences.sync import get_sequence

    definition = _load_one(slug)
    with transaction() as session:
        sequence = get_sequence(session, slug)
        if sequence is None:
            click.echo(f"{slug}: not in the database yet; sync creates it (nobody is in flight)")
            return
        shape = version_plans.shape_of_definition(definition)
        plan = version_plans.compute_plan(
            session,
            sequence,
            shape,
            version_plans.Migrate.move,
            per_minute=load_settings().limits.resume_rate_per_minute,
        )
        for line in versions.describe_plan(plan):
            click.echo(line)
        if sequence.current_version and sequence.current_version.definition_hash == definition.digest():
            click.echo("  the file matches the live version: sync will change nothing")


@sequences.command("publish")
@click.argument("slug")
@click.option(
    "--migrate", type=click.Choice(["stay", "move"]), default="stay", show_default=True, help=MIGRATE_HELP
)
def sequences_publish(slug: str, migrate: str) -> None:
    """Publish the sequence's draft version (or restore an archived sequence)."""
    from nurture.core.db import transaction
    from nurture.sequences import version_plans, versions

    try:
        with transaction() as session:
            _plan, line = versions.publish(
                session,
                slug,
                version_plans.Migrate(migrate),
                actor=None,
                per_minute=load_settings().limits.resume_rate_per_minute,
            )
    except versions.VersionError as exc:
        _version_error(exc)
    click.echo(line)


@sequences.command("archive")
@click.argument("slug")
@click.option("--stop", is_flag=True, help="Also end the enrollments in flight and cancel their emails.")
def sequences_archive(slug: str, stop: bool) -> None:
    """No new enrollments; the ones in flight finish (or, with --stop, end now)."""
    from nurture.core.db import transaction
    from nurture.sequences import versions

    try:
        with transaction() as session:
            cancelled = versions.archive_action(session, slug, stop=stop, actor=None)
    except versions.VersionError as exc:
        _version_error(exc)
    outcome = f"{cancelled} emails cancelled" if stop else "in-flight enrollments finish"
    click.echo(f"{slug}: archived; {outcome}")


@sequences.command("export")
@click.argument("slug")
@click.option("--draft", is_flag=True, help="Export the pending draft instead of the live version.")
def sequences_export(slug: str, draft: bool) -> None:
    """Print a version as YAML (e.g. to bring a file up to date with an edit published from the UI)."""
    from nurture.core.db import transaction
    from nurture.sequences import versions
    from nurture.sequences.sync import get_sequence

    with transaction() as session:
        sequence = get_sequence(session, slug)
        version = None
        if sequence is not None:
            version = versions.pending_draft(session, sequence) if draft else sequence.current_version
        if version is None:
            which = "draft" if draft else "live"
            _version_error(versions.VersionError("not_found", f"no {which} version of {slug!r}"))
        click.echo(versions.to_yaml(version), nl=False)


@sequences.command("enroll")
@click.argument("slug")
@click.option("--all", "everyone", is_flag=True, help="Every active subscriber not yet in SLUG.")
@click.option(
    "--file",
    "address_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Addresses one a line, or a CSV with an email column.",
)
def sequences_enroll(slug: str, everyone: bool, address_file: Path | None) -> None:
    """Enroll subscribers who are already here in SLUG, with a progress bar on a terminal. Unsubscribed,
    unconfirmed, suppressed and already enrolled people are skipped and counted."""
    from sqlalchemy import func, select

    from nurture.core.db import transaction
    from nurture.models import Sequence, Subscriber
    from nurture.subscribers.importer import addresses_in, enroll_and_audit

    load_settings()
    if everyone == (address_file is not None):
        raise click.UsageError("give either --all or --file FILE")
    emails = None if address_file is None else addresses_in(address_file.read_bytes())
    with transaction() as session:
        sequence = session.scalar(select(Sequence).where(Sequence.slug == slug))
        if sequence is None:
            raise click.ClickException(f"no sequence {slug!r}")
        total = len(emails) if emails is not None else None
        try:
            if sys.stderr.isatty():
                if total is None:
                    total = session.scalar(select(func.count()).where(Subscriber.status == "active")) or 0
                with click.progressbar(length=total, label="enrolling", file=sys.stderr) as bar:
                    counts = enroll_and_audit(session, None, sequence, emails=emails, progress=bar.update)
            else:  # piped or logged: no bar (it would fill the log with carriage returns)
                counts = enroll_and_audit(session, None, sequence, emails=emails)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        invalid = len(counts.pop("invalid"))  # type: ignore[arg-type]
    summary = ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in counts.items())
    click.echo(f"{summary}, invalid {invalid}")


@sequences.command("list")
def sequences_list() -> None:
    """Sequences in the database with their current version and enrollment counts."""
    from sqlalchemy import func, select

    from nurture.core.db import transaction
    from nurture.models import Enrollment, Sequence

    with transaction() as session:
        counts = dict(
            session.execute(
                select(Enrollment.sequence_id, func.count()).group_by(Enrollment.sequence_id)
            ).all()
        )
        rows = session.scalars(select(Sequence).order_by(Sequence.slug)).all()
        if not rows:
            click.echo("no sequences in the database: run `nurture sequences sync`")
        for sequence in rows:
            version = sequence.current_version
            steps = len(version.steps) if version else 0
            click.echo(
                f"{sequence.slug:<24} v{version.number if version else '-':<4} {sequence.status:<9} "
                f"{steps} steps  {counts.get(sequence.id, 0)} enrolled  {sequence.name}"
            )


@sequences.command("timeline")
@click.argument("slug")
@click.option("--signup-at", "signup_at", required=True, help="ISO date-time; naive means local to --tz.")
@click.option("--tz", "tz_name", default=None, help="Subscriber's IANA time zone (default: the sequence's).")
@click.option(
    "--country",
    default=None,
    help="Subscriber's holiday country, e.g. US or GB-SCT (default: the sequence's holidays).",
)
def sequences_timeline(slug: str, signup_at: str, tz_name: str | None, country: str | None) -> None:
    """When each step would be sent for someone who confirms at SIGNUP_AT, and what moved each email."""
    from nurture.sequences.holidays import CalendarError, parse_calendar
    from nurture.sequences.schedule import ScheduleError, localize, zone
    from nurture.sequences.timetable import Rules

    definition = _load_one(slug)
    try:
        if tz_name:
            zone(tz_name)
        if country:
            parse_calendar(country)
        anchor_raw = datetime.fromisoformat(signup_at)
    except (ScheduleError, CalendarError, ValueError) as exc:
        raise click.BadParameter(str(exc)) from None
    table = Rules.of_definition(definition).for_subscriber(tz_name, country)
    tz = table.tz
    anchor = anchor_raw.astimezone() if anchor_raw.tzinfo else localize(anchor_raw, tz)
    placements = table.plan(anchor, definition.steps)
    window = definition.window.describe() if definition.window else "any time"
    holidays = f"; closed on {table.calendar.code} public holidays" if table.calendar else ""
    click.echo(f"{definition.name} ({slug}); window {window} in {tz.key}{holidays}")
    click.echo(f"signup  {anchor:%Y-%m-%d %H:%M} UTC   {anchor.astimezone(tz):%a %Y-%m-%d %H:%M %Z}")
    for step, placement in zip(definition.steps, placements, strict=True):
        when = placement.due
        local = when.astimezone(tz)
        note = placement.note()
        click.echo(
            f"{step.position:>2}. {step.key:<22} +{_delay(step.delay):<5} "
            f"{when:%Y-%m-%d %H:%M} UTC   {local:%a %Y-%m-%d %H:%M %Z}" + (f"   [{note}]" if note else "")
        )
    from nurture.delivery.frequency_cap import timeline_notice

    if notice := timeline_notice(load_settings().mail.frequency_cap_hours):
        click.echo(notice)


def _delay(delta) -> str:  # type: ignore[no-untyped-def]
    from nurture.sequences.schedule import format_delay

    return format_delay(delta)


@sequences.command("preview")
@click.argument("slug")
@click.argument("step")
@click.option("--format", "fmt", type=click.Choice(["eml", "html", "text"]), default="eml", show_default=True)
@click.option(
    "--name", default=None, help="First name to personalise with (default: none, neutral greeting)."
)
@click.option("--to", "to_email", default="preview@example.com", show_default=True)
@click.option(
    "--variant",
    default=None,
    help="The A/B variant to render (default: the step as written; docs/experiments.md).",
)
def sequences_preview(
    slug: str, step: str, fmt: str, name: str | None, to_email: str, variant: str | None
) -> None:
    """Print STEP (key or 1-based position) of SLUG rendered: the full RFC 5322 message by default."""
    rendered, data = _render_step(slug, step, name, to_email, variant)
    if fmt == "html":
        click.echo(rendered.html)
    elif fmt == "text":
        click.echo(f"Subject: {rendered.subject}\n\n{rendered.text}")
    else:
        click.echo(data.decode("utf-8").replace("\r\n", "\n"), nl=False)


def _render_step(  # type: ignore[no-untyped-def]
    slug: str, step_ref: str, name: str | None, to_email: str, variant: str | None = None
):
    from nurture.core.addresses import InvalidInput, clean_name, normalise_email
    from nurture.mail.context import Recipient, step_message

    definition = _load_one(slug)
    try:
        step = definition.step(step_ref)
        if variant is not None:
            step = step.variant(variant)  # its subject and template overrides applied
        recipient = Recipient(normalise_email(to_email), clean_name(name), public_id="preview")
    except KeyError as exc:
        raise click.BadParameter(str(exc.args[0])) from None
    except InvalidInput as exc:
        raise click.BadParameter(str(exc)) from None
    rendered, data, _ = step_message(
        load_settings(),
        _templates(),
        recipient,
        template=step.template,
        sequence_name=definition.name,
        step_number=step.position,
        step_count=len(definition.steps),
        delivery_id=0,
        date=clock.now(),
        subject=step.subject,
        reviewed_by=definition.review.by,
        reviewed_on=definition.review.on_text,
    )
    return rendered, data


@click.command("send-test")
@click.argument("slug")
@click.argument("step")
@click.option("--to", "to_email", required=True, help="Address to send the test to.")
@click.option("--name", default=None)
@click.option(
    "--variant",
    default=None,
    help="The A/B variant to render (default: the step as written; docs/experiments.md).",
)
def send_test(slug: str, step: str, to_email: str, name: str | None, variant: str | None) -> None:
    """Send one step to an address now, through the configured transport (no subscriber is created)."""
    from nurture.mail.factory import transport_from_url
    from nurture.mail.transports import SendFailure

    settings = load_settings()
    _, data = _render_step(slug, step, name, to_email, variant)
    transport = transport_from_url(settings.resolved_smtp_url, local_hostname=settings.mail.from_domain)
    try:
        transport.send(settings.mail.envelope_from, to_email.strip().lower(), data)
    except SendFailure as exc:
        raise click.ClickException(f"not sent: {exc}") from None
    finally:
        transport.close()
    click.echo(f"sent {slug}/{step} to {to_email} via {settings.resolved_smtp_url.split('://')[0]}")
