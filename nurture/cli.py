"""The ``nurture`` command."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import click

from nurture import clock
from nurture.config import ConfigError, Settings, get_settings


def _settings() -> Settings:
    try:
        return get_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """nurture: email nurture sequences, scheduled in the database and sent by Celery workers."""


# --- database -------------------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply every migration (creates the database on first run)."""
    _upgrade()
    click.echo("database is at the latest schema")


def _upgrade() -> None:
    from nurture.db import get_engine
    from nurture.migrate import upgrade

    settings = _settings()
    if settings.resolved_database_url.startswith("sqlite:///"):
        Path(settings.resolved_database_url.removeprefix("sqlite:///")).parent.mkdir(
            parents=True, exist_ok=True
        )
    upgrade(get_engine())


# --- sequences ------------------------------------------------------------------------------------------


@main.group()
def sequences() -> None:
    """Sequence files: validate, sync into the database, list, preview and timeline."""


def _templates():  # type: ignore[no-untyped-def]
    from nurture.mail.templates import EmailTemplates

    return EmailTemplates(_settings().templates_dir)


def _load_all():  # type: ignore[no-untyped-def]
    from nurture.sequences.loader import SequenceValidationError, load_all

    try:
        return load_all(_settings().sequences_dir, _templates())
    except SequenceValidationError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        raise SystemExit(1) from None


def _load_one(slug: str):  # type: ignore[no-untyped-def]
    from nurture.sequences.loader import SequenceValidationError, find

    try:
        return find(_settings().sequences_dir, slug, _templates())
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
    lines = _sync(migrate=migrate, draft=draft, force=force)
    refused = False
    for line in lines:
        refused = refused or ": refused " in line
        click.echo(("warning: " if ": refused " in line else "") + line, err=": refused " in line)
    if refused and strict:
        raise SystemExit(1)


def _sync(migrate: str = "stay", draft: bool = False, force: bool = False) -> list[str]:
    """Sync every file in one transaction: a publish and its migration commit together or not at all."""
    from nurture.catalog import sync_definition
    from nurture.db import transaction
    from nurture.staff import audit

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
    from nurture import versions
    from nurture.catalog import get_sequence
    from nurture.db import transaction

    definition = _load_one(slug)
    with transaction() as session:
        sequence = get_sequence(session, slug)
        if sequence is None:
            click.echo(f"{slug}: not in the database yet; sync creates it (nobody is in flight)")
            return
        shape = versions.shape_of_definition(definition)
        plan = versions.compute_plan(
            session, sequence, shape, versions.Migrate.move, per_minute=_settings().resume_rate_per_minute
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
    from nurture import versions
    from nurture.db import transaction

    try:
        with transaction() as session:
            _plan, line = versions.publish(
                session,
                slug,
                versions.Migrate(migrate),
                actor=None,
                per_minute=_settings().resume_rate_per_minute,
            )
    except versions.VersionError as exc:
        _version_error(exc)
    click.echo(line)


@sequences.command("archive")
@click.argument("slug")
@click.option("--stop", is_flag=True, help="Also end the enrollments in flight and cancel their emails.")
def sequences_archive(slug: str, stop: bool) -> None:
    """No new enrollments; the ones in flight finish (or, with --stop, end now)."""
    from nurture import versions
    from nurture.db import transaction

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
    from nurture import versions
    from nurture.catalog import get_sequence
    from nurture.db import transaction

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

    from nurture.db import transaction
    from nurture.importer import addresses_in, enroll_existing
    from nurture.models import Sequence, Subscriber
    from nurture.staff import audit

    _settings()
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
                    counts = enroll_existing(session, sequence, emails=emails, progress=bar.update)
            else:  # piped or logged: no bar (it would fill the log with carriage returns)
                counts = enroll_existing(session, sequence, emails=emails)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        invalid = len(counts.pop("invalid"))  # type: ignore[arg-type]
        audit(session, None, "sequence.enroll", f"sequence:{slug}", None, {**counts, "invalid": invalid})
    summary = ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in counts.items())
    click.echo(f"{summary}, invalid {invalid}")


@sequences.command("list")
def sequences_list() -> None:
    """Sequences in the database with their current version and enrollment counts."""
    from sqlalchemy import func, select

    from nurture.db import transaction
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
    from nurture.calendars import CalendarError, parse_calendar
    from nurture.schedule import ScheduleError, localize, zone
    from nurture.timetable import Rules

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


