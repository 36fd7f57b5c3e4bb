"""DKIM signatures (RFC 6376) on every outgoing message.

Signing is a transport wrapper: :func:`nurture.mail.factory.transport_from_url` wraps the transport the
settings name in a :class:`SigningTransport` when ``NURTURE_DKIM_KEY`` is set, so sequence emails,
confirmation emails and ``nurture send-test`` are all signed, over the exact bytes that go on the wire.

What is signed: the headers receivers and the Gmail/Yahoo bulk-sender rules look at (From, To, Subject, Date,
Message-ID, MIME-Version, Content-Type, List-Unsubscribe and List-Unsubscribe-Post, ...) and the body, with
relaxed/relaxed canonicalization so a relay re-folding whitespace does not break the signature. The headers
that matter most are "oversigned" (listed once more than they occur), so a copy added in transit, say a second
List-Unsubscribe pointing elsewhere, breaks the signature instead of riding on it.

Why not dkimpy's ``dkim.sign``: it does the RSA arithmetic in pure Python and re-parses the PEM key for every
message, about 10 ms of CPU per email, which capped a worker process near 100 signed emails/s. Here the
canonicalization (relaxed/relaxed, RFC 6376 section 3.4) and the tag list are written out directly and the
RSA-SHA256 signature comes from ``cryptography`` (OpenSSL) with the key parsed once: about 0.3 ms per email
(docs/benchmarks.md). dkimpy remains the verifier (``verify``, ``nurture doctor``) and the tests check every
signature we make against it.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dkim

from nurture.core.dkim_keys import load_private_key
from nurture.mail.transports import BeforeData, TemporaryFailure, Then, Transport

if TYPE_CHECKING:
    from nurture.core.config import Settings

# In signing order. Absent ones cost nothing: listing a header that is not there signs its absence.
SIGNED_HEADERS = (b"from", b"to", b"cc", b"reply-to", b"subject", b"date", b"message-id", b"mime-version")
SIGNED_HEADERS += (b"content-type", b"content-transfer-encoding", b"list-unsubscribe")
SIGNED_HEADERS += (b"list-unsubscribe-post", b"list-id", b"feedback-id", b"in-reply-to", b"references")
# Signed once more than they occur, so that nobody can add a second From, Subject or unsubscribe link.
OVERSIGNED = frozenset((*SIGNED_HEADERS[:7], b"list-unsubscribe", b"list-unsubscribe-post"))
_WSP_RUN = re.compile(rb"[ \t]+")
_SPACE_RUN = re.compile(rb"  +")
_FOLD = re.compile(rb"\r\n(?=[ \t])")
_BASE64_LINE = 72  # characters of the b= value per folded line


def public_record(pem: bytes) -> str:
    """The DNS TXT value that publishes the public half of ``pem``: ``v=DKIM1; k=rsa; p=...``."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pem, password=None)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"


def zone_file_line(name: str, value: str, ttl: int = 3600) -> str:
    """A BIND zone-file line; TXT strings longer than 255 characters are split, as DNS requires."""
    chunks = " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))
    return f"{name}. {ttl} IN TXT ( {chunks} )"


