"""Security findings 6, 11 and 12: forged bounce reports, IPv6 forms that embed IPv4 addresses in the webhook
URL guard, and an SMTP connection left mid-transaction. Real databases (SQLite and PostgreSQL) and a real SMTP
server on loopback."""

# ruff: noqa: F811  (fixtures imported from the modules that define them are redefined by name)

from __future__ import annotations

import mailbox
import smtplib
from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import select

from nurture.cli import main
from nurture.core import clock
from nurture.core.config import get_settings
from nurture.core.db import transaction
from nurture.mail.compose import message_id_for
from nurture.mail.factory import transport_from_url
from nurture.mail.transports import SmtpTransport, TemporaryFailure
from nurture.models import Delivery, Event, Suppression
from nurture.subscribers import bounces
from nurture.web.app import create_app
from nurture.webhooks.urls import UnsafeUrl, validate_url
from tests.conftest import TEST_SECRET
from tests.subscribers.test_bounces import START, TOKEN, advance, dsn, post, send_due, world  # noqa: F401 (fixtures)
from tests.support.helpers import deliveries, dispatch_inline, make_sender, subscribe, sync_sequences
from tests.support.processes import RecordingHandler, SmtpScript, SmtpServer

# --- item 6: a bounce report acts only with proof that we sent the message it reports on ----------------


def suppressed(factory) -> dict[str, str]:  # type: ignore[no-untyped-def]
    with transaction(factory) as session:
        return {s.email: s.reason for s in session.scalars(select(Suppression))}


def bounce_events(factory) -> list[Event]:  # type: ignore[no-untyped-def]
    with transaction(factory) as session:
        kinds = ("bounced", "soft_bounce")
        return list(session.scalars(select(Event).where(Event.kind.in_(kinds)).order_by(Event.id)))


def open_deliveries(factory) -> list[str]:  # type: ignore[no-untyped-def]
    return [d.status for d in deliveries(factory)]


def test_a_report_quoting_no_message_of_ours_suppresses_nothing(world, set_env, advance):  # type: ignore[no-untyped-def]
    subscribe(world, "ana@example.com", "three-step")
    send_due(world, set_env, advance)
    before = open_deliveries(world)

    tally = bounces.process(dsn("ana@example.com", None), world)

    assert suppressed(world) == {}
    assert open_deliveries(world) == before == ["sent", "pending", "pending"]
    assert bounce_events(world) == []
    assert (tally.hard, tally.soft, tally.ignored) == (0, 0, 1)


def test_a_forged_foreign_or_unknown_message_id_is_no_proof(world, set_env, advance):  # type: ignore[no-untyped-def]
    subscribe(world, "ana@example.com", "three-step")
    send_due(world, set_env, advance)
    [first] = [d for d in deliveries(world) if d.status == "sent"]
    domain = get_settings().mail.from_domain
    forged_ids = [
        f"<nurture.{first.id}.ffffffffffffffff@{domain}>",  # our shape, a guessed signature
        "<CAF=some.id@mail.gmail.com>",  # someone else's message
        message_id_for(first.id + 1000, TEST_SECRET, domain),  # signed, but no delivery of that id was sent
        message_id_for(first.id, "some-other-secret-key-0123456789-abcdef", domain),
    ]
    for n, message_id in enumerate(forged_ids):
        original = f"Message-ID: {message_id}\r\nSubject: hi\r\n\r\nbody\r\n".encode()
        tally = bounces.process(dsn("ana@example.com", original, dsn_id=f"<forged.{n}@mx.example>"), world)
        assert (tally.hard, tally.ignored) == (0, 1), message_id
    assert suppressed(world) == {}
    assert bounce_events(world) == []


def test_a_real_message_id_only_acts_for_the_recipient_of_that_delivery(world, set_env, advance):  # type: ignore[no-untyped-def]
    subscribe(world, "ana@example.com", "three-step")
    subscribe(world, "bo@example.com", "three-step")
    sent = send_due(world, set_env, advance)
    ana_message = next(m for m in sent if b"To: ana@example.com" in m)

    # Anyone holding a copy of ana's email cannot use it to suppress another subscriber.
    tally = bounces.process(dsn("bo@example.com", ana_message, dsn_id="<other.1@mx.example>"), world)
    assert (tally.hard, tally.ignored) == (0, 1)
    assert suppressed(world) == {}

    # A report naming ana and bo for ana's email: only ana's address is acted on.
    both = dsn("ana@example.com", ana_message, dsn_id="<both.1@mx.example>").replace(
        b"Final-Recipient: rfc822; ana@example.com\n",
        b"Final-Recipient: rfc822; bo@example.com\nAction: failed\nStatus: 5.1.1\n\n"
        b"Final-Recipient: rfc822; ana@example.com\n",
    )
    assert bounces.parse(both).hard == {"ana@example.com", "bo@example.com"}
    tally = bounces.process(both, world)
    assert tally.hard == 1
    assert suppressed(world) == {"ana@example.com": "hard-bounce"}


