"""Turn a rendered email into RFC 5322 bytes with the headers bulk senders need.

Every message has the same shape (a ``multipart/alternative`` with a quoted-printable UTF-8 text and HTML
part), so it is written directly as bytes: the body encoding is ``binascii.b2a_qp`` (C) and only headers that
need RFC 2047 encoding or folding (non-ASCII, or too long for one line) go through the ``email`` package.
The ``EmailMessage`` API costs several times more CPU per message (DESIGN.md, performance notes); tests
parse every message we build with the standard parser.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.header import Header
from email.utils import format_datetime, formataddr

from nurture.core.config import parsed_address
from nurture.mail.templates import RenderedEmail

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_LINE = 78  # RFC 5322 2.1.1: header lines SHOULD be at most 78 characters
# The width email.header folds to: a continuation line is a space and one encoded word, so each encoded
# word stays within RFC 2047's 75 characters (folding to 78 would allow words of 77).
_FOLD_WIDTH = 76


class HeaderInjection(ValueError):
    """A value meant for a header carried a line break or control character."""


def header_safe(value: str) -> str:
    """Collapse any control character (CR, LF, NUL, tab...) to a space, so data can never start a header."""
    return " ".join(_CONTROL.sub(" ", value).split())


def strict_address(address: str) -> str:
    """Addresses are validated at the edge; a control character here is a bug worth stopping on."""
    if _CONTROL.search(address) or not address or "@" not in address:
        raise HeaderInjection(f"refusing address {address!r}")
    return address


def signature(kind: str, number: int, secret: str) -> str:
    """The HMAC in our Message-IDs: 16 hex digits over what the id names (``delivery:42``, ``outbox:7``)."""
    return hmac.new(secret.encode(), f"{kind}:{number}".encode(), hashlib.sha256).hexdigest()[:16]


def message_id_for(delivery_id: int, secret: str, domain: str) -> str:
    """Stable per delivery, so a retried send carries the same Message-ID and receivers can drop repeats;
    the HMAC keeps ids unguessable without the secret."""
    return f"<nurture.{delivery_id}.{signature('delivery', delivery_id, secret)}@{domain}>"


_DELIVERY_MESSAGE_ID = re.compile(r"<nurture\.(\d{1,18})\.([0-9a-f]{16})@[^<>\s]+>")


def verified_number(
    message_id: str, pattern: re.Pattern[str], kind: str, secrets: Iterable[str]
) -> int | None:
    """The number a Message-ID of ours names when ``pattern`` matches it and its HMAC verifies under one of
    ``secrets``; None for anyone else's id or a forged one."""
    match = pattern.fullmatch(message_id)
    if match is None:
        return None
    number, given = int(match.group(1)), match.group(2)
    if any(hmac.compare_digest(given, signature(kind, number, secret)) for secret in secrets):
        return number
    return None


def delivery_id_of(message_id: str, secrets: Iterable[str]) -> int | None:
    """The delivery a Message-ID made by ``message_id_for`` names, if its HMAC verifies under one of
    ``secrets`` (the current key and those still listed while it rotates, so mail sent before a rotation
    keeps its proof); None otherwise. It proves we sent the message: without a key there is no HMAC."""
    return verified_number(message_id, _DELIVERY_MESSAGE_ID, "delivery", secrets)


def confirmation_message_id_for(message_id: int, secret: str, domain: str) -> str:
    """Stable per outbox row (a retry repeats it), distinct from delivery Message-IDs, unguessable."""
    return f"<nurture.tx.{message_id}.{signature('outbox', message_id, secret)}@{domain}>"


_OUTBOX_MESSAGE_ID = re.compile(r"<nurture\.tx\.(\d{1,18})\.([0-9a-f]{16})@[^<>\s]+>")


def outbox_id_of(message_id: str, secrets: Iterable[str]) -> int | None:
    """The outbox row a Message-ID made by ``confirmation_message_id_for`` names, if its HMAC verifies
    under one of ``secrets``; None for anyone else's id or a forged one (as ``delivery_id_of``)."""
    return verified_number(message_id, _OUTBOX_MESSAGE_ID, "outbox", secrets)


@dataclass(frozen=True)
class Envelope:
    from_address: str  # "Name <addr>" as configured
    to_address: str
    to_name: str | None
    message_id: str
    date: datetime
    unsubscribe_url: str | None = None  # https one-click target; None for mail that has no list (tests)
    unsubscribe_mailto: str | None = None
    reply_to: str | None = None


def _quoted_printable(body: str) -> bytes:
    """The body in quoted-printable with CRLF line ends, encoded a line at a time: quoted-printable never
    carries anything from one line to the next, and most lines of a step's email are the same for every
    reader, so each distinct line is encoded once per process (b2a_qp over a whole 12 KB email was the
    largest single cost of composing it; bench/analysis.md)."""
    # Line ends normalised first: SMTP wants CRLF only, and a bare CR (which b2a_qp would pass through, and
    # strict servers refuse) ends its line like any other line end.
    return b"\r\n".join([_qp_line(line) for line in body_lines(body)])


def body_lines(body: str) -> list[str]:
    """A body's lines, whatever its line ends."""
    return body.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _qp_line(line: str) -> bytes:
    encoded = _QP_LINES.get(line)
    if encoded is None:
        if len(_QP_LINES) >= _QP_LINES_KEPT:
            _QP_LINES.clear()  # a bound, not a policy: the lines of a few steps fit many times over
        encoded = _QP_LINES[line] = encode_line(line)
    return encoded


