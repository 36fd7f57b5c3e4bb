"""The DKIM private key file: read, checked to be usable, or made new.

The settings check the key when a process starts (a bad NURTURE_DKIM_KEY stops it there, not at the first
send), so this lives below the settings; the signing itself is nurture.mail.dkim.
"""

from __future__ import annotations

from pathlib import Path

from dkim.crypto import UnparsableKeyError, parse_pem_private_key

MIN_BITS = 1024  # receivers ignore shorter keys; 2048 is the recommendation


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
