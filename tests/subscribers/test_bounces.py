"""Bounce notifications that arrive by mail, for messages really sent through the engine: parsing with
flufl.bounce, suppression, the soft bounce limit, idempotency, the Maildir scanner and the HTTP endpoint; on
SQLite and PostgreSQL."""

from __future__ import annotations

import mailbox
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from nurture.cli import main
from nurture.core import clock
from nurture.core.config import get_settings
from nurture.core.db import transaction
from nurture.delivery.confirmations import Outbox
from nurture.mail.templates import EmailTemplates
from nurture.mail.transports import MemoryTransport
from nurture.models import Event, Subscriber, Suppression
from nurture.subscribers import bounces
from nurture.web.app import create_app
from tests.support.helpers import deliveries, dispatch_inline, make_sender, subscribe, sync_sequences
from tests.support.processes import SmtpServer, wait_until

START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
TOKEN = "bounce-token-for-tests-0123456789"


# --- notifications as mail servers write them --------------------------------------------------------------


def dsn(
    recipient: str,
    original: bytes | None,
    *,
    dsn_id: str = "<dsn.1@mx.example.net>",
    action: str = "failed",
    status: str = "5.1.1",
    diagnostic: str = "smtp; 550 5.1.1 Recipient address rejected: User unknown",
    full_message: bool = False,
) -> bytes:
    """An RFC 3464 report like Postfix sends: human text, the delivery-status part, the original headers
    (text/rfc822-headers) or the whole original message (message/rfc822)."""
    if original is None:
        returned = ""
    elif full_message:
        returned = (
            "--B0UND\nContent-Type: message/rfc822\n\n" + original.decode().replace("\r\n", "\n") + "\n"
        )
    else:
        headers = original.decode().split("\r\n\r\n", 1)[0].replace("\r\n", "\n")
        returned = "--B0UND\nContent-Type: text/rfc822-headers\n\n" + headers + "\n\n"
    text = (
        "delivery to the recipient failed permanently"
        if action == "failed"
        else "delivery is delayed; the mail system will keep trying"
    )
    return (
        "Return-Path: <>\n"
        "From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\n"
        "To: hello@example.com\n"
        "Subject: Undelivered Mail Returned to Sender\n"
        "Date: Mon, 2 Mar 2026 15:05:00 +0000\n"
        f"Message-ID: {dsn_id}\n"
        "Auto-Submitted: auto-replied\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B0UND"\n'
        "\n"
        "This is a MIME-encapsulated message.\n"
        "\n"
        "--B0UND\n"
        "Content-Description: Notification\n"
        "Content-Type: text/plain; charset=us-ascii\n"
        "\n"
        f"This is the mail system at host mx.example.net.\n\nYour message to <{recipient}>: {text}.\n"
        "\n"
        "--B0UND\n"
        "Content-Description: Delivery report\n"
        "Content-Type: message/delivery-status\n"
        "\n"
        "Reporting-MTA: dns; mx.example.net\n"
        "X-Postfix-Queue-ID: 4Q1xyz2ABC\n"
        "Arrival-Date: Mon,  2 Mar 2026 15:00:00 +0000 (UTC)\n"
        "\n"
        f"Final-Recipient: rfc822; {recipient}\n"
        f"Original-Recipient: rfc822;{recipient}\n"
        f"Action: {action}\n"
        f"Status: {status}\n"
        f"Remote-MTA: dns; mx.{recipient.split('@')[1]}\n"
        f"Diagnostic-Code: {diagnostic}\n"
        "\n" + returned + "--B0UND--\n"
    ).encode()


def delayed(recipient: str, original: bytes | None, dsn_id: str) -> bytes:
    return dsn(
        recipient,
        original,
        dsn_id=dsn_id,
        action="delayed",
        status="4.2.2",
        diagnostic="smtp; 452 4.2.2 Mailbox full",
    )


OUT_OF_OFFICE = (
    b"From: Ana <ana@example.com>\r\n"
    b"To: hello@example.com\r\n"
    b"Subject: Out of office: Demo 1 of 3\r\n"
    b"Message-ID: <ooo.1@example.com>\r\n"
    b"Auto-Submitted: auto-replied\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"I am away until Monday and will read your message when I am back.\r\n"
)


