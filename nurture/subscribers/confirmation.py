"""The confirmation a signup asks for: one row in the outbox, queued in the signup's own transaction.

The outbox worker (nurture.delivery.confirmations) sends it; this module is only the queueing, so a signup
needs nothing from the sending side.
"""

from __future__ import annotations

from sqlalchemy import insert
from sqlalchemy.engine import Connection

from nurture.models import OutboxMessage

CONFIRM = "confirm"

# Built once; the table's Python defaults (status pending, due now, no attempts) fill in the rest.
_INSERT_MESSAGE = insert(OutboxMessage.__table__)


def queue_confirmation(connection: Connection, subscriber_id: int, consent_id: int) -> None:
    """Queue the confirmation email for a signup's consent record, in the signup's transaction. One Core
    INSERT: nothing reads the row back in the request, so no ORM object and no flush."""
    connection.execute(
        _INSERT_MESSAGE, {"kind": CONFIRM, "subscriber_id": subscriber_id, "consent_id": consent_id}
    )