def split_message(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(header fields as (name, raw field including continuation lines and the final CRLF), body)."""
    end = message.find(b"\r\n\r\n")
    head, body = (message, b"") if end < 0 else (message[: end + 2], message[end + 4 :])
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t") and fields:
            name, raw = fields[-1]
            fields[-1] = (name, raw + line + b"\r\n")
        else:
            fields.append((line.split(b":", 1)[0].strip().lower(), line + b"\r\n"))
    return fields, body


def relaxed_header(raw: bytes) -> bytes:
    """RFC 6376 3.4.2: lower-case name, unfold, WSP runs to one SP, no WSP around the colon or at the end."""
    # A name holds no CRLF or WSP run, so splitting at the colon first is the same; each pattern runs only
    # when a C-level search finds something for it to change (most fields have neither).
    name, _, value = raw.rstrip(b"\r\n").partition(b":")
    if b"\r\n" in value:
        value = _FOLD.sub(b"", value)
    if b"\t" in value or b"  " in value:
        value = _WSP_RUN.sub(b" ", value)
    return name.strip().lower() + b":" + value.strip(b" \t") + b"\r\n"


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4: no WSP at line ends, runs of WSP to one SP, no empty lines at the end."""
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"  # SMTP ends the data with CRLF: sign what the receiver will canonicalize
    # WSP runs become one SP, after which a line's trailing WSP is at most that one SP. Tabs become spaces
    # first, so that only runs of spaces are left to fold: a pattern that starts with a literal is searched
    # for quickly, where the one alternation for tabs and spaces took 79 us per 13 KB email (now 27,
    # each step skipped when a C-level search finds nothing to change; halving the runs with bytes.replace
    # instead of the pattern measured slower, 45 us).
    if b"\t" in body:
        body = body.replace(b"\t", b" ")
    if b"  " in body:
        body = _SPACE_RUN.sub(b" ", body)
    if b" \r\n" in body:
        body = body.replace(b" \r\n", b"\r\n")
    while body.endswith(b"\r\n\r\n"):
        body = body[:-2]
    return b"" if body == b"\r\n" else body


def _fold_names(names: list[bytes]) -> bytes:
    """The h= list, folded after a colon so no line passes 78 characters (RFC 5322's recommendation)."""
    lines, line = [], b""
    for name in names:
        if line and len(line) + len(name) + 1 > _BASE64_LINE - 2:
            lines.append(line + b":")
            line = name
        else:
            line = line + b":" + name if line else name
    return b"\r\n ".join([*lines, line])


def _fold_base64(value: bytes) -> bytes:
    return b"\r\n ".join(value[i : i + _BASE64_LINE] for i in range(0, len(value), _BASE64_LINE))


@dataclass(frozen=True)
class DkimSigner:
    private_key: bytes  # PEM
    selector: str
    domain: str

    @classmethod
    def from_settings(cls, settings: Settings) -> DkimSigner:
        return cls(
            private_key=load_private_key(Path(settings.mail.dkim_key)),
            selector=settings.mail.dkim_selector,
            domain=settings.mail.resolved_dkim_domain,
        )

    @property
    def dns_name(self) -> str:
        """Where receivers look up the public key."""
        return f"{self.selector}._domainkey.{self.domain}"

    def public_record(self) -> str:
        return public_record(self.private_key)

    @staticmethod
    def include_headers(fields_by_name: dict[bytes, list[bytes]]) -> list[bytes]:
        """The h= list: each signed header as often as the message has it, once more if oversigned."""
        names: list[bytes] = []
        for name in SIGNED_HEADERS:
            count = len(fields_by_name.get(name, ())) + (1 if name in OVERSIGNED else 0)
            names.extend([name] * count)
        return names

    @cached_property
    def _rsa_key(self) -> Any:
        """The parsed key, kept for the life of the signer (one per worker process)."""
        from cryptography.hazmat.primitives import serialization

        return serialization.load_pem_private_key(self.private_key, password=None)

    def signature(self, message: bytes, *, timestamp: int | None = None) -> bytes:
        """The ``DKIM-Signature:`` field for ``message``, CRLF-terminated (RSA-SHA256, relaxed/relaxed)."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        fields, body = split_message(message)
        body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
        remaining: dict[bytes, list[bytes]] = {}
        for name, raw in fields:
            remaining.setdefault(name, []).append(raw)
        names = self.include_headers(remaining)
        # Each name in h= signs the last not-yet-used instance of that field, from the bottom up; a name with
        # no instance left signs its absence (contributes nothing), which is what oversigning relies on.
        signed = b"".join(relaxed_header(remaining[name].pop()) for name in names if remaining.get(name))
        domain = self.domain.encode("ascii")
        tags = (
            b"v=1; a=rsa-sha256; c=relaxed/relaxed; d=" + domain + b"; s=" + self.selector.encode("ascii")
            + b";\r\n i=@" + domain + b"; q=dns/txt; t="
            + str(int(time.time()) if timestamp is None else timestamp).encode("ascii")
            + b";\r\n h=" + _fold_names(names) + b";\r\n bh=" + body_hash + b";\r\n b="
        )  # fmt: skip
        unsigned = b"DKIM-Signature: " + tags
        # The signature covers this very field with an empty b=, canonicalized, without its final CRLF.
        to_sign = signed + relaxed_header(unsigned + b"\r\n")[:-2]
        value = self._rsa_key.sign(to_sign, padding.PKCS1v15(), hashes.SHA256())
        return unsigned + _fold_base64(base64.b64encode(value)) + b"\r\n"

    def sign(self, message: bytes) -> bytes:
        return self.signature(message) + message

    def verify(self, message: bytes) -> bool:
        """Check a signed message against our own public key, without DNS (for ``nurture doctor``, tests)."""
        record = self.public_record().encode("ascii")

        def dnsfunc(name: Any, timeout: float = 5) -> bytes | None:
            wanted = name.decode() if isinstance(name, bytes) else name
            return record if wanted.rstrip(".") == self.dns_name else None

        return bool(dkim.verify(message, dnsfunc=dnsfunc))


class SigningTransport:
    """Signs each message, then hands it to the wrapped transport unchanged otherwise."""

    def __init__(self, inner: Transport, signer: DkimSigner) -> None:
        self.inner = inner
        self.signer = signer

    def send(
        self,
        envelope_from: str,
        recipient: str,
        data: bytes,
        before_data: BeforeData = None,
        then: Then = None,
    ) -> None:
        try:
            signed = self.signer.sign(data)
        except (dkim.DKIMException, ValueError, TypeError) as exc:
            # Nothing was handed over, and the address is not at fault: retry (and alert), never suppress.
            raise TemporaryFailure(f"DKIM signing failed: {exc}") from exc
        self.inner.send(envelope_from, recipient, signed, before_data, then)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        # Anything else (an SMTP target, a memory outbox) is the wrapped transport's.
        return getattr(self.inner, name)


def signing(transport: Transport, settings: Settings) -> Transport:
    """``transport`` wrapped to sign with the configured key, or unchanged when no key is configured."""
    if not settings.mail.dkim_key:
        return transport
    return SigningTransport(transport, DkimSigner.from_settings(settings))