# --- the world: real sends, through the engine, to an SMTP server on loopback ---------------------------


@pytest.fixture
def advance():  # type: ignore[no-untyped-def]
    with clock.frozen(START) as move:
        yield move


@pytest.fixture
def world(factory, three_step, advance):  # type: ignore[no-untyped-def]
    sync_sequences(factory)
    return factory


def send_due(factory, set_env, advance, steps: int = 1) -> list[bytes]:  # type: ignore[no-untyped-def]
    """Send ``steps`` rounds of due email (a step a second) and return every message the server accepted."""
    with SmtpServer() as smtp:
        set_env(smtp_url=smtp.url)
        sender = make_sender(factory)
        for _ in range(steps):
            outcomes = dispatch_inline(factory, sender)
            assert set(outcomes) == {"sent"}, outcomes
            advance(timedelta(seconds=1))
    return [received.data for received in smtp.received]


def kinds(factory, kind: str) -> list[Event]:  # type: ignore[no-untyped-def]
    with transaction(factory) as session:
        return list(session.scalars(select(Event).where(Event.kind == kind).order_by(Event.id)))


def suppressions(factory) -> dict[str, str]:  # type: ignore[no-untyped-def]
    with transaction(factory) as session:
        return {s.email: s.reason for s in session.scalars(select(Suppression))}


def subscriber_statuses(factory, subscriber_id: int) -> list[str]:  # type: ignore[no-untyped-def]
    return [d.status for d in deliveries(factory) if d.subscriber_id == subscriber_id]


# --- parsing ----------------------------------------------------------------------------------------------


def test_parse_reads_hard_soft_status_and_the_original_message_id() -> None:
    original = b"Message-ID: <nurture.7.0123456789abcdef@example.com>\r\nSubject: hi\r\n\r\nbody\r\n"
    hard = bounces.parse(dsn("X@Example.com", original))
    assert hard.hard == {"x@example.com"} and hard.soft == set()
    assert hard.key == "<dsn.1@mx.example.net>"
    assert hard.original_message_id == "<nurture.7.0123456789abcdef@example.com>"
    assert hard.statuses["x@example.com"].startswith("5.1.1 (smtp; 550 5.1.1")
    full = bounces.parse(dsn("x@example.com", original, full_message=True))
    assert full.original_message_id == "<nurture.7.0123456789abcdef@example.com>"
    soft = bounces.parse(delayed("y@example.com", None, "<dsn.2@mx.example.net>"))
    assert soft.soft == {"y@example.com"} and soft.hard == set() and soft.original_message_id is None


def test_a_non_standard_bounce_is_read_too() -> None:
    # Old qmail format: no DSN, the failed address in the text, the original headers quoted below.
    qmail = (
        b"From: MAILER-DAEMON@mail.example.org\n"
        b"To: hello@example.com\n"
        b"Subject: failure notice\n"
        b"\n"
        b"Hi. This is the qmail-send program at mail.example.org.\n"
        b"I'm afraid I wasn't able to deliver your message to the following addresses.\n"
        b"This is a permanent error; I've given up. Sorry it didn't work out.\n"
        b"\n"
        b"<zed@example.org>:\n"
        b"Sorry, no mailbox here by that name. (#5.1.1)\n"
        b"\n"
        b"--- Below this line is a copy of the message.\n"
        b"\n"
        b"Message-ID: <nurture.9.0123456789abcdef@example.com>\n"
        b"Subject: Demo 1 of 3\n"
    )
    bounce = bounces.parse(qmail)
    assert bounce.hard == {"zed@example.org"}
    assert bounce.original_message_id == "<nurture.9.0123456789abcdef@example.com>"
    assert bounce.key.startswith("sha256:")  # no Message-ID of its own: its bytes identify it