def _delay(delta) -> str:  # type: ignore[no-untyped-def]
    from nurture.schedule import format_delay

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
    from nurture.addresses import InvalidInput, clean_name, normalise_email
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
        _settings(),
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


@main.command("send-test")
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
    from nurture.mail.transports import SendFailure, transport_from_url

    settings = _settings()
    _, data = _render_step(slug, step, name, to_email, variant)
    transport = transport_from_url(settings.resolved_smtp_url, local_hostname=settings.from_domain)
    try:
        transport.send(settings.envelope_from, to_email.strip().lower(), data)
    except SendFailure as exc:
        raise click.ClickException(f"not sent: {exc}") from None
    finally:
        transport.close()
    click.echo(f"sent {slug}/{step} to {to_email} via {settings.resolved_smtp_url.split('://')[0]}")


# --- subscribers ----------------------------------------------------------------------------------------


@main.group()
def subscribers() -> None:
    """Subscribers: add, import, export, and staff actions on one person (docs/staff.md)."""


@subscribers.command("add")
@click.argument("email")
@click.option("--name", default=None, help="First name.")
@click.option("--tz", "tz_name", default=None, help="IANA time zone, e.g. America/Chicago.")
@click.option("--sequence", "slug", default=None, help="Enroll in this sequence now.")
def subscribers_add(email: str, name: str | None, tz_name: str | None, slug: str | None) -> None:
    """Add EMAIL as a confirmed subscriber (staff vouch for consent), optionally enrolled in a sequence."""
    from nurture.addresses import InvalidInput
    from nurture.db import transaction
    from nurture.enrollment import EnrollmentError, add_subscriber

    try:
        with transaction() as session:
            subscriber, enrollment = add_subscriber(
                session, email, first_name=name, timezone=tz_name, sequence_slug=slug
            )
            due = [d.due_at for d in enrollment.deliveries] if enrollment else []
    except (InvalidInput, EnrollmentError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"subscriber {subscriber.email} is {subscriber.status}")
    if enrollment is not None:
        click.echo(f"enrolled in {slug}: {len(due)} emails, first due {min(due):%Y-%m-%d %H:%M:%S} UTC")


@subscribers.command("import")
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--sequence", "slug", required=True, help="Enroll every imported subscriber in this sequence.")
@click.option("--consent-source", required=True, help="Where these people consented (kept as their record).")
def subscribers_import(csv_file: Path, slug: str, consent_source: str) -> None:
    """Import CSV_FILE (header email,first_name,timezone; other columns become attributes).

    Bad rows are reported and skipped whole; suppressed, erased and unsubscribed addresses are never re-added.
    Exits 1 if any row was refused."""
    from nurture.db import session_factory
    from nurture.importer import ImportError_, ImportReport, import_rows, read_csv

    _settings()
    try:
        rows, errors = read_csv(csv_file.read_bytes())
        report = ImportReport(errors=errors)
        if sys.stderr.isatty():
            with click.progressbar(length=len(rows), label="importing", file=sys.stderr) as bar:
                import_rows(session_factory(), rows, slug, consent_source, report, progress=bar.update)
        else:  # piped or logged: no bar (it would fill the log with carriage returns)
            import_rows(session_factory(), rows, slug, consent_source, report)
    except ImportError_ as exc:
        raise click.ClickException(str(exc)) from None
    from nurture.db import transaction
    from nurture.staff import audit

    with transaction() as session:
        audit(
            session,
            None,
            "subscribers.import",
            f"sequence:{slug}",
            None,
            {"imported": report.imported, "enrolled_existing": report.enrolled_existing,
             "already_enrolled": report.already_enrolled, "skipped": dict(report.skipped),
             "errors": len(report.errors), "file": csv_file.name, "consent_source": consent_source},
        )  # fmt: skip
    for error in report.errors:
        click.echo(f"line {error.line}: {error.email or '-'}: {error.message}", err=True)
    skipped = ", ".join(f"{reason} {count}" for reason, count in sorted(report.skipped.items())) or "none"
    click.echo(
        f"imported {report.imported}; existing enrolled {report.enrolled_existing}; "
        f"already enrolled {report.already_enrolled}; skipped {skipped}; errors {len(report.errors)}"
    )
    if report.errors:
        raise SystemExit(1)


