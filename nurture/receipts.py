"""Receipts: the proof, written right after the SMTP server's 250, that one email was accepted.

A receipt is the delivery's ``sent`` event. The sender writes it before it starts the next email, so a
worker that dies leaves at most one email without a receipt whose fate is unknown (nurture.leases reads the
receipts back). That is one write per email on the hottest path, so it is as small as a write gets: one
single-statement INSERT in autocommit on a connection kept for nothing else, as a prepared statement, and on
PostgreSQL with ``synchronous_commit = off`` (the commit does not wait for the disk: a killed *worker* loses
nothing, since the server has the row; only a crash of the database server itself can lose the last few
hundred milliseconds of receipts, and what that costs is a resend of those emails, never a lost one).

The statement is written out per dialect rather than built through SQLAlchemy: the ORM and Core paths cost
three to six times the CPU of the driver call for this one statement (docs/benchmarks.md, "Receipts").
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from nurture.models import Event

log = logging.getLogger(__name__)

# Written once however often a retry repeats it (a commit whose reply was lost).
_INSERT = (
    "INSERT INTO events (kind, delivery_id, detail, created_at) SELECT 'sent', {p}, {p}, {p} "
    "WHERE NOT EXISTS (SELECT 1 FROM events WHERE kind = 'sent' AND delivery_id = {p})"
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
        detail = json.dumps({"message_id": message_id})
        when: Any = at if self.postgresql else at.replace(tzinfo=None).strftime(_SQLITE_TIME)
        params = (delivery_id, detail, when, delivery_id)
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
        select(Event.delivery_id, Event.created_at, Event.detail).where(
            Event.kind == "sent", Event.delivery_id.in_(delivery_ids)
        )
    )
    return {
        row.delivery_id: {"sent_at": row.created_at, "message_id": (row.detail or {}).get("message_id")}
        for row in rows
    }
