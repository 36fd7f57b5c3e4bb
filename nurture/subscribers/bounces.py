"""Bounces that come back later by mail: delivery status notifications (RFC 3464) and the common
non-standard formats, read with flufl.bounce.

A hard (permanent) failure suppresses the address at once and withdraws the subscriber's open deliveries,
as a 5xx at SMTP time does (``nurture.delivery.sender``); a soft (temporary) failure is recorded, and an
address that collects ``settings.mail.soft_bounce_limit`` of them is suppressed too.

Anyone can mail the bounce address, so a notification acts only with proof that we sent the message it reports
on: the original Message-ID it quotes must be one of ours, its HMAC valid (``compose.delivery_id_of``, or
``compose.outbox_id_of`` for a confirmation email), naming a message we did send. It then concerns only the
subscriber that message went to. A notification without that proof is ignored: counted and logged with the
reason, nothing suppressed.

Processing is idempotent: every event written for a notification carries its key (its own Message-ID, or a
hash of its bytes when it has none) in ``detail["dsn"]``, and a notification whose key is already recorded
changes nothing. Two inputs feed this module: ``nurture bounces scan MAILDIR`` and ``POST /api/v1/bounces``
(docs/bounces.md).
"""

from __future__ import annotations

import email
import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from email.iterators import typed_subpart_iterator
from email.message import Message
from email.parser import BytesHeaderParser
from pathlib import Path

from flufl.bounce import all_failures
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from nurture.core.config import Settings, get_settings
from nurture.core.db import retrying
from nurture.mail.compose import delivery_id_of, outbox_id_of
from nurture.models import Delivery, Event, OutboxMessage, Subscriber, events
from nurture.subscribers.enrollment import cancel_open_deliveries
from nurture.subscribers.suppression import suppress

log = logging.getLogger(__name__)
# flufl.bounce logs every detector it runs at INFO and any detector's exception with a traceback at ERROR;
# parse() handles those, so keep the library quiet unless the operator configured its logger.
if logging.getLogger("flufl.bounce").level == logging.NOTSET:
    logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)

HARD = "bounced"
SOFT = "soft_bounce"
MAX_KEY_LENGTH = 200  # longer Message-IDs are replaced by a hash: the key lives in a JSON detail
MAX_ADDRESS_LENGTH = 320

_INLINE_MESSAGE_ID = re.compile(rb"(?im)^message-id:[ \t]*(<[^<>\s]{1,250}>)")
_HEADER_PART_TYPES = ("text/rfc822-headers", "message/rfc822-headers")


class MalformedMessage(ValueError):
    """The input is not an email message at all (as opposed to a message that is not a bounce)."""


@dataclass(frozen=True)
class Bounce:
    """What a notification says: which recipients failed for good, which for now, about which message."""

    key: str  # the notification's own Message-ID, or "sha256:<hex>" of its bytes
    hard: frozenset[str]
    soft: frozenset[str]
    original_message_id: str | None = None
    statuses: dict[str, str] = field(default_factory=dict)  # address -> "5.1.1 (smtp; 550 ...)", when given

    @property
    def recognised(self) -> bool:
        return bool(self.hard or self.soft)


@dataclass
class Tally:
    """Counts over one or more notifications: failed addresses acted on, and whole messages."""

    hard: int = 0  # addresses suppressed (or already suppressed) as permanently failing
    soft: int = 0  # temporary failures recorded
    unrecognised: int = 0  # messages that are not bounces, or whose format nothing understands
    duplicate: int = 0  # notifications already processed
    suppressed_soft: int = 0  # addresses that reached the soft bounce limit with this input
    ignored: int = 0  # notifications without proof that they are about a message we sent to that address

    def __iadd__(self, other: Tally) -> Tally:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


# --- reading ---------------------------------------------------------------------------------------------