def test_the_endpoint_answers_a_forged_report_as_it_answers_any_it_ignores(world, set_env, advance):  # type: ignore[no-untyped-def]
    set_env(bounce_token=TOKEN)
    subscribe(world, "ana@example.com", "three-step")
    send_due(world, set_env, advance)
    with TestClient(create_app()) as client:
        forged = post(client, dsn("ana@example.com", None))
        not_a_bounce = post(client, b"From: ana@example.com\r\nSubject: thanks!\r\n\r\nsee you\r\n")
    assert forged.status_code == not_a_bounce.status_code == 202
    assert forged.json()["ignored"] == 1 and forged.json()["hard"] == 0
    assert suppressed(world) == {}


def test_the_scanner_keeps_forged_reports_for_a_person_even_with_delete(world, set_env, advance, tmp_path):  # type: ignore[no-untyped-def]
    subscribe(world, "ana@example.com", "three-step")
    send_due(world, set_env, advance)
    path = tmp_path / "bounces"
    box = mailbox.Maildir(path, create=True)
    key = box.add(dsn("ana@example.com", None))

    result = CliRunner().invoke(main, ["bounces", "scan", str(path), "--delete"])

    assert result.exit_code == 0, result.output
    assert "hard 0" in result.output and "ignored 1" in result.output
    assert mailbox.Maildir(path, create=False).keys() == [key]
    assert suppressed(world) == {}


# --- item 11: IPv6 forms that carry an IPv4 address are judged by that address -----------------------------

PRODUCTION = {
    "env": "production",
    "postal_address": "1 Real Street, Springfield, IL 62701, USA",
    "base_url": "https://nurture.test",
}

EMBEDDED_FORBIDDEN = [
    ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
    ("2002:a00:1::1", "private"),  # 6to4 of 10.0.0.1
    ("2002:c0a8:a::", "private"),  # 6to4 of 192.168.0.10
    ("2002:a9fe:a9fe::", "link-local"),  # 6to4 of 169.254.169.254, the cloud metadata service
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback"),  # Teredo, client 127.0.0.1
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "private"),  # Teredo, client 10.0.0.1
    ("2001:0:a00:1:8000:63bf:a26c:5af1", "private"),  # Teredo, server 10.0.0.1
    ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
    ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
    ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
    ("::ffff:10.0.0.1", "private"),
    ("::7f00:1", "loopback"),  # IPv4-compatible (deprecated) ::127.0.0.1
    ("::a00:1", "private"),
]


@pytest.mark.parametrize(("address", "reason"), EMBEDDED_FORBIDDEN)
def test_an_ipv6_address_embedding_a_forbidden_ipv4_is_refused(set_env, address, reason) -> None:  # type: ignore[no-untyped-def]
    set_env(**PRODUCTION)
    with pytest.raises(UnsafeUrl, match=reason):
        validate_url(f"https://[{address}]/hook", get_settings())


