"""SMTP PIPELINING (RFC 2920): MAIL, RCPT and DATA in one write when the server offers it, with every
failure read and classified as without pipelining, against aiosmtpd on loopback."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator

import pytest
from aiosmtpd.controller import Controller
from hypothesis import given, settings
from hypothesis import strategies as st

from nurture.mail.factory import transport_from_url
from nurture.mail.transports import (
    AmbiguousFailure,
    ConnectFailure,
    HeldBack,
    MaildirTransport,
    MemoryTransport,
    PermanentFailure,
    SmtpTransport,
    TemporaryFailure,
    angle_address,
)
from tests.support.processes import RecordingHandler, SmtpScript, free_port

MESSAGE = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: pipelined\r\n\r\nhello\r\n.leading dot\r\n"


class CountingHandler(RecordingHandler):
    """Refuses one sender, as a server refuses an envelope sender it does not accept."""

    async def handle_MAIL(self, server, session, envelope, address, options):  # type: ignore[no-untyped-def]
        if address == "refused@example.com":
            return "553 sender not allowed"
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, options):  # type: ignore[no-untyped-def]
        self.recipients_asked = [*getattr(self, "recipients_asked", []), address]
        return await super().handle_RCPT(server, session, envelope, address, options)


@pytest.fixture(params=[True, False], ids=["pipelining", "plain"])
def server(request, monkeypatch) -> Iterator[tuple[CountingHandler, SmtpTransport]]:  # type: ignore[no-untyped-def]
    script = SmtpScript(pipelining=request.param, rcpt_replies={"gone@example.com": "550 no such user"})
    handler = CountingHandler(script)
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    transport = transport_from_url(f"smtp://127.0.0.1:{port}", timeout=5, dkim=False)
    assert isinstance(transport, SmtpTransport)
    # Count the pipelined envelopes, to tell which path each case took.
    pipelined = transport._envelope_pipelined
    transport.pipelined = 0  # type: ignore[attr-defined]

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        transport.pipelined += 1  # type: ignore[attr-defined]
        return pipelined(*args, **kwargs)

    monkeypatch.setattr(transport, "_envelope_pipelined", counted)
    yield handler, transport
    transport.close()
    controller.stop()


def test_messages_arrive_whole_over_one_connection(server) -> None:  # type: ignore[no-untyped-def]
    handler, transport = server
    for n in range(3):
        transport.send("a@example.com", f"r{n}@example.com", MESSAGE)
    assert [r.rcpt_tos[0] for r in handler.received] == ["r0@example.com", "r1@example.com", "r2@example.com"]
    assert handler.received[0].data.replace(b"\r\n", b"\n").endswith(b"hello\n.leading dot\n")
    assert transport.pipelined == (3 if handler.script.pipelining else 0)


def test_a_refused_recipient_is_its_bounce_and_the_connection_goes_on(server) -> None:  # type: ignore[no-untyped-def]
    handler, transport = server
    with pytest.raises(PermanentFailure, match="RCPT TO: 550"):
        transport.send("a@example.com", "gone@example.com", MESSAGE)
    transport.send("a@example.com", "here@example.com", MESSAGE)
    assert [r.rcpt_tos for r in handler.received] == [["here@example.com"]]


def test_a_refused_sender_is_not_the_recipients_bounce(server) -> None:  # type: ignore[no-untyped-def]
    handler, transport = server
    with pytest.raises(ConnectFailure, match="refused our sender"):
        transport.send("refused@example.com", "r@example.com", MESSAGE)
    transport.send("a@example.com", "r@example.com", MESSAGE)
    assert [r.rcpt_tos for r in handler.received] == [["r@example.com"]]


def test_a_temporary_refusal_at_the_end_of_data_is_temporary(server) -> None:  # type: ignore[no-untyped-def]
    handler, transport = server
    handler.script.data_replies.append("451 try later")
    with pytest.raises(TemporaryFailure, match="451"):
        transport.send("a@example.com", "r@example.com", MESSAGE)
    transport.send("a@example.com", "r@example.com", MESSAGE)
    assert len(handler.received) == 1


def test_before_data_runs_once_the_server_is_ready_for_the_message_and_before_any_of_it_goes(server) -> None:  # type: ignore[no-untyped-def]
    """The sender confirms the previous email's receipt there (nurture.delivery.receipts): the envelope is
    answered by then, and the server has none of this message yet."""
    handler, transport = server
    seen: list[tuple[int, str]] = []

    def before_data() -> None:
        seen.append((len(handler.received), handler.recipients_asked[-1]))

    transport.send("a@example.com", "r@example.com", MESSAGE, before_data)
    assert seen == [(0, "r@example.com")] and len(handler.received) == 1


def test_a_failing_before_data_sends_none_of_the_message_and_the_next_one_still_goes(server) -> None:  # type: ignore[no-untyped-def]
    handler, transport = server

    def database_away() -> None:
        raise OSError("receipt not stored")

    with pytest.raises(HeldBack, match="receipt not stored") as raised:
        transport.send("a@example.com", "held@example.com", MESSAGE, database_away)
    assert isinstance(raised.value.__cause__, OSError)
    # Inside DATA the connection was dropped: the server discarded the transaction, nothing arrived.
    transport.send("a@example.com", "next@example.com", MESSAGE, lambda: None)
    assert [r.rcpt_tos for r in handler.received] == [["next@example.com"]]


# --- the next envelope behind the final dot (``then``) ---------------------------------------------------


def _writes(transport: SmtpTransport, monkeypatch) -> list[bytes]:  # type: ignore[no-untyped-def]
    """What the transport writes to its connection from now on, one item per write."""
    writes: list[bytes] = []
    connection = transport._conn or transport._connect()
    transport._conn = connection
    original = connection.send

    def recorded(data):  # type: ignore[no-untyped-def]
        writes.append(data if isinstance(data, bytes) else data.encode())
        return original(data)

    monkeypatch.setattr(connection, "send", recorded)
    return writes


def test_each_envelope_rides_behind_the_previous_final_dot(server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    handler, transport = server
    writes = _writes(transport, monkeypatch)
    recipients = [f"r{n}@example.com" for n in range(4)]
    for n, recipient in enumerate(recipients):
        then = ("a@example.com", recipients[n + 1]) if n + 1 < len(recipients) else None
        transport.send("a@example.com", recipient, MESSAGE, then=then)
    assert [r.rcpt_tos[0] for r in handler.received] == recipients
    assert all(r.data.replace(b"\r\n", b"\n").endswith(b"hello\n.leading dot\n") for r in handler.received)
    if handler.script.pipelining:
        # One envelope of its own, then one write per message: its content, the dot and the next envelope.
        assert len(writes) == 1 + len(recipients)
        assert all(w.endswith(b".\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<" + r.encode() + b">\r\nDATA\r\n")
                   for w, r in zip(writes[1:], recipients[1:], strict=False))  # fmt: skip
        assert writes[-1].endswith(b"\r\n.\r\n")  # the last carries nothing after its dot
    else:
        assert not any(b"MAIL FROM" in w and b"DATA" in w for w in writes)  # never ahead without PIPELINING
    assert transport._pending is None


def test_an_envelope_written_ahead_for_another_message_is_abandoned_and_nothing_empty_arrives(server) -> None:  # type: ignore[no-untyped-def]
    """The server sits inside DATA for the envelope written ahead: closing the connection is the only safe
    way out (a bare dot would deliver an empty message)."""
    handler, transport = server
    transport.send(
        "a@example.com", "first@example.com", MESSAGE, then=("a@example.com", "skipped@example.com")
    )
    transport.send("a@example.com", "other@example.com", MESSAGE)
    transport.send("a@example.com", "last@example.com", MESSAGE)
    assert [r.rcpt_tos for r in handler.received] == [
        ["first@example.com"],
        ["other@example.com"],
        ["last@example.com"],
    ]


def test_a_refused_recipient_written_ahead_is_that_messages_bounce_and_the_rest_goes_on(server) -> None:  # type: ignore[no-untyped-def]
    handler, transport = server
    transport.send("a@example.com", "r0@example.com", MESSAGE, then=("a@example.com", "gone@example.com"))
    with pytest.raises(PermanentFailure, match="RCPT TO: 550"):
        transport.send("a@example.com", "gone@example.com", MESSAGE, then=("a@example.com", "r2@example.com"))
    transport.send("a@example.com", "r2@example.com", MESSAGE)
    assert [r.rcpt_tos for r in handler.received] == [["r0@example.com"], ["r2@example.com"]]


def test_a_refusal_at_the_end_of_data_leaves_the_next_envelope_in_place(server) -> None:  # type: ignore[no-untyped-def]
    handler, transport = server
    handler.script.data_replies.append("451 try later")
    with pytest.raises(TemporaryFailure, match="451"):
        transport.send("a@example.com", "r0@example.com", MESSAGE, then=("a@example.com", "r1@example.com"))
    transport.send("a@example.com", "r1@example.com", MESSAGE)
    assert [r.rcpt_tos for r in handler.received] == [["r1@example.com"]]


def test_before_data_still_runs_after_the_envelope_written_ahead_is_answered(server) -> None:  # type: ignore[no-untyped-def]
    handler, transport = server
    seen: list[tuple[int, str]] = []

    def before_data() -> None:
        seen.append((len(handler.received), handler.recipients_asked[-1]))

    transport.send(
        "a@example.com", "r0@example.com", MESSAGE, before_data, then=("a@example.com", "r1@example.com")
    )
    transport.send("a@example.com", "r1@example.com", MESSAGE, before_data)
    assert seen == [(0, "r0@example.com"), (1, "r1@example.com")] and len(handler.received) == 2


def test_a_lost_final_reply_is_ambiguous_and_the_envelope_written_ahead_goes_with_the_connection(
    monkeypatch,
) -> None:  # type: ignore[no-untyped-def]
    """The next message was never handed over: it goes on a new connection, once."""
    script = SmtpScript(pipelining=True, drop_after_data=1)
    handler = RecordingHandler(script)
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    transport = transport_from_url(f"smtp://127.0.0.1:{port}", timeout=5, dkim=False)
    try:
        with pytest.raises(AmbiguousFailure):
            transport.send(
                "a@example.com", "r0@example.com", MESSAGE, then=("a@example.com", "r1@example.com")
            )
        transport.send("a@example.com", "r1@example.com", MESSAGE)
    finally:
        transport.close()
        controller.stop()
    assert [r.rcpt_tos for r in handler.received] == [["r0@example.com"], ["r1@example.com"]]


def test_a_failing_before_data_keeps_the_message_from_memory_and_maildir(tmp_path) -> None:  # type: ignore[no-untyped-def]
    def database_away() -> None:
        raise OSError("receipt not stored")

    memory = MemoryTransport()
    maildir = MaildirTransport(tmp_path / "mail")
    for transport in (memory, maildir):
        with pytest.raises(HeldBack):
            transport.send("a@example.com", "r@example.com", MESSAGE, database_away)
    assert memory.outbox == [] and list((tmp_path / "mail" / "new").iterdir()) == []


@settings(max_examples=500, deadline=None)
@given(
    local=st.text(alphabet=st.sampled_from("abcXYZ019.!#$%&'*+/=?^_`{|}~-"), min_size=1, max_size=20),
    domain=st.text(alphabet=st.sampled_from("abc019.-"), min_size=1, max_size=15),
)
def test_plain_addresses_are_quoted_as_smtplib_quotes_them(local: str, domain: str) -> None:
    address = f"{local}@{domain}"
    assert angle_address(address) == smtplib.quoteaddr(address)


@pytest.mark.parametrize(
    "address", ["<>", "Ann <ann@example.com>", "ann smith@example.com", "a@b@c", '"a b"@x']
)
def test_other_addresses_go_through_smtplib(address: str) -> None:
    assert angle_address(address) == smtplib.quoteaddr(address)
