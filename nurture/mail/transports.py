"""Where mail goes, chosen by ``NURTURE_SMTP_URL``: an SMTP server, a Maildir, or memory (tests).

Every transport raises one of three failures so the sender can decide without knowing the transport:
temporary (retry later), permanent (give up, suppress) and ambiguous (the server may have accepted it).
Permanent means the recipient was refused: a refusal of our own side (the envelope sender, a command out of
sequence) is temporary, so that it never suppresses an address.

``send`` takes an optional ``before_data``: called once the server is ready for the message (SMTP: after its
354) and before any of the message goes out. The sender uses it to confirm the previous email's receipt
while the envelope's round trip was on the wire (nurture.delivery.receipts). If it raises, the message is
not sent at all (an SMTP connection inside DATA is dropped, so the server discards the transaction) and
:class:`HeldBack` carries the error out.
"""

from __future__ import annotations

import contextlib
import mailbox
import re
import smtplib
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

# An address made only of what RFC 5321 allows unquoted in a mailbox (validated addresses are), for which
# smtplib.quoteaddr's answer is the address in angle brackets; it gets there through email.utils.parseaddr,
# a third of the SMTP exchange's CPU in a profile.
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+")


def angle_address(address: str) -> str:
    """``<address>`` for MAIL FROM and RCPT TO, as smtplib.quoteaddr writes it."""
    if _PLAIN_ADDRESS.fullmatch(address):
        return f"<{address}>"
    return smtplib.quoteaddr(address)


class SendFailure(Exception):
    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class TemporaryFailure(SendFailure):
    """4xx or a connection problem before the message was handed over: safe to retry."""


class ConnectFailure(TemporaryFailure):
    """The server could not be reached, or takes no mail from us now (login or envelope sender refused): says
    nothing about the message, so no attempt is counted."""


class PermanentFailure(SendFailure):
    """5xx for this recipient or message: the server refused; retrying will not help."""


class AmbiguousFailure(SendFailure):
    """The connection broke after the whole message was sent but before the server replied."""


class HeldBack(Exception):
    """``before_data`` raised (its error is the cause): the message was not handed over, nothing is known
    to be wrong with the server or the message."""


BeforeData = Callable[[], None] | None
# The envelope (sender, recipient) of the message that will be sent next, if the caller knows it: an SMTP
# connection that pipelines writes it right behind this message's final dot (RFC 2920), so each message costs
# one round trip and one write instead of two. Other transports ignore it.
Then = tuple[str, str] | None


def ready_for_data(before_data: BeforeData) -> None:
    """Run ``before_data``, its failure as :class:`HeldBack`: for transports with nothing to wait for."""
    if before_data is None:
        return
    try:
        before_data()
    except Exception as exc:
        raise HeldBack(str(exc)) from exc


class Transport(Protocol):
    def send(
        self,
        envelope_from: str,
        recipient: str,
        data: bytes,
        before_data: BeforeData = None,
        then: Then = None,
    ) -> None: ...

    def close(self) -> None: ...


# --- memory ---------------------------------------------------------------------------------------------


@dataclass
class StoredMessage:
    envelope_from: str
    recipient: str
    data: bytes


@dataclass
class MemoryTransport:
    """Keeps messages in a list: for tests that run the sender in-process."""

    outbox: list[StoredMessage] = field(default_factory=list)

    def send(
        self,
        envelope_from: str,
        recipient: str,
        data: bytes,
        before_data: BeforeData = None,
        then: Then = None,
    ) -> None:
        ready_for_data(before_data)
        self.outbox.append(StoredMessage(envelope_from, recipient, data))

    def close(self) -> None:
        pass


MEMORY_OUTBOX = MemoryTransport()


# --- maildir --------------------------------------------------------------------------------------------