def encode_line(line: str) -> bytes:
    """One line of a body in quoted-printable (soft breaks as CRLF), uncached."""
    return binascii.b2a_qp(line.encode("utf-8"), quotetabs=False, istext=True).replace(b"\n", b"\r\n")


_QP_LINES: dict[str, bytes] = {}
_QP_LINES_KEPT = 20_000


def _folded(name: str, value: str, charset: str) -> str:
    """``value`` folded for the header ``name``: lines within _FOLD_WIDTH where spaces (or, in UTF-8, the
    split into encoded words, which never splits a character) allow, continuation lines starting with a
    space. The first line counts ``name: ``."""
    return Header(value, charset, maxlinelen=_FOLD_WIDTH, header_name=name, continuation_ws=" ").encode(
        splitchars=" ", linesep="\r\n"
    )


def _text_header(name: str, value: str) -> str:
    """An unstructured header (Subject): ASCII that fits one line as is, the common case at no cost;
    longer ASCII folded at spaces; anything else as RFC 2047 encoded words."""
    if value.isascii():
        return value if len(name) + 2 + len(value) <= MAX_LINE else _folded(name, value, "us-ascii")
    return _folded(name, value, "utf-8")


def _mailbox(name: str, display: str, address: str) -> str:
    """``Display <address>`` for From and To: one line when it fits (formataddr's quoting, or one encoded
    word); otherwise the display name as folded encoded words and the address after the last, on a line of
    its own if it would not fit there."""
    value = formataddr((display, address), charset="utf-8")
    if not display or len(name) + 2 + len(value) <= MAX_LINE:
        return value
    phrase = _folded(name, display, "utf-8")  # encoded words need no quoting, ASCII or not
    last_line = phrase.rpartition("\n")[2] if "\n" in phrase else f"{name}: {phrase}"
    separator = " " if len(last_line) + len(address) + 3 <= MAX_LINE else "\r\n "
    return f"{phrase}{separator}<{address}>"


def new_boundary() -> str:
    """A multipart boundary. Random, and quoted-printable output never contains "=_" (a literal "=" is
    written "=3D"), so the boundary cannot occur inside a part."""
    return f"=_nurture_{secrets.token_hex(12)}"


def message_head(subject: str, envelope: Envelope, boundary: str) -> bytes:
    """The header block of a message, ending in its line break; the body follows from :func:`assemble`."""
    from_name, from_addr = parsed_address(envelope.from_address)
    headers = [
        ("From", _mailbox("From", header_safe(from_name), strict_address(from_addr))),
        ("To", _mailbox("To", header_safe(envelope.to_name or ""), strict_address(envelope.to_address))),
        ("Subject", _text_header("Subject", header_safe(subject))),
        ("Date", _date_header(envelope.date)),
        ("Message-ID", header_safe(envelope.message_id)),
    ]
    if envelope.reply_to:
        headers.append(("Reply-To", header_safe(envelope.reply_to)))
    if envelope.unsubscribe_url:
        targets = [f"<{header_safe(envelope.unsubscribe_url)}>"]
        if envelope.unsubscribe_mailto:
            targets.append(f"<mailto:{header_safe(envelope.unsubscribe_mailto)}?subject=unsubscribe>")
        headers.append(("List-Unsubscribe", ", ".join(targets)))
        # RFC 8058: a POST with this body to the https URL unsubscribes in one step.
        headers.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    headers.append(("MIME-Version", "1.0"))
    headers.append(("Content-Type", f'multipart/alternative; boundary="{boundary}"'))
    return "".join(f"{name}: {value}\r\n" for name, value in headers).encode()


def _date_header(date: datetime) -> str:
    """The Date header, formatted once per second and zone (format_datetime was 1 % of a worker's CPU).
    The cache is one tuple, replaced whole, so a thread never reads half of it."""
    global _last_date
    key = (int(date.timestamp()), date.utcoffset())
    last = _last_date
    if last[0] == key:
        return last[1]
    formatted = format_datetime(date)
    _last_date = (key, formatted)
    return formatted


_last_date: tuple[tuple[int, timedelta | None] | None, str] = (None, "")
_TEXT_PART = (
    b'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'
)
_HTML_PART = (
    b'Content-Type: text/html; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'
)


def assemble(head: bytes, boundary: str, text_qp: bytes, html_qp: bytes) -> bytes:
    """The whole message from its header block and its two parts, already quoted-printable."""
    delimiter = f"\r\n--{boundary}\r\n".encode()
    return b"".join(
        [
            head,
            b"\r\nThis is a multipart message in MIME format.",
            delimiter,
            _TEXT_PART,
            text_qp,
            delimiter,
            _HTML_PART,
            html_qp,
            f"\r\n--{boundary}--\r\n".encode(),
        ]
    )


def compose(rendered: RenderedEmail, envelope: Envelope, boundary: str | None = None) -> bytes:
    boundary = boundary or new_boundary()
    head = message_head(rendered.subject, envelope, boundary)
    return assemble(head, boundary, _quoted_printable(rendered.text), _quoted_printable(rendered.html))