@subscribers.command("export")
@click.argument("csv_file", type=click.Path(dir_okay=False, path_type=Path))
def subscribers_export(csv_file: Path) -> None:
    """Write every subscriber to CSV_FILE (attributes as a JSON column)."""
    from sqlalchemy import func, select

    from nurture.db import transaction
    from nurture.importer import export_csv
    from nurture.models import Subscriber

    _settings()
    with csv_file.open("w", encoding="utf-8", newline="") as handle, transaction() as session:
        if sys.stderr.isatty():
            total = session.scalar(select(func.count()).select_from(Subscriber)) or 0
            with click.progressbar(length=total, label="exporting", file=sys.stderr) as bar:
                count = export_csv(session, handle, progress=bar.update)
        else:  # piped or logged: no bar (it would fill the log with carriage returns)
            count = export_csv(session, handle)
    click.echo(f"exported {count} subscribers to {csv_file}")


@subscribers.command("erase")
@click.argument("email")
@click.confirmation_option(prompt="Erase this person and everything about them? This cannot be undone.")
def subscribers_erase(email: str) -> None:
    """GDPR erasure of EMAIL: personal data deleted; an anonymous hash keeps them from being re-added."""
    from nurture.db import transaction
    from nurture.importer import erase
    from nurture.staff import audit

    _settings()
    with transaction() as session:
        found = erase(session, email)
        audit(session, None, "subscriber.erase", "subscriber:erased", None, {"found": found})
    click.echo("erased" if found else "no such subscriber; the address is blocked from being added again")


def _subscriber_action(email: str, action: str, **params: object) -> dict[str, object]:
    """One staff action on the subscriber with this address (nurture.subscriber_admin), audited as "cli"."""
    from nurture import subscriber_admin
    from nurture.db import transaction

    _settings()
    try:
        with transaction() as session:
            subscriber = subscriber_admin.find_by_email(session, email)
            return subscriber_admin.act(session, None, subscriber.id, action, **params)
    except subscriber_admin.ActionError as exc:
        raise click.ClickException(exc.message) from None


@subscribers.command("pause")
@click.argument("email")
@click.option(
    "--until", "until", required=True, help="ISO 8601 date-time with offset, e.g. 2026-12-01T09:00Z."
)
def subscribers_pause(email: str, until: str) -> None:
    """Pause EMAIL until a date: every unsent email moves after it; no step is skipped."""
    result = _subscriber_action(email, "pause", until=until.replace("Z", "+00:00"))
    click.echo(f"paused until {result['paused_until']}; {result['moved']} emails moved")


@subscribers.command("resume")
@click.argument("email")
def subscribers_resume(email: str) -> None:
    """End EMAIL's pause now."""
    result = _subscriber_action(email, "resume")
    click.echo(f"resumed; {result['moved']} emails back on schedule")


@subscribers.command("unsubscribe")
@click.argument("email")
def subscribers_unsubscribe(email: str) -> None:
    """Unsubscribe EMAIL: every unsent email is cancelled."""
    result = _subscriber_action(email, "unsubscribe")
    click.echo(f"unsubscribed; {result['cancelled']} unsent emails cancelled")


@subscribers.command("resubscribe")
@click.argument("email")
@click.option("--consent-source", required=True, help="Where the person gave fresh consent (recorded).")
@click.option("--note", default=None, help="Anything else worth keeping with the consent record.")
def subscribers_resubscribe(email: str, consent_source: str, note: str | None) -> None:
    """Resubscribe EMAIL, only with fresh consent; refused for suppressed or erased addresses."""
    result = _subscriber_action(email, "resubscribe", consent_source=consent_source, note=note)
    click.echo(f"resubscribed; {result['reopened']} sequences continue")


@subscribers.command("remove")
@click.argument("email")
@click.option("--sequence", "slug", required=True, help="The sequence to take them out of.")
def subscribers_remove(email: str, slug: str) -> None:
    """Remove EMAIL from one sequence; its unsent emails are cancelled."""
    result = _subscriber_action(email, "remove", sequence=slug)
    click.echo(f"removed from {slug}; {result['cancelled']} unsent emails cancelled")