def parse(raw: bytes) -> Bounce:
    """Read a raw RFC 5322 message; MalformedMessage when it is not one (empty, or no header at all)."""
    if not raw or not raw.strip():
        raise MalformedMessage("empty message")
    message = email.message_from_bytes(raw)  # compat32 Message: what flufl.bounce's detectors expect
    if not message.keys():
        raise MalformedMessage("no header fields: not an RFC 5322 message")
    try:
        temporary, permanent = all_failures(message)
    except Exception:
        # Raw 8-bit header bytes reach the detectors as Header objects, which some of them cannot handle;
        # the same message read from text (undecodable bytes replaced) has plain string headers.
        message = email.message_from_string(raw.decode("utf-8", "replace"))
        try:
            temporary, permanent = all_failures(message)
        except Exception as exc:  # a detector tripping over broken MIME: bad input, not our bug
            raise MalformedMessage(f"unreadable message: {type(exc).__name__}") from exc
    try:
        original = _original_message_id(message)
        statuses = _statuses(message)
    except Exception as exc:
        raise MalformedMessage(f"unreadable message: {type(exc).__name__}") from exc
    hard = _addresses(permanent)
    soft = _addresses(temporary) - hard  # listed as both: the permanent verdict wins
    return Bounce(_key(message, raw), hard, soft, original, statuses)


def _addresses(found: frozenset[bytes]) -> frozenset[str]:
    addresses = set()
    for value in found:
        address = value.decode("ascii", "replace").strip().strip("<>").lower()
        local, at, domain = address.rpartition("@")
        if at and local and "." in domain and len(address) <= MAX_ADDRESS_LENGTH and "\ufffd" not in address:
            addresses.add(address)
    return frozenset(addresses)


def _header(message: Message, name: str) -> str | None:
    value = message.get(name)
    if value is None:
        return None
    value = " ".join(str(value).split())
    return value or None


def _key(message: Message, raw: bytes) -> str:
    message_id = _header(message, "Message-ID")
    if message_id and len(message_id) <= MAX_KEY_LENGTH:
        return message_id
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _original_message_id(message: Message) -> str | None:
    """The Message-ID of the message that bounced: from the attached message (message/rfc822) or its headers
    (text/rfc822-headers) in a DSN, else from a copy of its headers quoted in the text of the bounce."""
    for part in message.walk():
        if part is message:
            continue
        content_type = part.get_content_type()
        if content_type == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                found = _header(payload[0], "Message-ID")
                if found:
                    return found
        elif content_type in _HEADER_PART_TYPES:
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                found = _header(BytesHeaderParser().parsebytes(data), "Message-ID")
                if found:
                    return found
    for part in message.walk():
        if not part.is_multipart() and part.get_content_maintype() == "text":
            data = part.get_payload(decode=True)
            if isinstance(data, bytes) and (match := _INLINE_MESSAGE_ID.search(data)):
                return match.group(1).decode("ascii", "replace")
    return None


def _statuses(message: Message) -> dict[str, str]:
    """Status and diagnostic per recipient from the DSN's delivery-status blocks, kept as bounce detail."""
    found: dict[str, str] = {}
    for part in typed_subpart_iterator(message, "message", "delivery-status"):
        blocks = part.get_payload()  # type: ignore[attr-defined]
        if not isinstance(blocks, list):
            continue
        for block in blocks:
            status = _header(block, "Status")
            if not status:
                continue
            diagnostic = _header(block, "Diagnostic-Code")
            summary = f"{status} ({diagnostic})" if diagnostic else status
            for name in ("Original-Recipient", "Final-Recipient"):
                value = _header(block, name)
                if value:
                    address = value.rpartition(";")[2].strip().strip("<>").lower()
                    found.setdefault(address, summary[:300])
    return found


# --- acting ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sent:
    """The message of ours a notification quotes, verified: whom it went to, and which delivery it was
    (None for a confirmation email, which is no delivery)."""

    subscriber: Subscriber
    delivery: Delivery | None