def test_a_message_that_is_no_bounce_is_unrecognised_and_garbage_is_malformed() -> None:
    assert not bounces.parse(OUT_OF_OFFICE).recognised
    for garbage in (b"", b"  \r\n", b"\x00\xff\xfe not an email at all", b"just some words\nand more\n"):
        with pytest.raises(bounces.MalformedMessage):
            bounces.parse(garbage)


def test_raw_8bit_headers_do_not_hide_a_bounce() -> None:
    # Some MTAs write UTF-8 straight into headers; flufl.bounce's detectors choke on the bytes form.
    raw = dsn("x@example.com", None).replace(b"Action: failed", "Action: failed (échec définitif)".encode())
    assert bounces.parse(raw).hard == {"x@example.com"}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.sampled_from([dsn("x@example.com", b"Message-ID: <m@example.com>\r\n\r\n"), OUT_OF_OFFICE]),
    edits=st.lists(st.tuples(st.floats(0, 1), st.binary(max_size=40), st.integers(0, 60)), max_size=12),
)
def test_any_input_is_a_bounce_or_not_or_malformed_never_a_crash(
    base: bytes, edits: list[tuple[float, bytes, int]]
) -> None:
    data = bytearray(base)
    for where, insert, cut in edits:
        at = int(where * len(data))
        data[at : at + cut] = insert
    try:
        result = bounces.parse(bytes(data))
    except bounces.MalformedMessage:
        return
    assert all("@" in address for address in result.hard | result.soft)


# --- applying, on both databases -----------------------------------------------------------------------


def test_hard_bounce_suppresses_cancels_pending_and_is_tied_to_the_delivery(world, set_env, advance):  # type: ignore[no-untyped-def]
    ana = subscribe(world, "ana@example.com", "three-step")
    bo = subscribe(world, "bo@example.com", "three-step")
    sent = send_due(world, set_env, advance)
    ana_message = next(m for m in sent if b"To: ana@example.com" in m)
    first = next(d for d in deliveries(world) if d.subscriber_id == ana and d.status == "sent")

    tally = bounces.process(dsn("ana@example.com", ana_message), world)

    assert tally.as_dict() == {
        "hard": 1,
        "soft": 0,
        "unrecognised": 0,
        "duplicate": 0,
        "suppressed_soft": 0,
        "ignored": 0,
    }
    assert suppressions(world) == {"ana@example.com": "hard-bounce"}
    assert subscriber_statuses(world, ana) == ["sent", "cancelled", "cancelled"]
    assert subscriber_statuses(world, bo) == ["sent", "pending", "pending"]
    [event] = kinds(world, "bounced")
    assert (event.subscriber_id, event.delivery_id) == (ana, first.id)
    assert event.detail["dsn"] == "<dsn.1@mx.example.net>"
    assert event.detail["status"].startswith("5.1.1") and event.detail["cancelled"] == 2
    with transaction(world) as session:
        detail = session.scalar(select(Suppression.detail))
    assert "5.1.1" in detail and "<dsn.1@mx.example.net>" in detail


def test_the_whole_returned_message_and_a_forwarded_address_still_find_the_subscriber(
    world, set_env, advance
):  # type: ignore[no-untyped-def]
    ana = subscribe(world, "ana@example.com", "three-step")
    [message] = send_due(world, set_env, advance)
    # ana@example.com forwards to a mailbox that no longer exists; the DSN names only the final address.
    bounce = dsn("ana.old@forward.example", message, full_message=True)
    assert bounces.process(bounce, world).hard == 1
    assert suppressions(world) == {"ana@example.com": "hard-bounce"}
    assert subscriber_statuses(world, ana) == ["sent", "cancelled", "cancelled"]
    assert kinds(world, "bounced")[0].delivery_id == deliveries(world)[0].id


