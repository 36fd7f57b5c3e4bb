"""Where a worker's time goes: send N emails in this process under pyinstrument and print the profile.

    .venv/bin/python bench/profile_send.py [--count 2000] [--dkim] [--html PATH]

The same objects a worker process builds (nurture.tasks.process_sender: Sender, SMTP transport, templates,
rate limiter, breaker) send claimed batches from PostgreSQL to the loopback sink, without Celery in between.
Prints wall time against this process's CPU time (the difference is waiting: database round trips and
commits, the SMTP server's answers) and pyinstrument's call tree. Used for the profile summaries in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import REDIS_URL, banner, first_steps_due_now, fresh_database, sync_sequence  # noqa: E402
from bench.smtp_sink import SmtpSink  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--dkim", action="store_true", help="sign with a fresh 2048-bit key")
    parser.add_argument("--html", type=Path, default=None, help="also write pyinstrument's HTML report")
    parser.add_argument("--no-profile", action="store_true", help="only the timings, without the profiler")
    parser.add_argument("--cpu", action="store_true", help="cProfile on the CPU clock (waits left out)")
    args = parser.parse_args()
    banner("profile: sending in one process", emails=args.count, dkim=args.dkim)
    from pyinstrument import Profiler

    with SmtpSink() as sink:
        env = {
            "NURTURE_DATABASE_URL": fresh_database("nurture_bench_profile"),
            "NURTURE_BROKER_URL": REDIS_URL,
            "NURTURE_SMTP_URL": f"smtp://127.0.0.1:{sink.port}",
            "NURTURE_BASE_URL": "https://nurture.example.org",
            "NURTURE_VAR_DIR": "/tmp/nurture-bench-profile",
        }
        if args.dkim:
            from nurture.core.dkim_keys import generate_private_key

            key = Path(env["NURTURE_VAR_DIR"]) / "dkim.pem"
            key.parent.mkdir(parents=True, exist_ok=True)
            key.write_bytes(generate_private_key(2048))
            env["NURTURE_DKIM_KEY"] = str(key)
        os.environ.update(env)
        sync_sequence()

        from nurture.core.db import get_engine, transaction
        from nurture.delivery.dispatch import batches, claim_due
        from nurture.tasks import process_sender

        engine = get_engine()
        first_steps_due_now(engine, args.count)
        sender = process_sender()
        with transaction() as session:
            claim = claim_due(session, limit=args.count, lease_seconds=3600)
        work = batches(claim.ids, sender.settings.broker.batch_size)
        sender.send_batch(claim.token, work.pop(0))  # warm: templates compiled, connections open
        sent_before = sink.count
        profiler = Profiler(interval=0.0005)
        on_cpu = cProfile.Profile(time.process_time)
        wall, cpu = time.perf_counter(), time.process_time()
        if args.cpu:
            on_cpu.enable()
        elif not args.no_profile:
            profiler.start()
        for batch in work:
            sender.send_batch(claim.token, batch)
        if args.cpu:
            on_cpu.disable()
        elif not args.no_profile:
            profiler.stop()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        sent = sink.count - sent_before
    print(f"sent {sent} emails in {wall:.2f} s: {sent / wall:.0f} emails/s in one process")
    print(
        f"per email: {wall / sent * 1000:.2f} ms wall, {cpu / sent * 1000:.2f} ms CPU in this process "
        f"({(wall - cpu) / sent * 1000:.2f} ms waiting on PostgreSQL, Redis and the SMTP sink)"
    )
    if args.cpu:
        pstats.Stats(on_cpu).sort_stats("cumulative").print_stats(r"nurture|smtplib|psycopg|itsdangerous", 45)
        return
    if args.no_profile:
        return
    print(profiler.output_text(unicode=False, color=False, show_all=False, short_mode=False))
    if args.html:
        args.html.write_text(profiler.output_html())


if __name__ == "__main__":
    main()
