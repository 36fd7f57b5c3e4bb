"""Receipts on PostgreSQL are sent and confirmed later: a receipt sent is stored even if the worker dies
before reading the answer, and a connection lost in between is made good by writing it again, once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime

from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from nurture.core.db import engine_of, transaction
from nurture.delivery.receipts import ReceiptWriter
from nurture.models import SendReceipt

AT = datetime(2026, 3, 2, 15, 0, 0, 123456, tzinfo=UTC)


def _receipts(factory: sessionmaker[Session]) -> list[tuple[int, str, datetime]]:
    with transaction(factory) as session:
        rows = session.execute(
            select(SendReceipt.delivery_id, SendReceipt.message_id, SendReceipt.accepted_at).order_by(
                SendReceipt.delivery_id
            )
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


def test_write_returns_before_the_answer_and_settle_confirms_it(pg_factory) -> None:  # type: ignore[no-untyped-def]
    writer = ReceiptWriter(engine_of(pg_factory))
    writer.write(1, "<one@nurture.test>", AT)
    assert writer._in_flight is not None  # sent, answer not read yet
    writer.write(2, "<two@nurture.test>", AT)  # reads the first answer before sending the second
    writer.settle()
    assert writer._in_flight is None
    assert _receipts(pg_factory) == [(1, "<one@nurture.test>", AT), (2, "<two@nurture.test>", AT)]
    writer.close()


def test_a_receipt_sent_by_a_process_that_then_dies_is_stored(pg_factory, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    script = textwrap.dedent(
        f"""
        import os
        from datetime import UTC, datetime
        from sqlalchemy import create_engine
        from nurture.delivery.receipts import ReceiptWriter
        writer = ReceiptWriter(create_engine({pg_url!r}))
        writer.write(7, "<seven@nurture.test>", datetime(2026, 3, 2, 15, 0, tzinfo=UTC))
        os._exit(0)  # no settle, no close: as a SIGKILL right after the write
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert [row[0] for row in _receipts(pg_factory)] == [7]


def test_a_connection_lost_before_the_answer_writes_the_receipt_again_once(pg_factory, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    writer = ReceiptWriter(engine_of(pg_factory))
    writer.write(1, "<one@nurture.test>", AT)
    writer.settle()
    backend = writer._connection.info.backend_pid
    writer.write(2, "<two@nurture.test>", AT)
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
    admin.dispose()
    writer.settle()  # the answer is lost with the connection: written again on a new one
    writer.write(3, "<three@nurture.test>", AT)
    writer.settle()
    assert [row[0] for row in _receipts(pg_factory)] == [1, 2, 3]
    assert writer._connection.info.backend_pid != backend
    writer.close()
