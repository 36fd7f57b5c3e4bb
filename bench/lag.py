"""Benchmark 4: lag between a delivery falling due and the SMTP server accepting it, at a steady load.

    .venv/bin/python bench/lag.py [--rate R] [--duration 60] [--interval 5] [--concurrency 2]

Deliveries fall due continuously, evenly spread over the run (one every 1/R seconds), while a worker and beat
run as in production (dispatch tick every NURTURE_DISPATCH_INTERVAL seconds, default 5). R is half the maximum
measured by benchmark 1: taken from its result file when bench/run_all.py ran it first, else ``--rate``. The
loopback sink notes when it accepted each message; the lag of a delivery is that moment minus its due time.
Target: p99 <= dispatch interval + 2 s (a row due just after a tick waits for the next one, by design).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    REDIS_URL,
    banner,
    bulk_enrolled,
    fresh_database,
    load_average,
    percentile,
    save_result,
    start_nurture,
    stop_all,
    sync_sequence,
    verdict,
)
from bench.smtp_sink import SmtpSink  # noqa: E402

LEAD_SECONDS = 10.0  # workers and beat start and connect before the first delivery falls due
FALLBACK_MAX_RATE = 300.0  # emails/s, when benchmark 1 has not run in this session


def half_of_measured_maximum() -> tuple[float, str]:
    folder = os.environ.get("NURTURE_BENCH_OUT")
    result = Path(folder or "/nonexistent") / "send_throughput.json"
    if result.exists():
        rate = float(json.loads(result.read_text())["rate"])
        return rate / 2, f"half of benchmark 1's {rate:.0f} emails/s"
    return FALLBACK_MAX_RATE / 2, f"half of {FALLBACK_MAX_RATE:.0f} emails/s (benchmark 1 not run; --rate)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=None, help="emails due per second (default: see doc)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds over which deliveries fall due")
    parser.add_argument("--interval", type=float, default=5.0, help="NURTURE_DISPATCH_INTERVAL, seconds")
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    rate, why = (args.rate, "--rate") if args.rate else half_of_measured_maximum()
    count = int(rate * args.duration)
    target = args.interval + 2
    banner(
        "benchmark 4: lag at half the maximum rate",
        rate=f"{rate:.0f} emails/s ({why})",
        duration=f"{args.duration:.0f} s",
        deliveries=count,
        dispatch_interval=f"{args.interval:g} s",
        worker=f"1 process x concurrency {args.concurrency}",
    )
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    var = Path("/tmp/nurture-bench-lag")
    shutil.rmtree(var, ignore_errors=True)  # no beat schedule or logs left from an earlier run
    with SmtpSink(keep_times=True) as sink:
        env = {
            "NURTURE_DATABASE_URL": fresh_database("nurture_bench_lag"),
            "NURTURE_BROKER_URL": REDIS_URL,
            "NURTURE_SMTP_URL": f"smtp://127.0.0.1:{sink.port}",
            "NURTURE_BASE_URL": "https://nurture.example.org",
            "NURTURE_DISPATCH_INTERVAL": str(args.interval),
            "NURTURE_VAR_DIR": str(var),
        }
        os.environ.update(env)
        sync_sequence()
        from sqlalchemy import text

        from nurture.core.db import get_engine

        engine = get_engine()
        bulk_enrolled(engine, count, status="pending", due="now() + interval '30 days'")
        first_due = time.time() + LEAD_SECONDS + 15  # room for the UPDATE below and the processes to start
        with engine.begin() as connection:
            # Only the first step: subscriber readerN's email falls due at first_due + N / rate.
            connection.execute(
                text(
                    "UPDATE deliveries d SET due_at = to_timestamp(:first + "
                    "CAST(substring(s.email from 'reader([0-9]+)@') AS bigint) / :rate) "
                    "FROM subscribers s WHERE s.id = d.subscriber_id "
                    "AND d.step_id = (SELECT min(step_id) FROM deliveries)"
                ),
                {"first": first_due, "rate": rate},
            )
        processes = [
            start_nurture(["worker", "--concurrency", str(args.concurrency)], env, var / "worker.log"),
            start_nurture(["beat"], env, var / "beat.log"),
        ]
        try:
            time.sleep(max(0.0, first_due - time.time()))
            print(f"load average when the first delivery fell due: {load_average()}")
            deadline = first_due + args.duration + 300
            while sink.count < count and time.time() < deadline:
                time.sleep(0.2)
        finally:
            stop_all(processes)
        accepted = list(sink.accepted)
    lags = []
    for recipient, at in accepted:
        index = int(recipient.split(b"@")[0].removeprefix(b"reader"))
        lags.append(at - (first_due + index / rate))
    p50, p99 = (percentile(lags, p) if lags else float("nan") for p in (50, 99))
    passed = len(lags) == count and p99 <= target
    print(f"load average at the end: {load_average()}")
    print(f"sent {len(lags)} of {count}")
    print(f"lag (SMTP accepted - due): p50 {p50:.2f} s, p99 {p99:.2f} s, max {max(lags, default=0):.2f} s")
    print(f"target: p99 <= {target:g} s (dispatch interval + 2 s): {verdict(passed)}")
    save_result(
        "lag",
        {
            "title": "Lag at half the maximum rate",
            "figure": f"p50 {p50:.2f} s, p99 {p99:.2f} s at {rate:.0f} emails/s, dispatch interval "
            f"{args.interval:g} s ({len(lags)} of {count} sent)",
            "target": f"p99 <= {target:g} s",
            "passed": passed,
            "p50_s": p50,
            "p99_s": p99,
            "rate": rate,
        },
    )
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
