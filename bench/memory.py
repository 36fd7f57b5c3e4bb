"""Benchmark 6: a worker's memory over a long run: flat, and small.

    .venv/bin/python bench/memory.py [--count 100000] [--sample-every 2]

One worker (``nurture worker --concurrency 1``: Celery's main process plus the one pool process that sends)
sends ``--count`` emails of the ketamine-therapy sequence from PostgreSQL to a loopback sink that only counts.
The resident set size (VmRSS from /proc) of each process is sampled every few seconds. Steady state starts
once 5% of the emails are out (templates compiled, connections and caches warm); growth is the last steady
sample against the first, per process. Target: growth <= 10% and peak <= 200 MB for every process.
"""

from __future__ import annotations

import argparse
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
    first_steps_due_now,
    fresh_database,
    load_average,
    process_tree,
    rss_mb,
    save_result,
    start_nurture,
    stop_all,
    sync_sequence,
    verdict,
)
from bench.smtp_sink import SmtpSink  # noqa: E402

MAX_GROWTH = 0.10
MAX_PEAK_MB = 200.0
WARM_FRACTION = 0.05


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=100_000, help="emails to send")
    parser.add_argument("--sample-every", type=float, default=2.0, help="seconds between RSS samples")
    args = parser.parse_args()
    banner(
        "benchmark 6: worker memory",
        emails=args.count,
        worker="1 worker, --concurrency 1 (main process + 1 pool process)",
        sampling=f"VmRSS every {args.sample_every:g} s",
    )
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    var = Path("/tmp/nurture-bench-memory")
    shutil.rmtree(var, ignore_errors=True)  # no beat schedule or logs left from an earlier run
    with SmtpSink() as sink:
        env = {
            "NURTURE_DATABASE_URL": fresh_database("nurture_bench_memory"),
            "NURTURE_BROKER_URL": REDIS_URL,
            "NURTURE_SMTP_URL": f"smtp://127.0.0.1:{sink.port}",
            "NURTURE_BASE_URL": "https://nurture.example.org",
            "NURTURE_DISPATCH_INTERVAL": "1",
            "NURTURE_VAR_DIR": str(var),
        }
        os.environ.update(env)
        sync_sequence()

        from nurture.core.db import get_engine

        engine = get_engine()
        first_steps_due_now(engine, args.count)
        worker = start_nurture(["worker", "--concurrency", "1"], env, var / "worker.log")
        beat = start_nurture(["beat"], env, var / "beat.log")
        samples: list[tuple[float, int, dict[int, float]]] = []  # (seconds, emails sent, {pid: MB})
        started = time.monotonic()
        try:
            deadline = started + max(600, args.count / 20)
            while sink.count < args.count and time.monotonic() < deadline:
                pids = process_tree(worker.pid)[:4]
                # The first pid is the `nurture worker` process that execs Celery's main process in place.
                rss = {pid: rss_mb(pid) for pid in pids if Path(f"/proc/{pid}").exists()}
                samples.append((time.monotonic() - started, sink.count, rss))
                time.sleep(args.sample_every)
            elapsed = time.monotonic() - started
        finally:
            stop_all([beat, worker])
    warm_at = args.count * WARM_FRACTION
    pids = sorted({pid for _, _, rss in samples for pid in rss})
    ok = sink.count >= args.count
    per_process = {}
    for pid in pids:
        steady = [rss[pid] for _, sent, rss in samples if sent >= warm_at and pid in rss]
        every = [rss[pid] for _, _, rss in samples if pid in rss]
        if not steady:
            continue
        growth = steady[-1] / steady[0] - 1
        peak = max(every)
        per_process[pid] = {
            "first_steady_mb": steady[0],
            "last_mb": steady[-1],
            "growth": growth,
            "peak_mb": peak,
        }
        ok = ok and growth <= MAX_GROWTH and peak <= MAX_PEAK_MB
    print(f"load average at the end: {load_average()}")
    print(f"sent {sink.count} of {args.count} in {elapsed:.0f} s ({sink.count / elapsed:.0f} emails/s)")
    for pid, figures in per_process.items():
        print(
            f"  pid {pid}: first steady {figures['first_steady_mb']:.1f} MB, "
            f"last {figures['last_mb']:.1f} MB, "
            f"growth {figures['growth'] * 100:+.1f}%, peak {figures['peak_mb']:.1f} MB"
        )
    print("samples (s, sent, MB per process):")
    step = max(1, len(samples) // 12)
    for at, sent, rss in samples[::step] + samples[-1:]:
        print(f"  {at:6.0f} s {sent:>7} " + " ".join(f"{mb:6.1f}" for mb in rss.values()))
    worst_growth = max((f["growth"] for f in per_process.values()), default=float("nan"))
    worst_peak = max((f["peak_mb"] for f in per_process.values()), default=float("nan"))
    print(f"target: growth <= {MAX_GROWTH:.0%}, peak <= {MAX_PEAK_MB:.0f} MB per process: {verdict(ok)}")
    save_result(
        "memory",
        {
            "title": "Worker memory",
            "figure": f"growth {worst_growth * 100:+.1f}%, peak {worst_peak:.0f} MB (worst process) over "
            f"{sink.count:,} emails",
            "target": f"growth <= {MAX_GROWTH:.0%}, peak <= {MAX_PEAK_MB:.0f} MB per process",
            "passed": ok,
            "processes": per_process,
            "emails": sink.count,
        },
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
