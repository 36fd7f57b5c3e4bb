"""``nurture subscribers ...``: add, import, export, erase, and what staff may do to one person."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from nurture.cli.common import load_settings


@click.group()
def subscribers() -> None:
    """Subscribers: add, import, export, and staff actions on one person (docs/staff.md)."""


@subscribers.command("add")
@click.argument("email")
@click.option("--name", default=None, help="First name.")
@click.option("--tz", "tz_name", default=None, help="IANA time zone, e.g. America/Chicago.")
@click.option("--sequence", "slug", default=None, help="Enroll in this sequence now.")
def subscribers_add(email: str, name: str | None, tz_name: str | None, slug: str | None) -> None:
    """Add EMAIL as a confirmed subscriber (staff vouch for consent), optionally enrolled in a sequence."""
    from nurture.core.addresses import InvalidInput
    from nurture.core.db import transaction
    from nurture.subscribers.enrollment import EnrollmentError, add_subscriber

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
    from nurture.subscribers.import_files import ImportError_, ImportReport, read_csv
    from nurture.subscribers.importer import import_and_audit

    load_settings()
    try:
        rows, errors = read_csv(csv_file.read_bytes())
        report = ImportReport(errors=errors)
        if sys.stderr.isatty():
            with click.progressbar(length=len(rows), label="importing", file=sys.stderr) as bar:
                progress = bar.update
                import_and_audit(
                    None, rows, report, slug, consent_source, progress=progress, file_name=csv_file.name
                )
        else:  # piped or logged: no bar (it would fill the log with carriage returns)
            import_and_audit(None, rows, report, slug, consent_source, file_name=csv_file.name)
    except ImportError_ as exc:
        raise click.ClickException(str(exc)) from None
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

    from nurture.core.db import transaction
    from nurture.models import Subscriber
    from nurture.subscribers.exports import export_csv

    load_settings()
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
    from nurture.core.db import transaction
    from nurture.staff.accounts import audit
    from nurture.subscribers.erasure import erase

    load_settings()
    with transaction() as session:
        found = erase(session, email)
        audit(session, None, "subscriber.erase", "subscriber:erased", None, {"found": found})
    click.echo("erased" if found else "no such subscriber; the address is blocked from being added again")


def _subscriber_action(email: str, action: str, **params: object) -> dict[str, object]:
    """One staff action on the subscriber with this address (nurture.subscribers.staff_actions), audited as
    "cli"."""
    from nurture.core.db import transaction
    from nurture.subscribers import staff_actions

    load_settings()
    try:
        with transaction() as session:
            subscriber = staff_actions.find_by_email(session, email)
            return staff_actions.act(session, None, subscriber.id, action, **params)
    except staff_actions.ActionError as exc:
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

    from nurture.core.db import transaction
    from nurture.subscribers import staff_actions

    load_settings()
    try:
        with transaction() as session:
            subscriber = staff_actions.find_by_email(session, email)
            data = staff_actions.export_one(session, None, subscriber.id)
    except staff_actions.ActionError as exc:
        raise click.ClickException(exc.message) from None
    text = json.dumps(data, indent=2, ensure_ascii=False)
    if out is None:
        click.echo(text)
    else:
        out.write_text(text + "\n", encoding="utf-8")
        click.echo(f"wrote {out}", err=True)
