"""DKIM signatures (RFC 6376) on every outgoing message, with dkimpy.

Signing is a transport wrapper: :func:`nurture.mail.transports.transport_from_url` wraps the transport the
settings name in a :class:`SigningTransport` when ``NURTURE_DKIM_KEY`` is set, so sequence emails,
confirmation emails and ``nurture send-test`` are all signed, over the exact bytes that go on the wire.

What is signed: the headers receivers and the Gmail/Yahoo bulk-sender rules look at (From, To, Subject, Date,
Message-ID, MIME-Version, Content-Type, List-Unsubscribe and List-Unsubscribe-Post, ...) and the body, with
relaxed/relaxed canonicalization so a relay re-folding whitespace does not break the signature. The headers
that matter most are "oversigned" (listed once more than they occur), so a copy added in transit, say a second
List-Unsubscribe pointing elsewhere, breaks the signature instead of riding on it.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dkim
from dkim.crypto import UnparsableKeyError, parse_pem_private_key

from nurture.mail.transports import TemporaryFailure, Transport

if TYPE_CHECKING:
    from nurture.config import Settings

# In signing order. Absent ones cost nothing: listing a header that is not there signs its absence.
SIGNED_HEADERS = (
    "from",
    "to",
    "cc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "list-id",
    "feedback-id",
    "in-reply-to",
    "references",
)
OVERSIGNED = frozenset(
    {
        "from",
        "to",
        "cc",
        "reply-to",
        "subject",
        "date",
        "message-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
    }
)
MIN_BITS = 1024  # receivers ignore shorter keys; 2048 is the recommendation
_HEADER_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.MULTILINE)


class DkimKeyError(ValueError):
    """The key file is missing, unreadable or not an RSA private key we can sign with."""


def load_private_key(path: Path) -> bytes:
    """The PEM bytes of an RSA private key, checked to be usable; :class:`DkimKeyError` says why not."""
    try:
        pem = path.read_bytes().replace(b"\r\n", b"\n")
    except OSError as exc:
        raise DkimKeyError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        parsed = parse_pem_private_key(pem)
    except (UnparsableKeyError, ValueError, IndexError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DkimKeyError(f"{path} is not a PEM RSA private key ({first})") from None
    bits = int(parsed["modulus"]).bit_length()
    if bits < MIN_BITS:
        raise DkimKeyError(f"{path} is a {bits}-bit key; DKIM needs at least {MIN_BITS} (2048 recommended)")
    return pem


def generate_private_key(bits: int = 2048) -> bytes:
    """A new RSA key as PKCS#1 PEM (``BEGIN RSA PRIVATE KEY``), the form opendkim and dkimpy both read."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


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


def header_names(message: bytes) -> list[str]:
    """Names of the header fields of ``message``, lower-case, in order (continuation lines skipped)."""
    end = message.find(b"\r\n\r\n")
    if end < 0:
        end = message.find(b"\n\n")
    block = message if end < 0 else message[: end + 2]
    return [name.decode("ascii").lower() for name in _HEADER_NAME.findall(block)]


@dataclass(frozen=True)
class DkimSigner:
    private_key: bytes  # PEM
    selector: str
    domain: str

    @classmethod
    def from_settings(cls, settings: Settings) -> DkimSigner:
        return cls(
            private_key=load_private_key(Path(settings.dkim_key)),
            selector=settings.dkim_selector,
            domain=settings.resolved_dkim_domain,
        )

    @property
    def dns_name(self) -> str:
        """Where receivers look up the public key."""
        return f"{self.selector}._domainkey.{self.domain}"

    def public_record(self) -> str:
        return public_record(self.private_key)

    def include_headers(self, message: bytes) -> list[bytes]:
        present = header_names(message)
        names: list[bytes] = []
        for name in SIGNED_HEADERS:
            count = present.count(name) + (1 if name in OVERSIGNED else 0)
            names.extend([name.encode("ascii")] * count)
        return names

    def signature(self, message: bytes) -> bytes:
        """The ``DKIM-Signature:`` header field for ``message``, CRLF-terminated."""
        return dkim.sign(
            message,
            self.selector.encode("ascii"),
            self.domain.encode("ascii"),
            self.private_key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=self.include_headers(message),
        )

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

    def send(self, envelope_from: str, recipient: str, data: bytes) -> None:
        try:
            signed = self.signer.sign(data)
        except dkim.DKIMException as exc:
            # Nothing was handed over, and the address is not at fault: retry (and alert), never suppress.
            raise TemporaryFailure(f"DKIM signing failed: {exc}") from exc
        self.inner.send(envelope_from, recipient, signed)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        # Anything else (an SMTP target, a memory outbox) is the wrapped transport's.
        return getattr(self.inner, name)


def signing(transport: Transport, settings: Settings) -> Transport:
    """``transport`` wrapped to sign with the configured key, or unchanged when no key is configured."""
    if not settings.dkim_key:
        return transport
    return SigningTransport(transport, DkimSigner.from_settings(settings))
