"""What ``nurture run`` prints before it starts the processes: what runs, where mail goes, the URLs to open,
and, on a fresh install, the one-time link that creates the first admin.

It replaces the Celery banners a newcomer used to meet: those are silenced for the worker and beat that
``run`` starts (``--quiet``), and this says what they said, in the words of this project.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from nurture.core.config import Environment, Settings
from nurture.staff import first_admin


def _without_password(url: str) -> str:
    """A connection URL fit to print: the password (if any) replaced."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _relative(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve())) + "/"
    except ValueError:
        return path


def mail_destination(settings: Settings) -> str:
    url = settings.resolved_smtp_url
    parts = urlsplit(url)
    if parts.scheme == "maildir":
        folder = _relative(parts.netloc + parts.path)
        return f"the dev mailbox, a Maildir in {folder} (nothing leaves this machine)"
    if parts.scheme == "memory":
        return "memory (tests only: nothing is kept)"
    return f"SMTP at {parts.hostname}:{parts.port or ''}".rstrip(":")


def summary(settings: Settings, base_url: str, setup_token: str | None) -> str:
    """The lines ``nurture run`` prints, as one block of text."""
    development = settings.env is Environment.development
    broker = _without_password(settings.broker.broker_url)
    if settings.embedded_broker:
        broker = "embedded (var/broker/, no server)"
    maildir = urlsplit(settings.resolved_smtp_url).scheme == "maildir"
    lines = [
        "",
        f"nurture is starting ({settings.env.value}): web, worker (sends email) and beat (every "
        f"{settings.broker.dispatch_interval:g} s it hands due emails to the worker)",
        f"  database  {_without_password(settings.resolved_database_url)}",
        f"  broker    {broker}",
        f"  mail      {mail_destination(settings)}",
        "",
        "Open:",
        f"  {base_url}/            start page",
        f"  {base_url}/subscribe   signup form",
        f"  {base_url}/admin/      staff area",
    ]
    if development and maildir:
        lines.append(f"  {base_url}/dev/mail    dev mailbox: every email sent")
    if setup_token is not None:
        lines += [
            "",
            "No staff account yet. Create the first admin in your browser with this one-time link",
            "(it works once, and only until an admin exists):",
            f"  {first_admin.link(base_url, setup_token)}",
        ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        lines += ["", "Running as root: fine on a throwaway machine; in production use an unprivileged user."]
    lines += ["", "Ctrl-C stops everything.", ""]
    return "\n".join(lines)
