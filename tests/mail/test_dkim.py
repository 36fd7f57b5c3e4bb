"""DKIM: every outgoing message is signed; dkimpy's verifier accepts it against the published key and rejects
it once a signed header or the body is altered. No DNS here: the verifier's lookup answers from the key."""

from __future__ import annotations

import re
import stat
from datetime import UTC, datetime
from pathlib import Path

import dkim
import pytest
from click.testing import CliRunner

from nurture.cli import main
from nurture.core import clock
from nurture.core.config import ConfigError, get_settings
from nurture.core.dkim_keys import generate_private_key
from nurture.mail.dkim import DkimSigner, public_record
from tests.support.helpers import dispatch_inline, make_sender, subscribe, sync_sequences
from tests.support.processes import SmtpServer

START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
REQUIRED = {
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "mime-version",
    "content-type",
}


def dns_answering(name: str, record: str):  # type: ignore[no-untyped-def]
    """A dkimpy ``dnsfunc`` that knows one TXT record, as DNS would after the operator published it."""

    def lookup(qname: bytes | str, timeout: float = 5) -> bytes | None:
        wanted = qname.decode() if isinstance(qname, bytes) else qname
        return record.encode() if wanted.rstrip(".") == name else None

    return lookup


def signature_tags(message: bytes) -> dict[str, str]:
    header = re.search(rb"^DKIM-Signature:(.*?)\r\n(?![ \t])", message, re.S | re.M)
    assert header, "no DKIM-Signature header"
    value = re.sub(rb"\s+", b"", header.group(1)).decode()
    return dict(tag.split("=", 1) for tag in value.split(";") if tag)


@pytest.fixture
def signing_env(set_env, dkim_pem):  # type: ignore[no-untyped-def]
    set_env(dkim_key=str(dkim_pem), dkim_selector="s2026", **{"from": "Clinic <hello@clinic.example>"})
    return dns_answering("s2026._domainkey.clinic.example", public_record(dkim_pem.read_bytes()))


@pytest.fixture
def sent_by_send_test(signing_env, three_step, set_env) -> bytes:  # type: ignore[no-untyped-def]
    """One real message, as `nurture send-test` hands it to an SMTP server on loopback."""
    with SmtpServer() as smtp:
        set_env(smtp_url=smtp.url)
        result = CliRunner().invoke(main, ["send-test", "three-step", "hello", "--to", "ana@example.org"])
        assert result.exit_code == 0, result.output
    assert len(smtp.received) == 1
    return smtp.received[0].data


def test_send_test_mail_is_signed_with_the_required_headers_and_verifies(
    sent_by_send_test: bytes, signing_env
) -> None:  # type: ignore[no-untyped-def]
    tags = signature_tags(sent_by_send_test)
    assert tags["d"] == "clinic.example" and tags["s"] == "s2026" and tags["a"] == "rsa-sha256"
    assert tags["c"] == "relaxed/relaxed"
    assert set(tags["h"].lower().split(":")) >= REQUIRED
    assert dkim.verify(sent_by_send_test, dnsfunc=signing_env)


@pytest.mark.parametrize(
    ("what", "old", "new"),
    [
        ("subject", rb"(?m)^Subject: ", b"Subject: Re: "),
        ("unsubscribe target", rb"<https://nurture\.test/unsubscribe/", b"<https://evil.example/unsubscribe/"),
        ("a 2nd List-Unsubscribe", rb"(?m)^List-Unsubscribe: ", b"List-Unsubscribe: <https://x.example/>\r\n\\g<0>"),
        ("From", rb"(?m)^From: .*?<hello@clinic\.example>", b"From: Clinic <ceo@clinic.example>"),
        ("the body", rb"first email of the demo", b"first email of the DEMO"),
    ],
)  # fmt: skip
def test_an_altered_message_fails_verification(sent_by_send_test, signing_env, what, old, new) -> None:  # type: ignore[no-untyped-def]
    altered, count = re.subn(old, new, sent_by_send_test, count=1)
    assert count == 1, f"the test could not alter {what}"
    assert not dkim.verify(altered, dnsfunc=signing_env), f"altering {what} kept the signature valid"


def test_a_different_key_in_dns_fails_verification(sent_by_send_test) -> None:  # type: ignore[no-untyped-def]
    stranger = public_record(generate_private_key(1024))
    assert not dkim.verify(
        sent_by_send_test, dnsfunc=dns_answering("s2026._domainkey.clinic.example", stranger)
    )


def test_sequence_emails_sent_by_the_sender_are_signed(sqlite_url, signing_env, three_step, set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(database_url=sqlite_url)
    from nurture.core.db import session_factory

    factory = session_factory()
    sync_sequences(factory)
    with SmtpServer() as smtp, clock.frozen(START):
        set_env(smtp_url=smtp.url)
        subscribe(factory, "ana@example.org", "three-step", first_name="Ana")
        assert dispatch_inline(factory, make_sender(factory))["sent"] == 1
    message = smtp.received[0].data
    assert set(signature_tags(message)["h"].lower().split(":")) >= REQUIRED
    assert dkim.verify(message, dnsfunc=signing_env)


def test_the_dkim_domain_defaults_to_the_from_domain_and_can_be_set(set_env, dkim_pem) -> None:  # type: ignore[no-untyped-def]
    set_env(dkim_key=str(dkim_pem), **{"from": "Clinic <hello@news.clinic.example>"})
    assert DkimSigner.from_settings(get_settings()).dns_name == "nurture._domainkey.news.clinic.example"
    set_env(dkim_domain="clinic.example", dkim_selector="mail")
    assert DkimSigner.from_settings(get_settings()).dns_name == "mail._domainkey.clinic.example"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        (b"not a key at all\n", "is not a PEM RSA private key"),
        (b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n", "not a PEM RSA private"),
    ],
)  # fmt: skip
def test_a_missing_or_bad_key_stops_start_up_naming_the_setting(tmp_path, set_env, content, message) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "dkim.pem"
    if content is not None:
        path.write_bytes(content)
    set_env(dkim_key=str(path))
    with pytest.raises(ConfigError, match=f"NURTURE_DKIM_KEY: .*{message}"):
        get_settings()
    result = CliRunner().invoke(main, ["web"])  # the processes refuse to start, without a traceback
    assert result.exit_code != 0 and "NURTURE_DKIM_KEY" in result.output and "Traceback" not in result.output


def test_keygen_writes_a_private_key_only_its_owner_reads_and_prints_the_matching_record(
    tmp_path: Path,
) -> None:
    out = tmp_path / "keys" / "dkim.pem"
    out.parent.mkdir()
    result = CliRunner().invoke(
        main, ["dkim", "keygen", "--out", str(out), "--selector", "jan2026", "--domain", "clinic.example"]
    )
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    name = re.search(r"name:\s+(\S+)", result.output).group(1)  # type: ignore[union-attr]
    value = re.search(r"value:\s+(.+)", result.output).group(1).strip()  # type: ignore[union-attr]
    assert name == "jan2026._domainkey.clinic.example" and value.startswith("v=DKIM1; k=rsa; p=")
    assert f"{name}. 3600 IN TXT (" in result.output

    # What the printed record publishes verifies what the written key signs.
    signer = DkimSigner(out.read_bytes(), "jan2026", "clinic.example")
    signed = signer.sign(b"From: a@clinic.example\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nhello\r\n")
    assert dkim.verify(signed, dnsfunc=dns_answering(name, value))

    again = CliRunner().invoke(main, ["dkim", "keygen", "--out", str(out)])
    assert again.exit_code != 0 and "exists" in again.output  # never overwrites a key by accident