def test_a_bounced_confirmation_email_suppresses_the_address_for_later(world, set_env) -> None:  # type: ignore[no-untyped-def]
    # Someone signs up with a dead address: the confirmation email, not a delivery, is what bounces.
    set_env(default_sequence="three-step")
    with TestClient(create_app(), base_url="https://nurture.test") as client:
        answer = client.post("/subscribe", json={"email": "stranger@example.net", "consent": True})
    assert answer.status_code == 202
    transport = MemoryTransport()
    settings = get_settings()
    assert Outbox(settings, world, transport, EmailTemplates(settings.templates_dir)).drain()["sent"] == 1
    [confirmation] = [m.data for m in transport.outbox]

    assert bounces.process(dsn("stranger@example.net", confirmation), world).hard == 1
    assert suppressions(world) == {"stranger@example.net": "hard-bounce"}
    [event] = kinds(world, "bounced")
    with transaction(world) as session:
        stranger = session.scalar(select(Subscriber.id).where(Subscriber.email == "stranger@example.net"))
    assert event.subscriber_id == stranger and event.delivery_id is None


def test_the_same_notification_twice_counts_once(world, set_env, advance):  # type: ignore[no-untyped-def]
    subscribe(world, "ana@example.com", "three-step")
    [message] = send_due(world, set_env, advance)
    hard = dsn("ana@example.com", message)
    soft = delayed("ana@example.com", message, "<dsn.soft@mx.example.net>")
    assert bounces.process(soft, world).soft == 1
    assert bounces.process(hard, world).hard == 1
    assert bounces.process(hard, world).as_dict()["duplicate"] == 1
    assert bounces.process(soft, world).as_dict()["duplicate"] == 1
    assert len(kinds(world, "bounced")) == 1 and len(kinds(world, "soft_bounce")) == 1
    not_a_bounce = bounces.process(OUT_OF_OFFICE, world)
    assert not_a_bounce.as_dict() == {**bounces.Tally().as_dict(), "unrecognised": 1}


def test_soft_bounces_suppress_at_the_limit_and_cancel_what_is_pending(world, set_env, advance):  # type: ignore[no-untyped-def]
    set_env(soft_bounce_limit="2")
    ana = subscribe(world, "ana@example.com", "three-step")
    first, second = send_due(world, set_env, advance, steps=2)

    tally = bounces.process(delayed("ana@example.com", first, "<d1@mx.example.net>"), world)
    assert (tally.soft, tally.suppressed_soft) == (1, 0)
    assert suppressions(world) == {}
    assert subscriber_statuses(world, ana) == ["sent", "sent", "pending"]

    tally = bounces.process(delayed("ana@example.com", second, "<d2@mx.example.net>"), world)
    assert (tally.soft, tally.suppressed_soft) == (1, 1)
    assert suppressions(world) == {"ana@example.com": "soft-bounce-limit"}
    assert subscriber_statuses(world, ana) == ["sent", "sent", "cancelled"]
    events = kinds(world, "soft_bounce")
    assert [(e.detail["count"], e.detail["suppressed"]) for e in events] == [(1, False), (2, True)]
    assert [e.delivery_id for e in events] == [d.id for d in deliveries(world)][:2]
    assert all(e.detail["status"].startswith("4.2.2") for e in events)


def test_repeated_delay_warnings_about_one_email_are_one_soft_bounce(world, set_env, advance):  # type: ignore[no-untyped-def]
    set_env(soft_bounce_limit="2")
    ana = subscribe(world, "ana@example.com", "three-step")
    message, second = send_due(world, set_env, advance, steps=2)
    for n in range(3):  # the MTA warns after 4 h, 24 h, 48 h: still one email that has not arrived
        assert bounces.process(delayed("ana@example.com", message, f"<warn.{n}@mx.example.net>"), world).soft
    assert suppressions(world) == {}
    assert [e.detail["count"] for e in kinds(world, "soft_bounce")] == [1, 1, 1]
    # A warning about another email is a second soft bounce.
    assert bounces.process(
        delayed("ana@example.com", second, "<other@mx.example.net>"), world
    ).suppressed_soft
    assert suppressions(world) == {"ana@example.com": "soft-bounce-limit"}
    assert subscriber_statuses(world, ana) == ["sent", "sent", "cancelled"]


