"""The two partial indexes every leased work table has (deliveries, outbox messages, webhook deliveries).

The claim query reads only pending rows in due order, and the reaper only rows whose lease may have run
out; partial indexes keep both small and flat however many finished rows accumulate.
"""

from __future__ import annotations

from sqlalchemy import Index, text

PENDING = "status = 'pending'"


def pending_due_index(table: str) -> Index:
    """``ix_<table>_pending_due``: what the claim query reads."""
    return Index(
        f"ix_{table}_pending_due", "due_at", postgresql_where=text(PENDING), sqlite_where=text(PENDING)
    )


def leased_index(table: str, leased: str = "status IN ('queued', 'sending')") -> Index:
    """``ix_<table>_leased``: what the reaper reads."""
    return Index(
        f"ix_{table}_leased", "lease_until", postgresql_where=text(leased), sqlite_where=text(leased)
    )
