"""Emails per second from `nurture dispatch --once` plus one worker, PostgreSQL + Redis, to a loopback sink.

    .venv/bin/python bench/send_throughput.py [--count 2000] [--concurrency 2]

Creates its own PostgreSQL database (nurture_bench) and uses Redis db 14; prints the machine and the numbers.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import create_engine, insert, select, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.smtp_sink import SmtpSink  # noqa: E402

ADMIN_URL = os.environ.get("NURTURE_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
DB_URL = ADMIN_URL.rsplit("/", 1)[0] + "/nurture_bench"
REDIS_URL = os.environ.get("NURTURE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


def prepare(count: int, env: dict[str, str]) -> None:
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text("DROP DATABASE IF EXISTS nurture_bench WITH (FORCE)"))
        connection.execute(text("CREATE DATABASE nurture_bench"))
    admin.dispose()
    os.environ.update(env)
    from nurture.catalog import sync_definition
    from nurture.config import get_settings
    from nurture.db import get_engine, transaction
    from nurture.mail.templates import EmailTemplates
    from nurture.migrate import upgrade
    from nurture.models import Delivery, Enrollment, Sequence, Subscriber
    from nurture.sequences.loader import find

    get_settings.cache_clear()
    upgrade(get_engine())
    settings = get_settings()
    definition = find(settings.sequences_dir, "ketamine-therapy", EmailTemplates(settings.templates_dir))
    from nurture import clock

    now = clock.now()
    with transaction() as session:
        sync_definition(session, definition)
        sequence = session.scalar(select(Sequence).where(Sequence.slug == "ketamine-therapy"))
        version = sequence.current_version
        first_step = version.steps[0]
        ids = session.scalars(
            insert(Subscriber).returning(Subscriber.id),
            [
                {"email": f"reader{n}@example.com", "public_id": f"bench{n}", "first_name": "Reader",
                 "status": "active", "attributes": {}, "created_at": now}
                for n in range(count)
            ],
        ).all()  # fmt: skip
        enrollment_ids = session.scalars(
            insert(Enrollment).returning(Enrollment.id),
            [{"subscriber_id": i, "sequence_id": sequence.id, "version_id": version.id, "status": "active",
              "enrolled_at": now} for i in ids],
        ).all()  # fmt: skip
        session.execute(
            insert(Delivery),
            [{"enrollment_id": e, "step_id": first_step.id, "subscriber_id": s, "status": "pending",
              "due_at": now, "attempts": 0, "created_at": now}
             for e, s in zip(enrollment_ids, ids, strict=True)],
        )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    with SmtpSink() as sink:
        env = {
            "NURTURE_DATABASE_URL": DB_URL,
            "NURTURE_BROKER_URL": REDIS_URL,
            "NURTURE_SMTP_URL": f"smtp://127.0.0.1:{sink.port}",
            "NURTURE_BASE_URL": "https://nurture.example.org",
            "NURTURE_CLAIM_LIMIT": str(args.count),
            "NURTURE_DISPATCH_INTERVAL": "3600",  # no beat here; dispatch --once drives it
        }
        prepare(args.count, env)
        child_env = {**os.environ, **env}
        worker = subprocess.Popen(
            [sys.executable, "-m", "nurture.cli", "worker", "--concurrency", str(args.concurrency)],
            env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            time.sleep(3)  # let the worker connect; not part of the measurement
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "nurture.cli", "dispatch", "--once"], env=child_env, check=True
            )
            dispatched = time.perf_counter()
            deadline = started + 600
            while sink.count < args.count and time.perf_counter() < deadline:
                time.sleep(0.05)
            finished = time.perf_counter()
        finally:
            worker.terminate()
            worker.wait(30)
    elapsed = finished - started
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"emails: {sink.count} of {args.count}; worker concurrency {args.concurrency}")
    print(f"dispatch --once (claim + enqueue, incl. process start): {dispatched - started:.2f} s")
    print(f"end to end: {elapsed:.2f} s = {sink.count / elapsed:.0f} emails/s")
    if sink.first_at and sink.last_at and sink.last_at > sink.first_at:
        print(f"sending phase: {sink.count / (sink.last_at - sink.first_at):.0f} emails/s")


if __name__ == "__main__":
    main()
