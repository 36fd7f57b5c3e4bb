"""The DKIM signer writes the canonicalization and the tag list itself and signs with ``cryptography``
(nurture/mail/dkim.py says why): its output must be exactly what dkimpy's verifier, a second implementation,
accepts. The verifier looks the key up through a DNS stub that answers with the published record."""

from __future__ import annotations

import re

import dkim
from dkim.canonicalization import Relaxed
from hypothesis import given, settings
from hypothesis import strategies as st

from nurture.mail.dkim import DkimSigner, public_record, relaxed_body, relaxed_header
from tests.mail.test_dkim import dns_answering, signature_tags

SELECTOR, DOMAIN = "s1", "clinic.example"
DNS_NAME = f"{SELECTOR}._domainkey.{DOMAIN}"

MESSAGE = (
    b"From: =?utf-8?q?Cl=C3=ADnica?= <hello@clinic.example>\r\n"
    b"To: Ana <ana@example.org>\r\n"
    b"Subject: =?utf-8?q?Qu=C3=A9_esperar?=\r\n =?utf-8?q?_de_la_primera_sesi=C3=B3n?=\r\n"
    b"Date: Mon, 02 Mar 2026 15:00:00 +0000\r\n"
    b"Message-ID: <nurture.1.abc@clinic.example>\r\n"
    b"List-Unsubscribe: <https://nurture.test/unsubscribe/x>,\r\n\t<mailto:unsubscribe@clinic.example>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    b"Received: by relay.example; Mon, 02 Mar 2026 15:00:00 +0000\r\n"
    b"Received: by other.example; Mon, 02 Mar 2026 15:00:01 +0000\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: text/plain; charset="utf-8"\r\n'
    b"\r\n"
    b"Hello Ana,  \t\r\n\r\n  two  spaces\tand a tab \r\nend\r\n\r\n\r\n"
)

# Bytes that exercise every rule of relaxed body canonicalization: WSP runs, WSP at line ends, empty lines.
BODY_PIECES = st.lists(st.sampled_from([b"a", b"b", b" ", b"\t", b"  ", b"\r\n", b"\r\n\r\n", b"=20"]))


def signer(dkim_pem) -> DkimSigner:  # type: ignore[no-untyped-def]
    return DkimSigner(private_key=dkim_pem.read_bytes(), selector=SELECTOR, domain=DOMAIN)


def test_signatures_verify_with_dkimpy_and_carry_the_expected_tags(dkim_pem) -> None:  # type: ignore[no-untyped-def]
    dns = dns_answering(DNS_NAME, public_record(dkim_pem.read_bytes()))
    signed = signer(dkim_pem).sign(MESSAGE)
    assert dkim.verify(signed, dnsfunc=dns)
    tags = signature_tags(signed)
    assert (tags["a"], tags["c"], tags["d"], tags["s"]) == ("rsa-sha256", "relaxed/relaxed", DOMAIN, SELECTOR)
    # From, Subject, List-Unsubscribe... are oversigned: one more name than there are fields.
    names = tags["h"].lower().split(":")
    assert names.count("from") == 2 and names.count("list-unsubscribe") == 2
    assert "received" not in names  # relays add their own; signing them would break on every hop


def test_the_body_hash_equals_dkimpys(dkim_pem) -> None:  # type: ignore[no-untyped-def]
    ours = signature_tags(signer(dkim_pem).sign(MESSAGE))["bh"]
    theirs = dkim.sign(
        MESSAGE,
        SELECTOR.encode(),
        DOMAIN.encode(),
        dkim_pem.read_bytes(),
        canonicalize=(b"relaxed", b"relaxed"),
    )
    assert ours == signature_tags(theirs + MESSAGE)["bh"]


def test_an_added_copy_of_an_oversigned_header_breaks_the_signature(dkim_pem) -> None:  # type: ignore[no-untyped-def]
    dns = dns_answering(DNS_NAME, public_record(dkim_pem.read_bytes()))
    signed = signer(dkim_pem).sign(MESSAGE)
    added = re.sub(
        rb"(?m)^List-Unsubscribe: ", b"List-Unsubscribe: <https://evil.example/>\r\n\\g<0>", signed, count=1
    )
    assert added != signed and not dkim.verify(added, dnsfunc=dns)


def test_refolding_whitespace_in_transit_keeps_the_signature(dkim_pem) -> None:  # type: ignore[no-untyped-def]
    """relaxed/relaxed exists for this: a relay that re-folds headers or pads line ends changes nothing."""
    dns = dns_answering(DNS_NAME, public_record(dkim_pem.read_bytes()))
    signed = signer(dkim_pem).sign(MESSAGE)
    refolded = signed.replace(b"To: Ana <ana@example.org>", b"To: Ana\r\n   <ana@example.org>  ")
    refolded = refolded.replace(b"\r\nend\r\n", b"\r\nend   \r\n")
    assert refolded != signed and dkim.verify(refolded, dnsfunc=dns)


@settings(max_examples=300, deadline=None)
@given(BODY_PIECES)
def test_relaxed_body_canonicalization_matches_dkimpy(pieces: list[bytes]) -> None:
    body = b"".join(pieces) + b"\r\n"  # SMTP data always ends with CRLF
    assert relaxed_body(body) == Relaxed.canonicalize_body(body)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([b"Subject", b"TO", b"x-Tag"]), st.lists(st.sampled_from([b"a", b" ", b"\t", b"\r\n "]))
)
def test_relaxed_header_canonicalization_matches_dkimpy(name: bytes, pieces: list[bytes]) -> None:
    value = b"".join(pieces) + b"\r\n"
    [(their_name, their_value)] = Relaxed.canonicalize_headers([(name, value)])
    assert relaxed_header(name + b":" + value) == their_name + b":" + their_value
