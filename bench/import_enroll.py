"""Benchmark 3: import a CSV of 100,000 new subscribers, each enrolled in the 8-step ketamine-therapy
sequence (800,000 delivery rows), on a fresh PostgreSQL database, through the same code as
`nurture subscribers import`.

    .venv/bin/python bench/import_enroll.py [--rows 100000] [--profile]

Prints the machine, the seconds (parse and write separately) and rows/s. Target: <= 30 s for 100,000 rows.
``--profile`` runs the write under cProfile and prints the 25 most expensive functions.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import banner, fresh_database, save_result, verdict

SLUG = "ketamine-therapy"
STEPS = 8
ZONES = ("America/New_York", "Europe/Berlin", "America/Los_Angeles", "Asia/Tokyo", "")


def make_csv(rows: int) -> bytes:
    """``rows`` distinct people in five zones (one in five with none) and one extra column."""
    lines = ["email,first_name,timezone,company"]
    lines.extend(
        f"reader{n}@example.com,Reader{n},{ZONES[n % len(ZONES)]},Acme {n % 97}" for n in range(rows)
    )
    return ("\r\n".join(lines) + "\r\n").encode()


def backend_cpu_seconds(engine, database: str) -> float | None:  # type: ignore[no-untyped-def]
    """CPU time used so far by every server process connected to ``database`` (PostgreSQL on this machine
    only; None elsewhere). With the client's own CPU time it tells the work apart from waiting for a core
    that other programs hold."""
    from sqlalchemy import text

    try:
        with engine.connect() as connection:
            pids = connection.execute(
                text("SELECT pid FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid()"),
                {"db": database},
            ).scalars()
            total = 0
            for pid in pids:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
        return total / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    url = fresh_database("nurture_bench_import")
    os.environ["NURTURE_DATABASE_URL"] = url
    from sqlalchemy import func, select

    from nurture.core.config import get_settings
    from nurture.core.db import session_factory, transaction
    from nurture.mail.templates import EmailTemplates
    from nurture.models import Delivery
    from nurture.sequences.loader import find
    from nurture.sequences.sync import sync_definition
    from nurture.subscribers.import_files import ImportReport, read_csv
    from nurture.subscribers.importer import import_rows

    settings = get_settings()
    with transaction() as session:
        sync_definition(session, find(settings.sequences_dir, SLUG, EmailTemplates(settings.templates_dir)))
    data = make_csv(args.rows)
    banner("Import and enrollment", rows=args.rows, sequence=SLUG, steps=STEPS)
    load_before = f"{os.getloadavg()[0]:.1f}"

    started = time.perf_counter()
    cpu_started = time.process_time()
    rows, errors = read_csv(data)
    parsed = time.perf_counter()
    report = ImportReport(errors=errors)
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    import_rows(session_factory(), rows, SLUG, "benchmark", report)
    if profiler:
        profiler.disable()
    finished = time.perf_counter()
    client_cpu = time.process_time() - cpu_started
    from nurture.core.db import get_engine

    server_cpu = backend_cpu_seconds(get_engine(), url.rsplit("/", 1)[1])

    with transaction() as session:
        deliveries = session.scalar(select(func.count()).select_from(Delivery))
    assert report.imported == args.rows and not report.errors, (report.imported, report.errors[:3])
    assert deliveries == args.rows * STEPS, deliveries
    total = finished - started
    target = 30 * args.rows / 100_000  # 30 s for 100,000 rows, in proportion for a smoke run
    passed = total <= target
    figure = (
        f"{args.rows:,} rows with enrollment ({deliveries:,} deliveries): {total:.1f} s "
        f"(parse {parsed - started:.1f} s, write {finished - parsed:.1f} s), {args.rows / total:,.0f} rows/s"
    )
    print(f"import {figure} (target <= {target:g} s): {verdict(passed)}")
    server = f"{server_cpu:.1f} s" if server_cpu is not None else "unknown (not a local server)"
    print(
        f"CPU used: client {client_cpu:.1f} s, database server {server}; load average before/after: "
        f"{load_before}, {os.getloadavg()[0]:.1f} (a busy machine stretches the wall time, not the CPU time)"
    )
    save_result(
        "import_enroll",
        {
            "title": "Import and enrollment",
            "figure": f"{figure}; CPU client {client_cpu:.1f} s, database {server}",
            "target": f"<= {target:g} s",
            "passed": passed,
            "seconds": total,
            "parse_seconds": parsed - started,
            "rows_per_second": args.rows / total,
            "client_cpu_seconds": client_cpu,
            "database_cpu_seconds": server_cpu,
        },
    )
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