def apply(session: Session, bounce: Bounce, settings: Settings) -> Tally:
    """Record one notification in the caller's transaction; one already processed changes nothing, one
    without proof that we sent the message it reports on is ignored."""
    if not bounce.recognised:
        return Tally(unrecognised=1)
    sent = _sent_message(session, bounce.original_message_id, settings)
    if isinstance(sent, str):
        return _ignored(bounce, sent)
    address = _failed_address(session, bounce, sent.subscriber)
    if address is None:
        return _ignored(bounce, "other-recipient")
    _lock(session, bounce.key)
    if _already_processed(session, bounce.key):
        return Tally(duplicate=1)
    tally = Tally()
    if address in bounce.hard:
        _hard(session, bounce, address, sent)
        tally.hard = 1
    else:
        tally.suppressed_soft = int(_soft(session, bounce, address, sent, settings))
        tally.soft = 1
    log.info(
        "bounce dsn=%s hard=%d soft=%d delivery=%s",
        bounce.key,
        tally.hard,
        tally.soft,
        sent.delivery.id if sent.delivery else None,
    )
    return tally


def _ignored(bounce: Bounce, reason: str) -> Tally:
    log.info("bounce ignored dsn=%s reason=%s", bounce.key, reason)
    return Tally(ignored=1)


def _sent_message(session: Session, message_id: str | None, settings: Settings) -> _Sent | str:
    """The message of ours the notification is about, or why there is no proof of one. The HMAC says we made
    the id; the stored Message-ID of the row says we sent it."""
    if not message_id:
        return "no-original-message-id"
    keys = settings.verification_secret_keys
    if (delivery_id := delivery_id_of(message_id, keys)) is not None:
        delivery = session.get(Delivery, delivery_id)
        if delivery is None or delivery.message_id != message_id:
            return "unknown-message"
        return _Sent(delivery.subscriber, delivery)
    if (outbox_id := outbox_id_of(message_id, keys)) is not None:
        message = session.get(OutboxMessage, outbox_id)
        if message is None or message.message_id != message_id:
            return "unknown-message"
        return _Sent(message.subscriber, None)
    return "not-our-message-id"


def _failed_address(session: Session, bounce: Bounce, subscriber: Subscriber) -> str | None:
    """The failed address that is the recipient's: their own, or (their mail is forwarded) the only one the
    notification names, if no other subscriber has it. Any other address is not ours to judge on the strength
    of this message: a copy of one subscriber's email must not suppress another."""
    named = bounce.hard | bounce.soft
    if subscriber.email in named:
        return subscriber.email
    if len(named) == 1:
        [address] = named
        if session.scalar(select(Subscriber.id).where(Subscriber.email == address)) is None:
            return address
    return None


def _lock(session: Session, key: str) -> None:
    """Serialise work on one notification, so two inputs receiving it at once cannot both count it. SQLite
    already runs one writer at a time (BEGIN IMMEDIATE); PostgreSQL takes a transaction advisory lock."""
    if session.get_bind().dialect.name == "postgresql":
        number = int.from_bytes(hashlib.sha256(b"nurture-bounce:" + key.encode()).digest()[:8], signed=True)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": number})


def _already_processed(session: Session, key: str) -> bool:
    query = (
        select(Event.id).where(Event.kind.in_((HARD, SOFT)), Event.detail["dsn"].as_string() == key).limit(1)
    )
    return session.scalar(query) is not None


def _hard(session: Session, bounce: Bounce, address: str, sent: _Sent) -> None:
    subscriber = sent.subscriber
    status = bounce.statuses.get(address)
    detail = f"bounce notification {bounce.key}" + (f": {status}" if status else "")
    # The subscriber's own address is the one we mail; a bounce about a forwarded address suppresses it.
    suppress(session, subscriber.email, "hard-bounce", detail)
    cancelled = cancel_open_deliveries(session, subscriber.id, "suppressed")
    events.record(
        session,
        HARD,
        subscriber_id=subscriber.id,
        delivery_id=sent.delivery.id if sent.delivery else None,
        dsn=bounce.key,
        source="notification",
        status=status,
        cancelled=cancelled,
    )


