"""Benchmark 2: time to claim 1,000 due deliveries as the deliveries table grows (1M, then 5M rows).

    .venv/bin/python bench/dispatch_scale.py [--sizes 1000000,5000000]

Most rows are history (sent); 40,000 are due. Each round claims 1,000 and the rows are put back, so every
round sees the same table. Two claims are timed: the plain claim, and the one a dispatch tick makes under
the default settings, with the frequency cap (NURTURE_FREQUENCY_CAP_HOURS=12) first reading the due rows
and their subscribers' recent emails (nurture.delivery.frequency_cap). Prints median and p95 per size and
the plain claim's query plan.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sqlalchemy import event, update

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    banner,
    bulk_enrolled,
    fresh_database,
    load_average,
    median,
    percentile,
    save_result,
    sync_sequence,
    verdict,
)

STEPS = 8
TARGET_MS = 20.0


def claim_plan(engine, factory, claim_due) -> list[str]:  # type: ignore[no-untyped-def]
    """EXPLAIN ANALYZE of the claim exactly as nurture issues it: the SQL and parameters are captured from one
    real claim, then explained in a transaction that is rolled back."""
    captured: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("UPDATE DELIVERIES"):
            captured.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        with factory() as session:
            claim_due(session, limit=1000, lease_seconds=300)
            session.rollback()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    statement, parameters = captured[0]
    with engine.connect() as connection:
        plan = connection.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters).scalars()
        lines = list(plan)
        connection.rollback()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000000,5000000")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    banner(
        "benchmark 2: dispatch at scale", sizes=args.sizes, rounds=args.rounds, claim=1000, due_rows=40_000
    )

    import os

    url = fresh_database("nurture_bench_dispatch")
    os.environ["NURTURE_DATABASE_URL"] = url
    from nurture.core.config import get_settings
    from nurture.core.db import get_engine, session_factory, transaction
    from nurture.delivery.dispatch import claim_due, claim_spaced
    from nurture.models import Delivery

    settings = get_settings()
    assert settings.mail.frequency_cap_hours > 0, "the capped claim needs the frequency cap on (the default)"

    sync_sequence()
    engine = get_engine()
    factory = session_factory()
    due_subscribers = 40_000 // STEPS
    bulk_enrolled(engine, due_subscribers, status="pending", due="now() - interval '1 minute'", offset=0)
    loaded = due_subscribers * STEPS
    results = []
    for size in sizes:
        history = (size - loaded) // STEPS
        if history > 0:
            started = time.perf_counter()
            bulk_enrolled(
                engine, history, status="sent", due="now() - interval '30 days'", offset=10_000_000 + loaded
            )
            loaded += history * STEPS
            print(f"loaded {loaded:,} deliveries in {time.perf_counter() - started:.0f} s")
        timings: dict[str, list[float]] = {"plain": [], "capped": []}
        for _ in range(args.rounds):
            for kind, claim_of in (
                ("plain", lambda s: claim_due(s, limit=1000, lease_seconds=300)),
                ("capped", lambda s: claim_spaced(s, settings, 1000)),
            ):
                with transaction(factory) as session:
                    started = time.perf_counter()
                    claim = claim_of(session)
                    timings[kind].append((time.perf_counter() - started) * 1000)
                with transaction(factory) as session:  # put them back so every round sees the same table
                    session.execute(
                        update(Delivery)
                        .where(Delivery.claim_token == claim.token)
                        .values(status="pending", claim_token=None, lease_until=None)
                    )
        plain, capped = timings["plain"], timings["capped"]
        results.append(
            {
                "rows": loaded,
                "median_ms": median(plain),
                "p95_ms": percentile(plain, 95),
                "capped_median_ms": median(capped),
                "capped_p95_ms": percentile(capped, 95),
            }
        )
        print(
            f"{loaded:>10,} rows: claim 1,000 median {median(plain):.1f} ms, "
            f"p95 {percentile(plain, 95):.1f} ms; with the frequency cap (a default tick) median "
            f"{median(capped):.1f} ms, p95 {percentile(capped, 95):.1f} ms (target <= {TARGET_MS:.0f} ms); "
            f"load average {load_average()}"
        )
    plan_text = "\n  ".join(claim_plan(engine, factory, claim_due))
    print("plan of the claim (EXPLAIN ANALYZE, rolled back):\n  " + plan_text)
    passed = all(r[key] <= TARGET_MS for r in results for key in ("median_ms", "capped_median_ms"))
    flat = all(results[-1][key] <= 1.5 * results[0][key] + 2 for key in ("median_ms", "capped_median_ms"))
    print(
        f"target: median <= {TARGET_MS:.0f} ms at every size, flat as the table grows: "
        f"{verdict(passed and flat)}"
    )
    save_result(
        "dispatch_scale",
        {
            "title": "Dispatch at scale",
            "figure": ", ".join(
                f"{r['rows'] / 1e6:g}M rows: median {r['median_ms']:.1f} ms (p95 {r['p95_ms']:.1f}), "
                f"capped {r['capped_median_ms']:.1f} ms (p95 {r['capped_p95_ms']:.1f})"
                for r in results
            ),
            "target": f"claim 1,000 <= {TARGET_MS:.0f} ms, flat, plain and with the frequency cap",
            "passed": passed and flat,
            "sizes": results,
            "plan": plan_text,
        },
    )


if __name__ == "__main__":
    main()
