"""Receipts: the proof, written right after the SMTP server's 250, that one email was accepted.

A receipt is a row of the narrow ``send_receipts`` table. The sender writes it before it starts the next
email, so a worker that dies leaves at most one email without a receipt whose fate is unknown
(nurture.delivery.leases reads the receipts back). When the group's rows are recorded as sent, with their
``sent`` events, their receipts are deleted in the same transaction, so the table only ever holds emails in
flight.

That is one write per email on the hottest path, so it is as small as a write gets: one single-statement
INSERT in autocommit on a connection kept for nothing else, as a prepared statement, into a table with one
index and no foreign key, and on PostgreSQL with ``synchronous_commit = off``. The commit does not wait for
the disk: a killed *worker* loses nothing, since the server has the row; only a crash of the database server
itself can lose the last few hundred milliseconds of receipts, and what that costs is a resend of those
emails, never a lost one. (Writing the ``sent`` event itself as the receipt cost PostgreSQL four times as
much: its foreign key share-locks the delivery row on every email.)

The statement is written out rather than built through SQLAlchemy: the ORM and Core paths cost several
times the CPU of the driver call for this one statement (bench/analysis.md). On PostgreSQL it goes through
libpq directly (psycopg's ``pgconn``: 23 us of client CPU against 60 us through ``Connection.execute``), and
its answer is not waited for at once: :meth:`ReceiptWriter.write` sends the INSERT and returns, and
:meth:`ReceiptWriter.settle` reads the answer, which the sender calls during the *next* email's SMTP
transaction, once the server has answered its envelope and before any of its data goes out (the
transport's ``before_data``), and before it records a group. So no email goes out before the previous
one's receipt is stored, but the round trip to the database overlaps with the envelope's. A write that
has been sent is in the kernel's socket buffer: a worker killed after it still delivers it to the server,
which executes it before it notices the connection closed.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from psycopg import pq
from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from nurture.models import SendReceipt

log = logging.getLogger(__name__)

# Written once however often a retry repeats it (a commit whose reply was lost).
_INSERT = (
    "INSERT INTO send_receipts (delivery_id, message_id, accepted_at) VALUES ({p}, {p}, {p}) "
    "ON CONFLICT (delivery_id) DO NOTHING"
)
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"  # SQLAlchemy's storage format for DateTime on SQLite
_PREPARED = b"nurture_receipt"
_PG_INSERT = _INSERT.format(p="{}").format("$1", "$2", "$3").encode()


class ReceiptWriter:
    """Writes receipts on a connection of its own, opened on first use and reopened after a failure."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.postgresql = engine.dialect.name == "postgresql"
        self._connection: Any = None
        self._in_flight: tuple[Any, ...] | None = None  # PostgreSQL: sent, its answer not read yet

    def write(self, delivery_id: int, message_id: str, at: datetime) -> None:
        """Store one receipt: on SQLite before returning; on PostgreSQL sent now, confirmed by
        :meth:`settle` (which this calls first for the previous one)."""
        if not self.postgresql:
            when = at.replace(tzinfo=None).strftime(_SQLITE_TIME)
            self._with_retries((delivery_id, message_id, when), delivery_id)
            return
        self.settle()
        params = (str(delivery_id).encode(), message_id.encode(), at.astimezone(UTC).isoformat().encode())
        try:
            self._send(params)
        except Exception:  # the connection broke: write it the slow way, answer awaited
            self.close()
            self._with_retries(params, delivery_id)
            return
        self._in_flight = params

    def settle(self) -> None:
        """Wait for the receipt in flight, if any: it is stored when this returns, or this raises."""
        params, self._in_flight = self._in_flight, None
        if params is None:
            return
        try:
            self._answer()
        except Exception:
            self.close()
            self._with_retries(params, int(params[0]))

    def _with_retries(self, params: tuple[Any, ...], delivery_id: int) -> None:
        # The INSERT ignores a conflict, so repeating one whose answer was lost stores it once.
        for attempt in range(3):
            try:
                if self.postgresql:
                    self._send(params)
                    self._answer()
                else:
                    (self._connection or self._open()).execute(_INSERT.format(p="?"), params)
                return
            except Exception:
                self.close()
                if attempt == 2:
                    raise
                log.warning("receipt for delivery %s: connection lost, trying again", delivery_id)

    def _send(self, params: tuple[bytes, ...]) -> None:
        # Blocking mode: returns once the whole message is in the socket's buffer.
        (self._connection or self._open()).pgconn.send_query_prepared(_PREPARED, params)

    def _answer(self) -> None:
        pgconn = self._connection.pgconn
        result = pgconn.get_result()
        if result is None or result.status != pq.ExecStatus.COMMAND_OK:
            message = result.error_message.decode(errors="replace") if result is not None else "no answer"
            raise OSError(f"receipt not stored: {message.strip() or pgconn.error_message!r}")
        while pgconn.get_result() is not None:  # the end of this command's results
            pass

    def _open(self) -> Any:
        raw = self.engine.raw_connection()
        connection = raw.driver_connection
        # Out of the pool for good: in autocommit it must never serve anyone else's transaction, even when
        # this writer is dropped without being closed.
        raw.detach()
        if self.postgresql:
            connection.autocommit = True
            connection.execute("SET synchronous_commit = off")
            prepared = connection.pgconn.prepare(_PREPARED, _PG_INSERT)
            if prepared.status != pq.ExecStatus.COMMAND_OK:
                raise OSError(f"preparing the receipt INSERT failed: {prepared.error_message!r}")
        else:
            connection.isolation_level = None  # autocommit: each INSERT is its own transaction
        self._raw = raw
        self._connection = connection
        return connection

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._raw.close()  # detached: this closes the connection itself
            except Exception:
                log.debug("closing the receipt connection failed", exc_info=True)
        self._connection = None


def accepted(session: Session, delivery_ids: list[int]) -> dict[int, dict[str, Any]]:
    """The receipts among ``delivery_ids``: id -> the values that record the row as sent."""
    rows = session.execute(
        select(SendReceipt.delivery_id, SendReceipt.message_id, SendReceipt.accepted_at).where(
            SendReceipt.delivery_id.in_(delivery_ids)
        )
    )
    return {row.delivery_id: {"sent_at": row.accepted_at, "message_id": row.message_id} for row in rows}


def forget(session: Session, delivery_ids: list[int]) -> None:
    """Receipts of rows now recorded as sent: no longer needed (in the transaction that records them)."""
    if delivery_ids:
        session.execute(
            delete(SendReceipt)
            .where(SendReceipt.delivery_id.in_(delivery_ids))
            .execution_options(synchronize_session=False)
        )