def _soft(session: Session, bounce: Bounce, address: str, sent: _Sent, settings: Settings) -> bool:
    """Record a temporary failure; True when it brings the subscriber to the limit and suppresses them."""
    subscriber = sent.subscriber
    status = bounce.statuses.get(address)
    delivery_id = sent.delivery.id if sent.delivery else None
    count = _soft_count(session, subscriber.id, delivery_id)
    reached = count >= settings.mail.soft_bounce_limit
    events.record(
        session,
        SOFT,
        subscriber_id=subscriber.id,
        delivery_id=delivery_id,
        dsn=bounce.key,
        status=status,
        count=count,
        suppressed=reached,
    )
    if reached:
        suppress(session, subscriber.email, "soft-bounce-limit", f"{count} soft bounces, last {bounce.key}")
        cancel_open_deliveries(session, subscriber.id, "suppressed")
    return reached


def _soft_count(session: Session, subscriber_id: int, delivery_id: int | None) -> int:
    """Soft bounces of this subscriber including the one being recorded. Several notifications about the same
    delivery (an MTA's "still trying" warnings at 4 h, 24 h, ...) count once: one email, one soft bounce."""
    rows = session.execute(
        select(Event.id, Event.delivery_id).where(Event.kind == SOFT, Event.subscriber_id == subscriber_id)
    ).all()
    seen = {("delivery", d) if d is not None else ("event", i) for i, d in rows}
    seen.add(("delivery", delivery_id) if delivery_id is not None else ("event", 0))
    return len(seen)


def process(
    raw: bytes, factory: sessionmaker[Session] | None = None, settings: Settings | None = None
) -> Tally:
    """Parse and apply one notification in its own transaction; MalformedMessage for input that is no
    message at all."""
    bounce = parse(raw)
    if not bounce.recognised:
        return Tally(unrecognised=1)
    settings = settings or get_settings()
    return retrying(lambda session: apply(session, bounce, settings), factory)


# --- a Maildir -------------------------------------------------------------------------------------------


class NotAMaildir(ValueError):
    pass


def scan_maildir(path: Path, *, delete: bool = False, factory: sessionmaker[Session] | None = None) -> Tally:
    """Process every message not yet marked seen (in ``new/``, or in ``cur/`` without the S flag).

    Each is committed before it is moved, so a crash repeats at most one message, harmlessly. A processed
    bounce moves to ``cur/`` flagged seen, or is deleted with ``delete``; a message that is not a bounce, or a
    bounce ignored for want of proof, is moved to ``cur/`` flagged seen and never deleted: people do answer
    the bounce address, and a bounce in a format nothing recognises, or a forged one, deserves a human look.
    """
    for sub in ("new", "cur", "tmp"):
        if not (path / sub).is_dir():
            raise NotAMaildir(f"{path} is not a Maildir (no {sub}/ folder)")
    settings = get_settings()
    tally = Tally()
    for file in _unseen(path):
        try:
            raw = file.read_bytes()
        except FileNotFoundError:  # taken by a concurrent scan
            continue
        try:
            result = process(raw, factory, settings)
        except MalformedMessage:
            result = Tally(unrecognised=1)
        tally += result
        try:
            # Kept for a person: mail that is no bounce, and reports we did not act on (forged or unproven).
            if delete and not (result.unrecognised or result.ignored):
                file.unlink()
            else:
                _mark_seen(path, file)
        except FileNotFoundError:
            continue
    return tally


def _unseen(path: Path) -> list[Path]:
    files = []
    for sub in ("new", "cur"):
        for entry in sorted(os.scandir(path / sub), key=lambda e: e.name):
            if entry.name.startswith(".") or not entry.is_file():
                continue
            _, _, info = entry.name.partition(":")
            if sub == "cur" and info.startswith("2,") and "S" in info[2:]:
                continue
            files.append(Path(entry.path))
    return files


def _mark_seen(path: Path, file: Path) -> None:
    key, _, info = file.name.partition(":")
    flags = set(info[2:]) if info.startswith("2,") else set()
    flags.add("S")
    file.rename(path / "cur" / f"{key}:2,{''.join(sorted(flags))}")
