"""Benchmark 2: time to claim 1,000 due deliveries as the deliveries table grows (1M, then 5M rows).

    .venv/bin/python bench/dispatch_scale.py [--sizes 1000000,5000000]

Most rows are history (sent); 40,000 are due. Each round claims 1,000 and the rows are put back, so every
round sees the same table. Prints median and p95 per size and the query plan.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sqlalchemy import text, update

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bulk_enrolled, fresh_database, machine, median, percentile

STEPS = 8


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000000,5000000")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    import os

    url = fresh_database("nurture_bench_dispatch")
    os.environ["NURTURE_DATABASE_URL"] = url
    from nurture.catalog import sync_definition
    from nurture.config import get_settings
    from nurture.db import get_engine, session_factory, transaction
    from nurture.dispatch import claim_due
    from nurture.mail.templates import EmailTemplates
    from nurture.models import Delivery
    from nurture.sequences.loader import find

    settings = get_settings()
    with transaction() as session:
        sync_definition(
            session, find(settings.sequences_dir, "ketamine-therapy", EmailTemplates(settings.templates_dir))
        )
    engine = get_engine()
    factory = session_factory()
    due_subscribers = 40_000 // STEPS
    bulk_enrolled(engine, due_subscribers, status="pending", due="now() - interval '1 minute'", offset=0)
    loaded = due_subscribers * STEPS
    print(f"machine: {machine()}")
    for size in sizes:
        history = (size - loaded) // STEPS
        if history > 0:
            started = time.perf_counter()
            bulk_enrolled(
                engine, history, status="sent", due="now() - interval '30 days'", offset=10_000_000 + loaded
            )
            loaded += history * STEPS
            print(f"loaded {loaded:,} deliveries in {time.perf_counter() - started:.0f} s")
        timings = []
        for _ in range(args.rounds):
            with transaction(factory) as session:
                started = time.perf_counter()
                claim = claim_due(session, limit=1000, lease_seconds=300)
                timings.append((time.perf_counter() - started) * 1000)
            with transaction(factory) as session:  # put them back so every round sees the same table
                session.execute(
                    update(Delivery)
                    .where(Delivery.claim_token == claim.token)
                    .values(status="pending", claim_token=None, lease_until=None)
                )
        print(
            f"{loaded:>10,} rows: claim 1,000 median {median(timings):.1f} ms, "
            f"p95 {percentile(timings, 95):.1f} ms (target <= 20 ms)"
        )
    with engine.connect() as connection:
        plan = connection.execute(
            text(
                "EXPLAIN (ANALYZE, BUFFERS) WITH due AS (SELECT id FROM deliveries WHERE status = 'pending' "
                "AND due_at <= now() ORDER BY due_at LIMIT 1000 FOR UPDATE SKIP LOCKED) "
                "SELECT count(*) FROM due"
            )
        ).scalars()
        print("plan of the claim's row choice:\n  " + "\n  ".join(plan))
        connection.rollback()


if __name__ == "__main__":
    main()