def test_a_foreign_or_forged_message_id_is_ignored(world, set_env, advance):  # type: ignore[no-untyped-def]
    ana = subscribe(world, "ana@example.com", "three-step")
    send_due(world, set_env, advance)
    first = next(d for d in deliveries(world) if d.subscriber_id == ana)
    forged = f"Message-ID: <nurture.{first.id}.ffffffffffffffff@example.com>\r\n\r\n".encode()
    assert bounces.process(dsn("ana@example.com", forged), world).as_dict() == {
        **bounces.Tally().as_dict(),
        "ignored": 1,
    }
    assert kinds(world, "bounced") == [] and suppressions(world) == {}
    assert subscriber_statuses(world, ana) == ["sent", "pending", "pending"]


@pytest.mark.postgres
def test_two_inputs_receiving_one_notification_at_once_count_it_once(
    pg_factory, three_step, set_env, advance
):  # type: ignore[no-untyped-def]
    sync_sequences(pg_factory)
    subscribe(pg_factory, "ana@example.com", "three-step")
    [message] = send_due(pg_factory, set_env, advance)
    raw = dsn("ana@example.com", message)
    results: list[bounces.Tally] = []
    with transaction(pg_factory) as session:
        first = bounces.apply(session, bounces.parse(raw), get_settings())  # holds the notification's lock
        other = threading.Thread(target=lambda: results.append(bounces.process(raw, pg_factory)))
        other.start()
        wait_until(lambda: _waiting_on_advisory_lock(pg_factory), 30, "the second input to wait for the lock")
    other.join(30)
    assert first.hard == 1 and results == [bounces.Tally(duplicate=1)]
    assert len(kinds(pg_factory, "bounced")) == 1


def _waiting_on_advisory_lock(factory) -> bool:  # type: ignore[no-untyped-def]
    with transaction(factory) as session:
        query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        return bool(session.scalar(text(query)))


# --- the Maildir scanner ------------------------------------------------------------------------------------


def scan(path: Path, *flags: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["bounces", "scan", str(path), *flags])
    return result.exit_code, result.output


@pytest.fixture
def maildir(tmp_path: Path) -> tuple[Path, mailbox.Maildir]:
    path = tmp_path / "bounces"
    return path, mailbox.Maildir(path, create=True)


def test_cli_scans_a_maildir_and_moves_what_it_processed_to_cur(world, set_env, advance, maildir):  # type: ignore[no-untyped-def]
    path, box = maildir
    ana = subscribe(world, "ana@example.com", "three-step")
    subscribe(world, "bo@example.com", "three-step")
    sent = send_due(world, set_env, advance)
    ana_message = next(m for m in sent if b"To: ana@example.com" in m)
    bo_message = next(m for m in sent if b"To: bo@example.com" in m)
    keys = [
        box.add(dsn("ana@example.com", ana_message)),
        box.add(dsn("ana@example.com", ana_message)),  # the same notification delivered twice
        box.add(delayed("bo@example.com", bo_message, "<d.bo@mx.example.net>")),
        box.add(OUT_OF_OFFICE),
    ]
    seen_already = mailbox.MaildirMessage(dsn("bo@example.com", bo_message, dsn_id="<old@mx.example.net>"))
    seen_already.set_subdir("cur")
    seen_already.add_flag("S")
    keys.append(box.add(seen_already))

    code, output = scan(path)

    assert code == 0, output
    assert "hard 1, soft 1, unrecognised 1, already processed 1" in output
    assert suppressions(world) == {"ana@example.com": "hard-bounce"}  # not bo@: that one was marked seen
    assert subscriber_statuses(world, ana) == ["sent", "cancelled", "cancelled"]
    box = mailbox.Maildir(path, create=False)
    assert sorted(box.keys()) == sorted(keys)
    for key in keys:
        message = box.get_message(key)
        assert message.get_subdir() == "cur" and "S" in message.get_flags()
    assert list((path / "new").iterdir()) == []
    code, output = scan(path)
    assert code == 0 and "hard 0, soft 0, unrecognised 0, already processed 0" in output


