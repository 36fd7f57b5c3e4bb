"""Every subscriber as CSV, streamed in chunks, safe to open in a spreadsheet."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from nurture.core import safe_csv
from nurture.models import Subscriber

EXPORT_COLUMNS = (
    "email",
    "first_name",
    "timezone",
    "status",
    "created_at",
    "confirmed_at",
    "unsubscribed_at",
)


def export_csv(session: Session, handle: Any, progress: Callable[[int], None] | None = None) -> int:
    """Every subscriber as CSV (attributes as one JSON column), streamed; returns the row count. Cells are
    escaped against spreadsheet formulas (nurture.core.safe_csv). ``progress(n)`` hears of every 1,000
    rows."""
    writer = safe_csv.SafeWriter(handle)
    writer.writerow([*EXPORT_COLUMNS, "attributes"])
    count = 0
    for subscriber in session.scalars(
        select(Subscriber).order_by(Subscriber.id).execution_options(yield_per=1000)
    ):
        writer.writerow(
            [
                *(
                    (value.isoformat() if isinstance(value, datetime) else (value or ""))
                    for value in (getattr(subscriber, column) for column in EXPORT_COLUMNS)
                ),
                json.dumps(subscriber.attributes or {}, sort_keys=True),
            ]
        )
        count += 1
        if progress is not None and count % 1000 == 0:
            progress(1000)
    if progress is not None and count % 1000:
        progress(count % 1000)
    return count
