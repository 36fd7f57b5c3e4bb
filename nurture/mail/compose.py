"""Turn a rendered email into RFC 5322 bytes with the headers bulk senders need.

Built with the compat32 ``email.mime`` classes and serialised with CRLF line endings: the modern
``EmailMessage`` API costs several times more CPU per message (see DESIGN.md, performance notes) and gives us
nothing here, because every header value is either ours or sanitised below.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import datetime
from email import charset as email_charset
from email.header import Header
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.policy import compat32
from email.utils import format_datetime, formataddr, parseaddr

from nurture.mail.templates import RenderedEmail

_QP_UTF8 = email_charset.Charset("utf-8")
_QP_UTF8.header_encoding = email_charset.QP
_QP_UTF8.body_encoding = email_charset.QP
# No folding below the RFC 5322 hard limit: folded List-Unsubscribe values trip some receivers.
_CRLF_POLICY = compat32.clone(linesep="\r\n", max_line_length=998)
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


def _text_part(body: str, subtype: str) -> MIMENonMultipart:
    part = MIMENonMultipart("text", subtype)
    part.set_payload(body, charset=_QP_UTF8)
    return part


def _encoded(value: str) -> str | Header:
    return value if value.isascii() else Header(value, _QP_UTF8)


def compose(rendered: RenderedEmail, envelope: Envelope) -> bytes:
    message = MIMEMultipart("alternative")
    from_name, from_addr = parseaddr(envelope.from_address)
    message["From"] = formataddr((header_safe(from_name), strict_address(from_addr)), charset="utf-8")
    to_name = header_safe(envelope.to_name or "")
    message["To"] = formataddr((to_name, strict_address(envelope.to_address)), charset="utf-8")
    message["Subject"] = _encoded(header_safe(rendered.subject))
    message["Date"] = format_datetime(envelope.date)
    message["Message-ID"] = envelope.message_id
    if envelope.reply_to:
        message["Reply-To"] = header_safe(envelope.reply_to)
    if envelope.unsubscribe_url:
        targets = [f"<{header_safe(envelope.unsubscribe_url)}>"]
        if envelope.unsubscribe_mailto:
            targets.append(f"<mailto:{header_safe(envelope.unsubscribe_mailto)}?subject=unsubscribe>")
        message["List-Unsubscribe"] = ", ".join(targets)
        # RFC 8058: a POST with this body to the https URL unsubscribes in one step.
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.attach(_text_part(rendered.text, "plain"))
    message.attach(_text_part(rendered.html, "html"))
    return message.as_bytes(policy=_CRLF_POLICY)