def test_cli_delete_removes_bounces_but_keeps_other_mail(world, set_env, advance, maildir) -> None:  # type: ignore[no-untyped-def]
    path, box = maildir
    ana = subscribe(world, "ana@example.com", "three-step")
    bo = subscribe(world, "bo@example.com", "three-step")
    sent = send_due(world, set_env, advance)
    box.add(dsn("ana@example.com", next(m for m in sent if b"To: ana@example.com" in m)))
    box.add(
        delayed(
            "bo@example.com", next(m for m in sent if b"To: bo@example.com" in m), "<d.bo@mx.example.net>"
        )
    )
    kept = box.add(OUT_OF_OFFICE)
    code, output = scan(path, "--delete")
    assert code == 0, output
    assert "hard 1, soft 1, unrecognised 1" in output
    box = mailbox.Maildir(path, create=False)
    assert box.keys() == [kept] and "S" in box.get_message(kept).get_flags()
    assert subscriber_statuses(world, ana) == ["sent", "cancelled", "cancelled"]
    assert subscriber_statuses(world, bo) == ["sent", "pending", "pending"]


def test_cli_refuses_a_folder_that_is_not_a_maildir(world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    code, output = scan(tmp_path)
    assert code != 0 and "is not a Maildir" in output


# --- the HTTP endpoint --------------------------------------------------------------------------------------


def post(client: TestClient, body: bytes, token: str | None = TOKEN, content_type: str = "message/rfc822"):  # type: ignore[no-untyped-def]
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return client.post("/api/v1/bounces", content=body, headers=headers)


def test_endpoint_is_absent_without_a_token(world, set_env, advance) -> None:  # type: ignore[no-untyped-def]
    subscribe(world, "ana@example.com", "three-step")
    [message] = send_due(world, set_env, advance)
    with TestClient(create_app()) as client:
        answer = post(client, dsn("ana@example.com", message), token="")
    assert answer.status_code == 404
    assert suppressions(world) == {}


def test_endpoint_wants_the_token_and_a_message(world, set_env, advance) -> None:  # type: ignore[no-untyped-def]
    subscribe(world, "ana@example.com", "three-step")
    [message] = send_due(world, set_env, advance)
    set_env(bounce_token=TOKEN)
    body = dsn("ana@example.com", message)
    with TestClient(create_app()) as client:
        for token in (None, "", "wrong", TOKEN + "x", TOKEN[:-1]):
            answer = post(client, body, token=token)
            assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
        assert post(client, body, content_type="text/plain").status_code == 415
        for garbage in (b"", b"\x00\xff\xfe\x01 binary junk", b"no headers here\n"):
            answer = post(client, garbage)
            assert answer.status_code == 400
            assert answer.json()["error"]["code"] == "malformed_message" and answer.json()["error"]["message"]
        too_big = post(client, b"X-Pad: " + b"a" * (10 * 1024 * 1024) + b"\r\n\r\n")
        assert too_big.status_code == 413
    assert suppressions(world) == {}


def test_endpoint_processes_a_bounce_once(world, set_env, advance) -> None:  # type: ignore[no-untyped-def]
    set_env(bounce_token=TOKEN)
    ana = subscribe(world, "ana@example.com", "three-step")
    [message] = send_due(world, set_env, advance)
    body = dsn("ana@example.com", message)
    with TestClient(create_app()) as client:
        first = post(client, body)
        again = post(client, body)
        other = post(client, OUT_OF_OFFICE, content_type="message/rfc822; charset=utf-8")
    assert first.status_code == 202
    assert first.json() == {
        "hard": 1,
        "soft": 0,
        "unrecognised": 0,
        "duplicate": 0,
        "suppressed_soft": 0,
        "ignored": 0,
    }
    assert again.status_code == 202 and again.json()["duplicate"] == 1 and again.json()["hard"] == 0
    assert other.status_code == 202 and other.json()["unrecognised"] == 1
    assert suppressions(world) == {"ana@example.com": "hard-bounce"}
    assert subscriber_statuses(world, ana) == ["sent", "cancelled", "cancelled"]
    with transaction(world) as session:
        assert session.scalar(select(Subscriber.status)) == "active"  # suppressed, not unsubscribed