class MaildirTransport:
    """The development mailbox: one file per message under ``new/``, readable by mutt, Thunderbird, etc."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._box = mailbox.Maildir(str(path), create=True)

    def send(
        self,
        envelope_from: str,
        recipient: str,
        data: bytes,
        before_data: BeforeData = None,
        then: Then = None,
    ) -> None:
        ready_for_data(before_data)
        header = f"Return-Path: <{envelope_from}>\r\nDelivered-To: {recipient}\r\n".encode()
        try:
            self._box.add(header + data)
        except OSError as exc:
            raise TemporaryFailure(f"maildir write failed: {exc}") from exc

    def close(self) -> None:
        pass


# --- smtp -----------------------------------------------------------------------------------------------


def dot_stuffed(data: bytes) -> bytes:
    """Every line that starts with a dot gets a second one (RFC 5321 4.5.2), as smtplib's
    ``re.sub(rb"(?m)^\\.", b"..", data)`` does. Every email's HTML has such lines (its CSS rules), and the
    regular expression scanned the whole message for them: about 100 us per 12 KB email, against a few
    for two C-level byte operations."""
    return (b"." + data if data.startswith(b".") else data).replace(b"\n.", b"\n..")


BAD_SEQUENCE = 503  # "bad sequence of commands" (RFC 5321): the transaction is out of step, whoever's fault


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    username: str | None
    password: str | None
    implicit_tls: bool
    starttls: bool
    timeout: float
    local_hostname: str
    cafile: str | None = None  # a private CA to trust (self-signed relays, tests); default: system CAs

    @classmethod
    def from_url(cls, url: str, timeout: float = 30.0, local_hostname: str = "localhost") -> SmtpTarget:
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        implicit_tls = parts.scheme == "smtps"
        starttls = query.get("starttls", "0").lower() in {"1", "true", "yes"}
        if not parts.hostname:
            raise ValueError(f"SMTP URL needs a host: {url!r}")
        return cls(
            host=parts.hostname,
            port=parts.port or (465 if implicit_tls else 587 if starttls else 25),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            implicit_tls=implicit_tls,
            starttls=starttls,
            timeout=float(query.get("timeout", timeout)),
            local_hostname=local_hostname,
            cafile=query.get("cafile") or None,
        )


class SmtpTransport:
    """One SMTP connection, opened on first use and reused for every later message in this process.

    The DATA phase is driven by hand instead of ``smtplib.sendmail`` so that a connection lost *after* the
    final dot is told apart from one lost before it: the first may have been delivered (ambiguous), the
    second certainly was not (temporary).
    """

    def __init__(self, target: SmtpTarget) -> None:
        self.target = target
        self._conn: smtplib.SMTP | None = None
        self._lock = threading.Lock()  # a thread pool worker shares one transport
        # An envelope written behind the last message's final dot whose three replies are not read yet
        # (``then``): the server is in that transaction, inside DATA if it answered 354.
        self._pending: tuple[str, str] | None = None

    def _connect(self) -> smtplib.SMTP:
        t = self.target
        context = ssl.create_default_context(cafile=t.cafile)
        try:
            if t.implicit_tls:
                conn: smtplib.SMTP = smtplib.SMTP_SSL(
                    t.host, t.port, local_hostname=t.local_hostname, timeout=t.timeout, context=context
                )
            else:
                conn = smtplib.SMTP(t.host, t.port, local_hostname=t.local_hostname, timeout=t.timeout)
            conn.ehlo()
            if t.starttls:
                conn.starttls(context=context)
                conn.ehlo()
            if t.username:
                conn.login(t.username, t.password or "")
        except smtplib.SMTPAuthenticationError as exc:
            raise ConnectFailure(f"SMTP login refused: {exc.smtp_code}", exc.smtp_code) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise ConnectFailure(f"SMTP connect to {t.host}:{t.port} failed: {exc}") from exc
        return conn

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
        self._conn = None
        self._pending = None  # whatever transaction the server had open dies with the connection

    def send(
        self,
        envelope_from: str,
        recipient: str,
        data: bytes,
        before_data: BeforeData = None,
        then: Then = None,
    ) -> None:
        with self._lock:
            try:
                self._send_once(envelope_from, recipient, data, before_data, then)
            except _StaleConnection:
                # A reused connection the server had closed while idle: nothing was handed over, so one
                # fresh attempt is safe.
                self._drop()
                try:
                    self._send_once(envelope_from, recipient, data, before_data, then)
                except _StaleConnection as exc:
                    self._drop()
                    raise ConnectFailure(f"SMTP connection lost: {exc}") from exc

    def _send_once(
        self, envelope_from: str, recipient: str, data: bytes, before_data: BeforeData, then: Then
    ) -> None:
        if self._pending is not None and self._pending != (envelope_from, recipient):
            # The envelope written ahead is not this message's (the caller went another way: a re-check
            # skipped that email, a batch stopped). The server may be waiting inside DATA for it, where
            # the only safe way out is to close the connection: it then discards the transaction
            # (RFC 5321 3.8), and a bare "." would have sent an empty message.
            self._drop()
        if self._conn is None:
            self._conn = self._connect()
        conn = self._conn
        try:
            self._hand_over(conn, envelope_from, recipient, data, before_data, then)
        except (SendFailure, _StaleConnection, HeldBack):
            raise
        except Exception as exc:
            # Anything else (an address smtplib cannot encode, a bug) may leave the server inside our
            # transaction, where the next MAIL FROM meets "503 sender already given" and would read as that
            # recipient's bounce: this connection is never used again. The final dot was not sent.
            self._drop()
            raise TemporaryFailure(f"SMTP transaction aborted: {type(exc).__name__}: {exc}") from exc
        try:
            code, reply = conn.getreply()
        except Exception as exc:
            self._drop()
            raise AmbiguousFailure(f"SMTP connection lost after DATA, before the reply: {exc}") from exc
        if code != 250:
            self._fail(code, reply, "end of DATA")  # the transaction is over either way: nothing to reset

    def _hand_over(
        self,
        conn: smtplib.SMTP,
        envelope_from: str,
        recipient: str,
        data: bytes,
        before_data: BeforeData,
        then: Then,
    ) -> None:
        """Everything up to and including the final dot (and ``then``'s envelope behind it, when the server
        pipelines); the reply to the dot is read by the caller."""
        pipelining = conn.does_esmtp and conn.has_extn("pipelining")
        try:
            if pipelining:
                written, self._pending = self._pending is not None, None
                self._envelope_pipelined(conn, envelope_from, recipient, written=written)
            else:
                code, reply = conn.mail(envelope_from)
                if code != 250:
                    self._sender_refused(conn, code, reply)
                code, reply = conn.rcpt(recipient)
                self._expect(conn, code, reply, {250, 251}, "RCPT TO")
                code, reply = conn.docmd("DATA")
                self._expect(conn, code, reply, {354}, "DATA")
        except (smtplib.SMTPServerDisconnected, ConnectionError) as exc:
            raise _StaleConnection(str(exc)) from exc
        except OSError as exc:
            self._drop()
            raise TemporaryFailure(f"SMTP error before DATA: {exc}") from exc
        try:
            ready_for_data(before_data)
        except HeldBack:
            # The server waits inside DATA: a connection closed there leaves it with no message (RFC 5321
            # 3.8), and this one is not in a state to reuse.
            self._drop()
            raise
        payload = dot_stuffed(data)
        if not payload.endswith(b"\r\n"):
            payload += b"\r\n"
        # RFC 2920 3.1: message content may open a group, so the next envelope can follow the final dot in
        # the same write; its replies are read when that message is sent (or the connection is closed if
        # it never is). Should this process die now, the server has no part of the next message.
        ahead = _envelope(*then) if pipelining and then is not None else b""
        try:
            conn.send(payload + b".\r\n" + ahead)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            # Without the final dot the server cannot have accepted the message.
            self._drop()
            raise TemporaryFailure(f"SMTP connection lost during DATA: {exc}") from exc
        if ahead:
            self._pending = then

    def _envelope_pipelined(
        self, conn: smtplib.SMTP, envelope_from: str, recipient: str, *, written: bool = False
    ) -> None:
        """MAIL, RCPT and DATA in one write, their three replies read in order (RFC 2920): one round trip
        instead of three, none when the previous message's write carried them (``written``). smtplib has no
        pipelining; the commands are written as smtplib writes them and its own reply parser reads the
        answers."""
        if not written:
            conn.send(_envelope(envelope_from, recipient))
        (mail, mail_reply), (rcpt, rcpt_reply), (data, data_reply) = (conn.getreply() for _ in range(3))
        if data == 354 and (mail != 250 or rcpt not in (250, 251)):
            # A server that opened DATA although the envelope failed (RFC 2920 3.1): end it with nothing.
            conn.send(b".\r\n")
            conn.getreply()
        if mail != 250:
            self._sender_refused(conn, mail, mail_reply)
        self._expect(conn, rcpt, rcpt_reply, {250, 251}, "RCPT TO")
        self._expect(conn, data, data_reply, {354}, "DATA")

    def _sender_refused(self, conn: smtplib.SMTP, code: int, reply: bytes) -> None:
        """MAIL FROM refused: about our envelope sender or our session, never about the recipient, so never a
        bounce. A 5xx meets every message alike: no attempt is counted, as when the server is down."""
        if code == -1:
            raise smtplib.SMTPServerDisconnected("MAIL FROM: no reply")
        self._clean_up(conn, code)
        message = f"MAIL FROM: {code} {_text(reply)}"
        if 500 <= code < 600:
            raise ConnectFailure(f"SMTP server refused our sender: {message}", code)
        raise TemporaryFailure(message, code)

    def _expect(self, conn: smtplib.SMTP, code: int, reply: bytes, ok: set[int], stage: str) -> None:
        if code in ok:
            return
        if code == -1:
            raise smtplib.SMTPServerDisconnected(f"{stage}: no reply")
        self._clean_up(conn, code)
        self._fail(code, reply, stage)

    def _clean_up(self, conn: smtplib.SMTP, code: int) -> None:
        """Leave no half transaction behind a refused command: RSET, or drop a connection that cannot be
        reset or answered "bad sequence" (its idea of the transaction is not ours)."""
        if code == BAD_SEQUENCE:
            self._drop()
            return
        try:
            reset, _ = conn.rset()
        except (smtplib.SMTPException, OSError):
            reset = -1
        if reset != 250:
            self._drop()

    def _fail(self, code: int, reply: bytes, stage: str) -> None:
        message = f"{stage}: {code} {_text(reply)}"
        if code == BAD_SEQUENCE:
            # Out of step with the server: a fault of our transaction, not the recipient's; try again anew.
            self._drop()
            raise TemporaryFailure(message, code)
        if 500 <= code < 600:
            raise PermanentFailure(message, code)
        raise TemporaryFailure(message, code)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(smtplib.SMTPException, OSError):
                    self._conn.quit()
            self._drop()


class _StaleConnection(Exception):
    pass


def _envelope(envelope_from: str, recipient: str) -> bytes:
    """MAIL, RCPT and DATA as one pipelined group."""
    commands = f"MAIL FROM:{angle_address(envelope_from)}\r\nRCPT TO:{angle_address(recipient)}\r\nDATA\r\n"
    return commands.encode("ascii")


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