@subscribers.command("export-one")
@click.argument("email")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the JSON here instead of standard output.")  # fmt: skip
def subscribers_export_one(email: str, out: Path | None) -> None:
    """Everything held about EMAIL as JSON (profile, attributes, consent, enrollments, deliveries, events)."""
    import json

    from nurture import subscriber_admin
    from nurture.db import transaction

    _settings()
    try:
        with transaction() as session:
            subscriber = subscriber_admin.find_by_email(session, email)
            data = subscriber_admin.export_one(session, None, subscriber.id)
    except subscriber_admin.ActionError as exc:
        raise click.ClickException(exc.message) from None
    text = json.dumps(data, indent=2, ensure_ascii=False)
    if out is None:
        click.echo(text)
    else:
        out.write_text(text + "\n", encoding="utf-8")
        click.echo(f"wrote {out}", err=True)


# --- staff users ----------------------------------------------------------------------------------------


@main.group()
def users() -> None:
    """Staff accounts for the web UI and the JSON API (docs/staff.md)."""


def _read_password() -> str:
    if sys.stdin.isatty():
        return click.prompt("password", hide_input=True, confirmation_prompt=True)
    # Piped: the first line is the password (so scripts need no terminal), without its line end.
    return sys.stdin.readline().rstrip("\r\n")


@users.command("create")
@click.argument("email")
@click.option("--role", type=click.Choice(["admin", "editor", "viewer"]), required=True)
def users_create(email: str, role: str) -> None:
    """Create a staff user; the password is prompted for (or read from stdin when it is not a terminal)."""
    from nurture.db import transaction
    from nurture.staff import StaffError, audit, check_password, create_user

    _settings()
    password = _read_password()
    try:
        check_password(password)
        with transaction() as session:
            user = create_user(session, email, role, password)
            audit(session, None, "user.create", f"user:{user.email}", None, {"role": role})
    except StaffError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created {role} {user.email}")


@users.command("token")
@click.argument("email")
def users_token(email: str) -> None:
    """Create an API token for EMAIL and print it once (only its hash is stored)."""
    from nurture.db import transaction
    from nurture.staff import audit, find_user, issue_token

    _settings()
    with transaction() as session:
        user = find_user(session, email)
        if user is None or not user.active:
            raise click.ClickException(f"no active staff user {email.strip().lower()}")
        token = issue_token(session, user)
        audit(session, None, "user.token", f"user:{user.email}")
    click.echo(token)


def _setup_token(settings: Settings) -> str | None:
    """A fresh first-admin setup token while no admin exists (nurture.setup), else None."""
    from datetime import timedelta

    from nurture import setup
    from nurture.db import transaction

    with transaction() as session:
        return setup.issue(session, timedelta(hours=settings.setup_link_hours))


@users.command("setup-link")
def users_setup_link() -> None:
    """Print a one-time link that creates the first admin in the browser (only while no admin exists)."""
    from nurture import setup

    settings = _settings()
    token = _setup_token(settings)
    if token is None:
        raise click.ClickException("an admin exists already: sign in, or ask them for an account")
    click.echo(setup.link(settings.base_url, token))
    hours = settings.setup_link_hours
    click.echo(f"It works once, for {hours} hours, and only until an admin exists.", err=True)


@users.command("list")
def users_list() -> None:
    """Every staff user with role and status."""
    from nurture.db import transaction
    from nurture.staff import list_users

    _settings()
    with transaction() as session:
        for user in list_users(session):
            last = f"{user.last_login_at:%Y-%m-%d %H:%M}" if user.last_login_at else "never"
            status = "active" if user.active else "deactivated"
            click.echo(f"{user.email}\t{user.role}\t{status}\tlast sign-in {last}")


def _change_user(email: str, action: str, change) -> str:  # type: ignore[no-untyped-def]
    from nurture.db import transaction
    from nurture.staff import StaffError, audit, find_user, get_user, user_snapshot

    _settings()
    try:
        with transaction() as session:
            found = find_user(session, email)
            if found is None:
                raise StaffError(f"no staff user {email.strip().lower()}")
            user = get_user(session, found.id, lock=True)
            before = user_snapshot(user)
            change(session, user)
            audit(session, None, f"user.{action}", f"user:{user.email}", before, user_snapshot(user))
            return f"{user.email}: {user.role}, {'active' if user.active else 'deactivated'}"
    except StaffError as exc:
        raise click.ClickException(str(exc)) from None


