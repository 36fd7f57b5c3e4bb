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
times the CPU of the driver call for this one statement (bench/analysis.md).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

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


class ReceiptWriter:
    """Writes receipts on a connection of its own, opened on first use and reopened after a failure."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.postgresql = engine.dialect.name == "postgresql"
        self._sql = _INSERT.format(p="%s" if self.postgresql else "?")
        self._connection: Any = None

    def write(self, delivery_id: int, message_id: str, at: datetime) -> None:
        when: Any = at if self.postgresql else at.replace(tzinfo=None).strftime(_SQLITE_TIME)
        params = (delivery_id, message_id, when)
        for attempt in range(3):
            try:
                self._execute(params)
                return
            except Exception:
                self.close()
                if attempt == 2:
                    raise
                log.warning("receipt for delivery %s: connection lost, trying again", delivery_id)

    def _execute(self, params: tuple[Any, ...]) -> None:
        connection = self._connection or self._open()
        if self.postgresql:
            connection.execute(self._sql, params, prepare=True)
        else:
            connection.execute(self._sql, params)

    def _open(self) -> Any:
        raw = self.engine.raw_connection()
        connection = raw.driver_connection
        # Out of the pool for good: in autocommit it must never serve anyone else's transaction, even when
        # this writer is dropped without being closed.
        raw.detach()
        if self.postgresql:
            connection.autocommit = True
            connection.execute("SET synchronous_commit = off")
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