def test_a_public_ipv4_in_6to4_is_accepted_like_the_ipv4_itself(set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(**PRODUCTION)
    settings = get_settings()
    assert validate_url("https://93.184.215.14/hook", settings)
    assert validate_url("https://[2002:5db8:d70e::1]/hook", settings)  # 6to4 of 93.184.215.14


# --- item 12: a failed SMTP transaction never spoils the next message, nor reads as a bounce ------------

MESSAGE = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nhello\r\n"


def fail_first_rcpt(monkeypatch: pytest.MonkeyPatch, failure: Exception) -> None:
    """Make the first RCPT TO raise ``failure`` once MAIL FROM is accepted: the server is mid-transaction."""
    real_rcpt = smtplib.SMTP.rcpt
    calls: list[str] = []

    def rcpt(self: smtplib.SMTP, recip: str, options: Any = ()) -> Any:
        calls.append(recip)
        if len(calls) == 1:
            raise failure
        return real_rcpt(self, recip, options)

    monkeypatch.setattr(smtplib.SMTP, "rcpt", rcpt)


@pytest.mark.parametrize(
    "failure",
    [
        None,  # a recipient smtplib cannot encode: a real UnicodeEncodeError after MAIL FROM was accepted
        ValueError("something went wrong"),
        RuntimeError("a bug"),
        smtplib.SMTPNotSupportedError("SMTPUTF8 not supported by server"),
    ],
)
def test_an_exception_mid_transaction_leaves_the_connection_fit_for_the_next_message(
    monkeypatch, failure
) -> None:  # type: ignore[no-untyped-def]
    first = "josé@example.com"
    if failure is not None:
        first = "b@example.com"
        fail_first_rcpt(monkeypatch, failure)
    with SmtpServer() as smtp:
        transport = transport_from_url(smtp.url, timeout=5)
        assert isinstance(transport, SmtpTransport)
        with pytest.raises(TemporaryFailure):  # nothing was handed over: safe to retry, not a bounce
            transport.send("a@example.com", first, MESSAGE)
        transport.send("a@example.com", "c@example.com", MESSAGE)
        transport.close()
    assert [r.rcpt_tos for r in smtp.received] == [["c@example.com"]]


@pytest.fixture
def one_step_world(factory, one_step):  # type: ignore[no-untyped-def]
    sync_sequences(factory)
    return factory


def test_a_message_whose_send_broke_does_not_bounce_the_next_recipient(one_step_world, set_env, monkeypatch):  # type: ignore[no-untyped-def]
    world = one_step_world
    fail_first_rcpt(monkeypatch, ValueError("something went wrong"))
    with SmtpServer() as smtp, clock.frozen(START) as advance:
        set_env(smtp_url=smtp.url)
        subscribe(world, "ana@example.com", "one-step")
        advance(timedelta(seconds=1))
        subscribe(world, "bo@example.com", "one-step")  # due a second later: sent after ana, same connection
        advance(timedelta(seconds=1))
        outcomes = dispatch_inline(world, make_sender(world))
    assert outcomes == {"retry": 1, "sent": 1}, outcomes
    assert [r.rcpt_tos for r in smtp.received] == [["bo@example.com"]]
    assert suppressed(world) == {}
    assert [d.status for d in deliveries(world)] == ["pending", "sent"]


class RefusingHandler(RecordingHandler):
    """Answers MAIL FROM (or RCPT TO) with the reply given, once, then behaves."""

    def __init__(self, mail_reply: str | None = None, rcpt_reply: str | None = None) -> None:
        super().__init__(SmtpScript())
        self.mail_reply = mail_reply
        self.rcpt_reply = rcpt_reply

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if self.mail_reply:
            reply, self.mail_reply = self.mail_reply, None
            return reply
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if self.rcpt_reply:
            reply, self.rcpt_reply = self.rcpt_reply, None
            return reply
        return await super().handle_RCPT(server, session, envelope, address, options)


@pytest.mark.parametrize(
    ("mail_reply", "rcpt_reply"),
    [
        ("550 5.7.1 Sender address rejected: not owned by user", None),
        ("553 5.7.1 Relaying denied", None),
        ("503 5.5.1 Error: nested MAIL command", None),
        (None, "503 5.5.1 Error: need MAIL command"),
    ],
)
def test_a_refused_sender_or_a_bad_sequence_is_not_the_recipients_bounce(
    one_step_world, set_env, mail_reply, rcpt_reply
) -> None:  # type: ignore[no-untyped-def]
    world = one_step_world
    smtp = SmtpServer()
    smtp.handler = RefusingHandler(mail_reply, rcpt_reply)
    smtp.controller.handler = smtp.handler
    with smtp, clock.frozen(START) as advance:
        set_env(smtp_url=smtp.url, retry_base_seconds="10")
        subscribe(world, "ana@example.com", "one-step")
        sender = make_sender(world)
        outcomes = dispatch_inline(world, sender)
        assert outcomes["failed"] == 0 and outcomes["sent"] == 0, outcomes
        assert suppressed(world) == {}
        with transaction(world) as session:
            assert session.scalar(select(Event.id).where(Event.kind == "bounced")) is None
            delivery = session.scalar(select(Delivery))
            assert delivery.status == "pending" and delivery.last_error
        advance(timedelta(seconds=60))
        assert dispatch_inline(world, sender)["sent"] == 1  # the next try, on a sound connection, goes
    assert [r.rcpt_tos for r in smtp.received] == [["ana@example.com"]]