@users.command("role")
@click.argument("email")
@click.argument("role", type=click.Choice(["admin", "editor", "viewer"]))
def users_role(email: str, role: str) -> None:
    """Change EMAIL's role (the last active admin cannot be demoted)."""
    from nurture.staff import set_role

    click.echo(_change_user(email, "role", lambda session, user: set_role(session, user, role)))


@users.command("deactivate")
@click.argument("email")
def users_deactivate(email: str) -> None:
    """Deactivate EMAIL: their sessions and API tokens stop working at once."""
    from nurture.staff import set_active

    click.echo(_change_user(email, "deactivate", lambda session, user: set_active(session, user, False)))


@users.command("reactivate")
@click.argument("email")
def users_reactivate(email: str) -> None:
    """Reactivate EMAIL."""
    from nurture.staff import set_active

    click.echo(_change_user(email, "reactivate", lambda session, user: set_active(session, user, True)))


# --- dispatch -------------------------------------------------------------------------------------------


@main.command("dispatch")
@click.option("--once", is_flag=True, required=True, help="Run one dispatch tick now and exit.")
@click.option(
    "--inline", is_flag=True, help="Send the claimed emails in this process instead of via workers."
)
def dispatch(once: bool, inline: bool) -> None:
    """Claim due deliveries and hand them to workers (or send them here with --inline)."""
    from nurture.dispatch import dispatch_once

    outcomes: Counter[str] = Counter()
    if inline:
        from nurture.tasks import process_sender

        sender = process_sender()

        def enqueue(token: str, ids: list[int]) -> None:
            outcomes.update(sender.send_batch(token, ids))
    else:
        from nurture.tasks import enqueue_batch as enqueue

    result = dispatch_once(enqueue)
    click.echo(
        f"claimed {result.claimed}; returned {result.reaped.returned} expired leases; "
        f"{result.reaped.ambiguous} unknown outcomes"
    )
    if outcomes:
        click.echo("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    from nurture.webhooks.cli import dispatch_webhooks

    click.echo(dispatch_webhooks(inline))


# --- deliveries whose outcome is unknown ------------------------------------------------------------------


@main.group()
def deliveries() -> None:
    """Sends whose outcome is unknown: list them, and resolve the ones held for a person."""


@deliveries.command("unknown")
@click.option("--held", is_flag=True, help="Only those waiting for a person (NURTURE_AMBIGUOUS_POLICY=hold).")
@click.option("--sequence", "slug", default=None, help="Only this sequence.")
def deliveries_unknown(held: bool, slug: str | None) -> None:
    """List unknown outcomes, newest first, with how each was resolved."""
    from sqlalchemy import select

    from nurture.db import transaction
    from nurture.models import Sequence
    from nurture.unknown_outcomes import unknown_outcomes

    _settings()
    with transaction() as session:
        sequence_id = None
        if slug:
            sequence_id = session.scalar(select(Sequence.id).where(Sequence.slug == slug))
            if sequence_id is None:
                raise click.ClickException(f"no sequence {slug!r}")
        found = unknown_outcomes(session, sequence_id=sequence_id, held_only=held)
    if not found:
        click.echo("no unknown outcomes")
    for u in found:
        click.echo(
            f"delivery {u.delivery_id}  {u.at:%Y-%m-%d %H:%M:%S} UTC  {u.sequence}/{u.step}  "
            f"{u.email or '(erased)'}  {u.resolution}  now {u.status}  ({u.cause})"
        )


def _resolve(delivery_id: int, action: str) -> None:
    from nurture.db import transaction
    from nurture.unknown_outcomes import ResolveError, resolve

    settings = _settings()
    try:
        with transaction() as session:
            result = resolve(session, settings, delivery_id, action, None)
    except ResolveError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"delivery {result['delivery']}: {action} (now {result['status']})")


@deliveries.command("mark-sent")
@click.argument("delivery_id", type=click.IntRange(min=1))
def deliveries_mark_sent(delivery_id: int) -> None:
    """A held delivery did arrive (you checked): record it as sent."""
    _resolve(delivery_id, "mark-sent")


