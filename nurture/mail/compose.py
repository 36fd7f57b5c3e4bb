"""Turn a rendered email into RFC 5322 bytes with the headers bulk senders need.

Every message has the same shape (a ``multipart/alternative`` with a quoted-printable UTF-8 text and HTML
part), so it is written directly as bytes: the body encoding is ``binascii.b2a_qp`` (C) and only headers that
need RFC 2047 encoding go through the ``email`` package. The ``EmailMessage`` API costs several times more CPU
per message (DESIGN.md, performance notes); tests parse every message we build with the standard parser.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from email.header import Header
from email.utils import format_datetime, formataddr

from nurture.config import parsed_address
from nurture.mail.templates import RenderedEmail

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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


def message_id_for(delivery_id: int, secret: str, domain: str) -> str:
    """Stable per delivery, so a retried send carries the same Message-ID and receivers can drop repeats;
    the HMAC keeps ids unguessable without the secret."""
    digest = hmac.new(secret.encode(), f"delivery:{delivery_id}".encode(), hashlib.sha256).hexdigest()[:16]
    return f"<nurture.{delivery_id}.{digest}@{domain}>"


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
    # Normalise line ends first: b2a_qp keeps line breaks as they are, and SMTP wants CRLF only.
    encoded = binascii.b2a_qp(body.replace("\r\n", "\n").encode("utf-8"), quotetabs=False, istext=True)
    return encoded.replace(b"\n", b"\r\n")


def _header_value(value: str) -> str:
    """ASCII as is; anything else as RFC 2047 encoded words, folded with CRLF."""
    return value if value.isascii() else Header(value, "utf-8", maxlinelen=76).encode(linesep="\r\n")


def _part(content_type: str, body: str) -> bytes:
    return (
        f'Content-Type: {content_type}; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    ).encode() + _quoted_printable(body)


def compose(rendered: RenderedEmail, envelope: Envelope) -> bytes:
    from_name, from_addr = parsed_address(envelope.from_address)
    headers = [
        ("From", formataddr((header_safe(from_name), strict_address(from_addr)), charset="utf-8")),
        (
            "To",
            formataddr((header_safe(envelope.to_name or ""), strict_address(envelope.to_address)), "utf-8"),
        ),
        ("Subject", _header_value(header_safe(rendered.subject))),
        ("Date", format_datetime(envelope.date)),
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
    # Random, and QP output never contains "--=_": the boundary cannot occur inside a part.
    boundary = f"=_nurture_{secrets.token_hex(12)}"
    headers.append(("MIME-Version", "1.0"))
    headers.append(("Content-Type", f'multipart/alternative; boundary="{boundary}"'))
    head = "".join(f"{name}: {value}\r\n" for name, value in headers).encode()
    delimiter = f"\r\n--{boundary}\r\n".encode()
    return b"".join(
        [
            head,
            b"\r\nThis is a multipart message in MIME format.",
            delimiter,
            _part("text/plain", rendered.text),
            delimiter,
            _part("text/html", rendered.html),
            f"\r\n--{boundary}--\r\n".encode(),
        ]
    )
