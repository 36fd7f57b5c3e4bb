"""The transport a URL names (``NURTURE_SMTP_URL``), DKIM-signing when ``NURTURE_DKIM_KEY`` is set.

Every path that sends mail (the sender, the outbox, test sends, previews) builds its transport here, so every
message is signed the same way. Above both ``transports`` and ``dkim``, so neither imports the other.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from nurture.core.config import get_settings
from nurture.mail.dkim import signing
from nurture.mail.transports import MEMORY_OUTBOX, MaildirTransport, SmtpTarget, SmtpTransport, Transport


def transport_from_url(
    url: str, *, timeout: float = 30.0, local_hostname: str = "localhost", dkim: bool = True
) -> Transport:
    """The transport ``url`` names; DKIM-signing when ``NURTURE_DKIM_KEY`` is set (unless ``dkim=False``).

    Every path that sends mail builds its transport here, so every message is signed the same way.
    """
    transport = unsigned_transport_from_url(url, timeout=timeout, local_hostname=local_hostname)
    if not dkim:
        return transport
    return signing(transport, get_settings())


def unsigned_transport_from_url(
    url: str, *, timeout: float = 30.0, local_hostname: str = "localhost"
) -> Transport:
    scheme = urlsplit(url).scheme
    if scheme in {"smtp", "smtps"}:
        return SmtpTransport(SmtpTarget.from_url(url, timeout=timeout, local_hostname=local_hostname))
    if scheme == "maildir":
        parts = urlsplit(url)
        return MaildirTransport(Path(unquote(parts.netloc + parts.path)))
    if scheme == "memory":
        return MEMORY_OUTBOX
    raise ValueError(
        f"unknown NURTURE_SMTP_URL scheme {scheme!r}: use smtp://, smtps://, maildir:// or memory://"
    )