@deliveries.command("send-again")
@click.argument("delivery_id", type=click.IntRange(min=1))
def deliveries_send_again(delivery_id: int) -> None:
    """Send a held delivery again now, with the same Message-ID."""
    _resolve(delivery_id, "send-again")


# --- bounces --------------------------------------------------------------------------------------------


@main.group()
def bounces() -> None:
    """Bounce notifications that arrive by mail (docs/bounces.md)."""


@bounces.command("scan")
@click.argument("maildir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--delete", is_flag=True, help="Delete processed bounces instead of moving them to cur/.")
def bounces_scan(maildir: Path, delete: bool) -> None:
    """Process every unseen message in MAILDIR: suppress hard bounces, count soft ones.

    Processed messages move to cur/ marked seen (bounces are deleted instead with --delete; messages that
    are not bounces, and bounces ignored because they quote no message we sent, are always kept for a person
    to read)."""
    from nurture.bounces import NotAMaildir, scan_maildir

    _settings()
    try:
        tally = scan_maildir(maildir, delete=delete)
    except NotAMaildir as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"hard {tally.hard}, soft {tally.soft}, unrecognised {tally.unrecognised}, "
        f"already processed {tally.duplicate}, ignored {tally.ignored}"
    )
    if tally.suppressed_soft:
        click.echo(f"{tally.suppressed_soft} addresses reached the soft bounce limit and were suppressed")


# --- operations -----------------------------------------------------------------------------------------


@main.command("doctor")
def doctor() -> None:
    """Check settings, database and migrations, broker, SMTP (EHLO, STARTTLS, login) and the DKIM key.

    One line per check (ok, warn or FAIL); exits 1 if any check fails. Makes no DNS lookups."""
    from nurture.doctor import FAIL, Check, run_checks

    try:
        settings = get_settings()
    except ConfigError as exc:
        detail = "; ".join(line.strip() for line in str(exc).splitlines()[1:]) or str(exc)
        click.echo(Check("settings", FAIL, detail).line())
        raise SystemExit(1) from None
    checks = run_checks(settings)
    for check in checks:
        click.echo(check.line())
    if any(check.status == FAIL for check in checks):
        raise SystemExit(1)


@main.group()
def dkim() -> None:
    """DKIM signing keys (docs/operating.md, "Deliverability")."""


@dkim.command("keygen")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--selector", default=None, help="Default: NURTURE_DKIM_SELECTOR (nurture).")
@click.option("--domain", default=None, help="Default: NURTURE_DKIM_DOMAIN, else the domain of NURTURE_FROM.")
@click.option("--bits", default=2048, show_default=True, type=click.IntRange(1024, 4096))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def dkim_keygen(out: Path, selector: str | None, domain: str | None, bits: int, force: bool) -> None:
    """Write a new RSA private key to OUT (mode 0600) and print the DNS TXT record to publish."""
    from pydantic import ValidationError

    from nurture.config import _DNS_NAME
    from nurture.dkim_keys import generate_private_key
    from nurture.mail.dkim import public_record

    try:  # without NURTURE_DKIM_KEY: the key may not exist yet, that is why we are here
        settings: Settings | None = Settings(dkim_key="")
    except ValidationError:
        settings = None
    selector = selector or (settings.dkim_selector if settings else "nurture")
    domain = (domain or (settings.resolved_dkim_domain if settings else "")).lower().rstrip(".")
    for label, value in (("--selector", selector), ("--domain", domain)):
        if not _DNS_NAME.fullmatch(value):
            raise click.BadParameter(f"{value!r} is not a DNS name", param_hint=label)
    pem = generate_private_key(bits)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(out, flags, 0o600)
    except FileExistsError:
        raise click.ClickException(f"{out} exists; use --force to replace it") from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {out}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)  # also when --force replaced a file with looser permissions
        handle.write(pem)
    _print_dkim_record(f"{selector}._domainkey.{domain}", public_record(pem))
    click.echo(f"wrote a {bits}-bit RSA private key to {out} (mode 0600); then set")
    click.echo(f"  NURTURE_DKIM_KEY={out.resolve()}")
    click.echo(f"  NURTURE_DKIM_SELECTOR={selector}")
    click.echo(f"  NURTURE_DKIM_DOMAIN={domain}")


