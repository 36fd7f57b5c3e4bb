"""The ``nurture`` command."""

from __future__ import annotations

import os
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


@sequences.command("sync")
def sequences_sync() -> None:
    """Store the sequence files in the database; a new version only where a definition changed."""
    for line in _sync():
        click.echo(line)


def _sync() -> list[str]:
    from nurture.catalog import sync_definition
    from nurture.db import transaction

    definitions = _load_all()
    lines = []
    with transaction() as session:
        for definition in definitions:
            result = sync_definition(session, definition)
            lines.append(f"{result.slug}: {result.action} (version {result.version})")
    return lines


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
def sequences_timeline(slug: str, signup_at: str, tz_name: str | None) -> None:
    """When each step would be sent for someone who confirms at SIGNUP_AT."""
    from nurture.schedule import ScheduleError, localize, resolve_zone, schedule_steps, zone

    definition = _load_one(slug)
    try:
        if tz_name:
            zone(tz_name)
        anchor_raw = datetime.fromisoformat(signup_at)
    except (ScheduleError, ValueError) as exc:
        raise click.BadParameter(str(exc)) from None
    tz = resolve_zone(tz_name, definition.timezone)
    anchor = anchor_raw.astimezone() if anchor_raw.tzinfo else localize(anchor_raw, tz)
    due = schedule_steps(anchor, [s.delay for s in definition.steps], definition.window, tz)
    window = definition.window.describe() if definition.window else "any time"
    click.echo(f"{definition.name} ({slug}); window {window} in {tz.key}")
    click.echo(f"signup  {anchor:%Y-%m-%d %H:%M} UTC   {anchor.astimezone(tz):%a %Y-%m-%d %H:%M %Z}")
    for step, when in zip(definition.steps, due, strict=True):
        local = when.astimezone(tz)
        click.echo(
            f"{step.position:>2}. {step.key:<22} +{_delay(step.delay):<5} "
            f"{when:%Y-%m-%d %H:%M} UTC   {local:%a %Y-%m-%d %H:%M %Z}"
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
def sequences_preview(slug: str, step: str, fmt: str, name: str | None, to_email: str) -> None:
    """Print STEP (key or 1-based position) of SLUG rendered: the full RFC 5322 message by default."""
    rendered, data = _render_step(slug, step, name, to_email)
    if fmt == "html":
        click.echo(rendered.html)
    elif fmt == "text":
        click.echo(f"Subject: {rendered.subject}\n\n{rendered.text}")
    else:
        click.echo(data.decode("utf-8").replace("\r\n", "\n"), nl=False)


def _render_step(slug: str, step_ref: str, name: str | None, to_email: str):  # type: ignore[no-untyped-def]
    from nurture.addresses import InvalidInput, clean_name, normalise_email
    from nurture.mail.context import Recipient, step_message

    definition = _load_one(slug)
    try:
        step = definition.step(step_ref)
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
    )
    return rendered, data


@main.command("send-test")
@click.argument("slug")
@click.argument("step")
@click.option("--to", "to_email", required=True, help="Address to send the test to.")
@click.option("--name", default=None)
def send_test(slug: str, step: str, to_email: str, name: str | None) -> None:
    """Send one step to an address now, through the configured transport (no subscriber is created)."""
    from nurture.mail.transports import SendFailure, transport_from_url

    settings = _settings()
    _, data = _render_step(slug, step, name, to_email)
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
    """Subscribers: add directly (staff)."""


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
        f"{result.reaped.ambiguous} ambiguous"
    )
    if outcomes:
        click.echo("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))


# --- processes ------------------------------------------------------------------------------------------


@main.command("web")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int)
def web(host: str, port: int, workers: int) -> None:
    """The web app (public pages, health checks)."""
    import uvicorn

    _settings()
    uvicorn.run("nurture.web.app:create_app", factory=True, host=host, port=port, workers=workers)


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


def _celery(args: list[str]) -> None:
    from nurture.celery_app import app

    _settings().var_dir.mkdir(parents=True, exist_ok=True)
    app.start(argv=args)


@main.command("run")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def run(host: str, port: int) -> None:
    """Everything in one command: migrate, sync sequences, then web + worker + beat until Ctrl-C."""
    settings = _settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    _upgrade()
    for line in _sync():
        click.echo(line)
    broker = "embedded (var/broker)" if settings.embedded_broker else settings.broker_url.split("@")[-1]
    click.echo(f"database: {settings.resolved_database_url.split('@')[-1]}; broker: {broker}")
    click.echo(f"mail: {settings.resolved_smtp_url.split('@')[-1]}; web: http://{host}:{port}/healthz")
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


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
