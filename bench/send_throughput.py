"""Benchmark 1: emails per second end to end, against the raw limit of the same SMTP sink.

    .venv/bin/python bench/send_throughput.py [--count 20000] [--workers 1] [--concurrency 2] [--dkim]

N due deliveries of the ketamine-therapy sequence on PostgreSQL, the Redis broker, Celery workers sending to a
loopback sink that only counts (bench/smtp_sink.py). In the same run: the raw limit, the same number of
pre-built messages sent by plain smtplib from 2 processes over reused connections to the same sink, before
and after nurture's run (the ratio is to the higher). The worker and beat start and idle before the clock
starts; the clock runs from the moment the emails become due to the last one's arrival, so it counts the wait
for the next dispatch tick but not process start-up (which once took 1-2 s of a 12 s run).
``--dkim`` signs every message with a fresh 2048-bit key (the raw limit stays unsigned). Targets: ratio
>= 0.5, and >= 0.35 with DKIM. Also prints the CPU per email of each kind of process (worker, PostgreSQL,
the sink).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import smtplib
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    REDIS_URL,
    banner,
    cpu_seconds,
    enrolled_nothing_due,
    fresh_database,
    load_average,
    make_first_steps_due,
    pids_named,
    process_tree,
    save_result,
    verdict,
)
from bench.smtp_sink import SmtpSink  # noqa: E402


def _raw_sender(port: int, messages: list[bytes]) -> None:
    connection = smtplib.SMTP("127.0.0.1", port, local_hostname="bench.test")
    for data in messages:
        connection.sendmail("hello@example.com", ["reader@example.com"], data)
    connection.quit()


def raw_limit(port: int, count: int, sample: bytes) -> float:
    """Pre-built messages over plain smtplib from 2 processes: what the wire and the sink allow."""
    messages = [sample] * (count // 2)
    started = time.perf_counter()
    workers = [multiprocessing.Process(target=_raw_sender, args=(port, messages)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return (count // 2 * 2) / (time.perf_counter() - started)


def sample_message() -> bytes:
    from datetime import UTC, datetime

    from nurture.core.config import get_settings
    from nurture.mail.context import Recipient, step_message
    from nurture.mail.templates import EmailTemplates

    settings = get_settings()
    _, data, _ = step_message(
        settings, EmailTemplates(settings.templates_dir), Recipient("reader@example.com", "Reader", "bench"),
        template="ketamine-therapy/welcome", sequence_name="Understanding ketamine therapy", step_number=1,
        step_count=8, delivery_id=1, date=datetime.now(UTC),
    )  # fmt: skip
    return data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=1, help="worker processes (each with its own pool)")
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--dkim", action="store_true", help="DKIM-sign every message (fresh 2048-bit key)")
    args = parser.parse_args()
    banner(
        "benchmark 1: throughput",
        emails=args.count,
        workers=f"{args.workers} process(es) x concurrency {args.concurrency}",
        dkim=args.dkim,
        raw_limit="pre-built messages, plain smtplib, 2 processes, reused connections",
    )
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    with SmtpSink() as sink:
        env = {
            "NURTURE_DATABASE_URL": fresh_database("nurture_bench"),
            "NURTURE_BROKER_URL": REDIS_URL,
            "NURTURE_SMTP_URL": f"smtp://127.0.0.1:{sink.port}",
            "NURTURE_BASE_URL": "https://nurture.example.org",
            # The default claim limit (10,000, claimed in slices); the tick every second, not 5: the clock
            # counts the wait for it.
            "NURTURE_DISPATCH_INTERVAL": "1",
        }
        if args.dkim:
            from nurture.core.dkim_keys import generate_private_key

            key = Path("/tmp/nurture-bench-throughput/dkim.pem")
            key.parent.mkdir(parents=True, exist_ok=True)
            key.write_bytes(generate_private_key(2048))
            env["NURTURE_DKIM_KEY"] = str(key)
        os.environ.update(env)
        from nurture.core.config import get_settings
        from nurture.core.db import get_engine, transaction
        from nurture.mail.templates import EmailTemplates
        from nurture.sequences.loader import find
        from nurture.sequences.sync import sync_definition

        settings = get_settings()
        with transaction() as session:
            definition = find(
                settings.sequences_dir, "ketamine-therapy", EmailTemplates(settings.templates_dir)
            )
            sync_definition(session, definition)
        raw = raw_limit(sink.port, min(args.count, 20_000), sample_message())
        sink.count = 0
        sink.first_at = sink.last_at = None
        # N subscribers enrolled, nothing due yet: the service starts and idles first, as a deployed one
        # does, so neither process start-up nor beat's first tick is counted as sending time.
        enrolled_nothing_due(get_engine(), args.count)
        child_env = {**os.environ, **env}
        command = [sys.executable, "-m", "nurture.cli"]
        processes = [
            subprocess.Popen([*command, "worker", "--concurrency", str(args.concurrency)], env=child_env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(args.workers)
        ]  # fmt: skip
        beat_env = {**child_env, "NURTURE_VAR_DIR": "/tmp/nurture-bench-beat"}
        beat = subprocess.Popen(
            [*command, "beat"], env=beat_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(6)  # let the workers connect and beat tick idly; not part of the measurement
        # CPU per email by process kind, over the run: where the time goes (the sink is this process).
        database_before = {pid: cpu_seconds([pid]) for pid in pids_named("postgres")}
        redis_before = cpu_seconds(pids_named("redis-server"))
        self_before = time.process_time()
        workers_before = cpu_seconds([pid for p in processes for pid in process_tree(p.pid)])
        consumers_before = cpu_seconds([p.pid for p in processes])  # Celery's main process, per worker
        beat_before = cpu_seconds(process_tree(beat.pid))
        processes.append(beat)
        started = time.perf_counter()
        # Only the first step becomes due: one email per subscriber. The clock runs from here, so the wait
        # for the next dispatch tick (at most its 1 s interval) is counted.
        make_first_steps_due(get_engine())
        try:
            deadline = started + 1800
            while sink.count < args.count and time.perf_counter() < deadline:
                time.sleep(0.05)
            finished = time.perf_counter()
            sink_cpu = time.process_time() - self_before
            workers_cpu = cpu_seconds([pid for p in processes[:-1] for pid in process_tree(p.pid)])
            workers_cpu -= workers_before
            consumers_cpu = cpu_seconds([p.pid for p in processes[:-1]]) - consumers_before
            beat_cpu = cpu_seconds(process_tree(beat.pid)) - beat_before
            database_cpu = sum(
                cpu_seconds([pid]) - database_before.get(pid, 0.0) for pid in pids_named("postgres")
            )
            redis_cpu = cpu_seconds(pids_named("redis-server")) - redis_before
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(60)
        sent_count, first_at, last_at = sink.count, sink.first_at, sink.last_at
        # Again after the run: this machine's spare capacity moves between runs (a shared host), and the
        # higher of the two is the figure the ratio is held to.
        raw_after = raw_limit(sink.port, min(args.count, 20_000), sample_message())
    raw_before, raw = raw, max(raw, raw_after)
    elapsed = finished - started
    rate = sent_count / elapsed
    target = (
        0.35 if args.dkim else 0.5
    )  # the send-path issue's targets: signing costs CPU the raw run does not
    passed = sent_count == args.count and rate / raw >= target
    print(f"load average at the end: {load_average()}")
    print(
        f"raw limit (pre-built messages, smtplib, 2 processes): {raw:.0f} msg/s "
        f"(before the run {raw_before:.0f}, after it {raw_after:.0f}: the higher)"
    )
    print(f"nurture: {sent_count} of {args.count} emails in {elapsed:.1f} s = {rate:.0f} emails/s")
    if first_at is not None and last_at is not None and last_at > first_at:
        # Start-up (the wait for the tick, the claim, the first batch) against the rate once mail flows.
        print(
            f"  the first email {first_at - started:.2f} s after they became due; from then on "
            f"{(sent_count - 1) / (last_at - first_at):.0f} emails/s"
        )
    print(f"  ({args.workers} worker process(es) x concurrency {args.concurrency}, beat tick 1 s)")
    print(f"ratio: {rate / raw:.2f} (target >= {target}): {verdict(passed)}")
    sent = max(sent_count, 1)
    shares = {
        "worker processes": workers_cpu,
        "PostgreSQL": database_cpu,
        "SMTP sink (this process)": sink_cpu,
        "beat": beat_cpu,
        "Redis": redis_cpu,
    }
    print("CPU per email: " + ", ".join(f"{name} {1000 * cpu / sent:.2f} ms" for name, cpu in shares.items()))
    print(
        f"  in all {1000 * sum(shares.values()) / sent:.2f} ms, of {2000 * elapsed / sent:.2f} ms on 2 cores"
    )
    print(
        f"  of the workers': Celery's main process (receiving tasks) {1000 * consumers_cpu / sent:.2f} ms, "
        f"the pool processes (sending) {1000 * (workers_cpu - consumers_cpu) / sent:.2f} ms"
    )
    save_result(
        "send_throughput_dkim" if args.dkim else "send_throughput",
        {
            "title": "Throughput" + (" (DKIM-signed)" if args.dkim else ""),
            "figure": f"{rate:.0f} emails/s end to end vs raw {raw:.0f} msg/s: ratio {rate / raw:.2f} "
            f"({sent_count:,} emails)",
            "target": f"ratio >= {target}",
            "passed": passed,
            "rate": rate,
            "raw": raw,
            "raw_before": raw_before,
            "raw_after": raw_after,
            "ratio": rate / raw,
        },
    )
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