@dkim.command("record")
def dkim_record() -> None:
    """Print the DNS TXT record for the configured key (NURTURE_DKIM_KEY)."""
    from nurture.mail.dkim import DkimSigner

    settings = _settings()
    if not settings.dkim_key:
        raise click.ClickException("NURTURE_DKIM_KEY is not set (`nurture dkim keygen` makes a key)")
    signer = DkimSigner.from_settings(settings)
    _print_dkim_record(signer.dns_name, signer.public_record())


def _print_dkim_record(name: str, value: str) -> None:
    from nurture.mail.dkim import zone_file_line

    click.echo("publish this DNS TXT record:")
    click.echo(f"  name:  {name}")
    click.echo(f"  value: {value}")
    click.echo("as a zone-file line (long values split into 255-character strings):")
    click.echo(f"  {zone_file_line(name, value)}")


# --- processes ------------------------------------------------------------------------------------------

WEB_GRACEFUL_SECONDS = 20  # below docker-compose's stop_grace_period for web (30 s)


@main.command("web")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int)
def web(host: str, port: int, workers: int) -> None:
    """The web app (public pages, health checks)."""
    import uvicorn

    from nurture.logs import logging_config

    settings = _settings()
    uvicorn.run(
        "nurture.web.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # Every uvicorn worker process applies this: JSON lines in production, request ids on access lines.
        log_config=logging_config(settings, "web"),
        # SIGTERM: stop accepting, let requests in flight finish for up to this long, then exit.
        timeout_graceful_shutdown=WEB_GRACEFUL_SECONDS,
    )


@main.command("worker", context_settings={"ignore_unknown_options": True})
@click.option("--concurrency", "-c", default=None, type=int, help="Worker processes (default: CPU count).")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(concurrency: int | None, celery_args: tuple[str, ...]) -> None:
    """A Celery worker that sends email (extra arguments go to `celery worker`)."""
    args = ["worker", "--loglevel", "INFO"]
    if concurrency:
        args += ["--concurrency", str(concurrency)]
    _celery(args + list(celery_args))


@main.command("beat")
def beat() -> None:
    """The scheduler that triggers a dispatch tick every NURTURE_DISPATCH_INTERVAL seconds."""
    _celery(["beat", "--loglevel", "INFO"])


# `nurture run` sets this for its worker and beat: it has printed its own summary, so Celery's start-up
# banners and its warning about running as root (said once in that summary) would only bury it.
QUIET_ENV = "NURTURE_QUIET_START"


def _celery(args: list[str]) -> None:
    from nurture.celery_app import app

    _settings().var_dir.mkdir(parents=True, exist_ok=True)
    if os.environ.get(QUIET_ENV) == "1":
        import warnings

        from celery.exceptions import SecurityWarning

        warnings.filterwarnings("ignore", category=SecurityWarning)
        args = ["--quiet", *args]
    app.start(argv=args)


@main.command("run")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def run(host: str, port: int) -> None:
    """Everything in one command: migrate, sync sequences, then web + worker + beat until Ctrl-C."""
    from nurture.run_summary import summary

    settings = _settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    _upgrade()
    for line in _sync():
        click.echo(line)  # a refused sequence is reported and keeps its live version; the rest start
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    click.echo(summary(settings, base, _setup_token(settings)))
    os.environ[QUIET_ENV] = "1"
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Worker-side metrics (send latency) reach the web's /metrics through files shared by all children.
        metrics_dir = (settings.var_dir / "metrics").resolve()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    exe = [sys.executable, "-m", "nurture.cli"]
    commands = {
        "web": [*exe, "web", "--host", host, "--port", str(port)],
        "worker": [*exe, "worker"],
        "beat": [*exe, "beat"],
    }
    children = {name: subprocess.Popen(cmd) for name, cmd in commands.items()}
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    exit_code = 0
    while not stopping:
        for name, child in children.items():
            if child.poll() is not None:
                click.echo(f"{name} exited with {child.returncode}; stopping the rest", err=True)
                exit_code = child.returncode or 1
                stopping = True
        time.sleep(0.5)
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)  # warm shutdown: workers finish their current task
    deadline = time.monotonic() + 30
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
    sys.exit(exit_code)


# --- webhooks (nurture/webhooks/cli.py) -----------------------------------------------------------------

from nurture.webhooks.cli import webhooks as _webhooks  # noqa: E402  (registered last, like the others)

main.add_command(_webhooks)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
