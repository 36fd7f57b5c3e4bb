"""The front door: ``GET /`` says what this server is and where to go (the signup form, the staff UI and, in
development, the dev mailbox); ``/dev/mail`` shows the development Maildir in the browser.

The mailbox pages exist only with ``NURTURE_ENV=development`` and mail going to a Maildir (what ``make run``
does): anywhere else they answer 404, since in production the mail is real people's and goes out by SMTP.
"""

from __future__ import annotations

import email
import email.policy
import mailbox
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from nurture.core.config import Environment, Settings
from nurture.web.public.pages import render

router = APIRouter(include_in_schema=False)
MAILBOX_LIST_LIMIT = 200  # newest first; older ones are still in the folder
_KEY = re.compile(r"[A-Za-z0-9._-]{1,200}")  # a Maildir key as mailbox.Maildir makes them


def dev_maildir(settings: Settings) -> Path | None:
    """The development Maildir, or None when there is none to show (not development, or mail goes out)."""
    if settings.env is not Environment.development:
        return None
    url = urlsplit(settings.resolved_smtp_url)
    if url.scheme != "maildir":
        return None
    return Path(unquote(url.netloc + url.path))


@router.get("/")
def landing(request: Request) -> HTMLResponse:
    settings: Settings = request.app.state.settings
    return render(
        request,
        "landing.html",
        mailbox=dev_maildir(settings) is not None,
        development=settings.env is Environment.development,
    )


@dataclass(frozen=True)
class Letter:
    key: str
    subject: str
    to: str
    sender: str
    date: datetime | None


def _letters(folder: Path) -> list[Letter]:
    box = mailbox.Maildir(str(folder), create=False, factory=None)
    found = []
    for key in box.iterkeys():  # (iterating a Mailbox yields messages, not keys)
        try:
            with box.get_file(key) as handle:
                headers = email.message_from_binary_file(handle, policy=email.policy.default)
        except (OSError, KeyError):  # removed while we listed: not an error
            continue
        try:
            date = parsedate_to_datetime(str(headers.get("Date", "")))
        except (TypeError, ValueError):
            date = None
        subject, to, sender = (str(headers.get(name, "")) for name in ("Subject", "To", "From"))
        found.append(Letter(key, subject, to, sender, date))
    found.sort(key=lambda letter: letter.date or datetime.min.replace(tzinfo=UTC), reverse=True)
    return found[:MAILBOX_LIST_LIMIT]


def _not_here(request: Request) -> HTMLResponse:
    return render(request, "not_found.html", status_code=404)


@router.get("/dev/mail")
async def mailbox_page(request: Request) -> HTMLResponse:
    folder = dev_maildir(request.app.state.settings)
    if folder is None:
        return _not_here(request)
    letters = await run_in_threadpool(_letters, folder) if (folder / "new").is_dir() else []
    return render(request, "mailbox.html", letters=letters, folder=str(folder))


def _read(folder: Path, key: str) -> EmailMessage | None:
    box = mailbox.Maildir(str(folder), create=False, factory=None)
    try:
        with box.get_file(key) as handle:
            message = email.message_from_binary_file(handle, policy=email.policy.default)
    except (OSError, KeyError):
        return None
    assert isinstance(message, EmailMessage)
    return message


@router.get("/dev/mail/{key}")
async def letter_page(request: Request, key: str) -> HTMLResponse:
    folder = dev_maildir(request.app.state.settings)
    if folder is None or not _KEY.fullmatch(key):
        return _not_here(request)
    message = await run_in_threadpool(_read, folder, key)
    if message is None:
        return _not_here(request)
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    return render(
        request,
        "letter.html",
        subject=str(message.get("Subject", "")),
        headers=[(name, str(value)) for name, value in message.items() if name.lower() != "dkim-signature"],
        text=text.get_content() if text is not None else "",
        html=html.get_content() if html is not None else "",
    )
