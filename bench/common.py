"""Shared set-up for the benchmarks: a scratch PostgreSQL database, bulk data, machine description."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text

# Benchmarks run on a developer's machine with the development key, like `make run` (the benchmarks that
# measure production settings set NURTURE_ENV=production themselves).
os.environ.setdefault("NURTURE_ENV", "development")
ADMIN_URL = os.environ.get("NURTURE_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("NURTURE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
# The planner settings docker-compose.yml gives PostgreSQL (docs/operating.md, "PostgreSQL"), set on each
# benchmark's database so the figures are those of the deployment we ship; NURTURE_BENCH_PG_SETTINGS=""
# measures the server's own defaults instead.
PG_SETTINGS = os.environ.get("NURTURE_BENCH_PG_SETTINGS", "random_page_cost=1.1")


def drop_database(name: str) -> None:
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


def fresh_database(name: str) -> str:
    """Drop and create ``name``, migrate it, and return its URL. The database is dropped again when the
    benchmark's process exits (a 5M-row table is a gigabyte on a shared machine), unless
    NURTURE_BENCH_KEEP_DB=1 keeps it for a look with psql."""
    import atexit

    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        connection.execute(text(f"CREATE DATABASE {name}"))
        for setting in filter(None, PG_SETTINGS.split(",")):
            key, value = (part.strip() for part in setting.split("=", 1))
            connection.execute(text(f"ALTER DATABASE {name} SET {key} = {float(value)}"))
    admin.dispose()
    if os.environ.get("NURTURE_BENCH_KEEP_DB", "") in ("", "0"):
        atexit.register(drop_database, name)
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    from nurture.core.db import make_engine
    from nurture.core.migrate import upgrade

    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


def first_steps_due_now(engine: Engine, subscribers: int) -> None:
    """``subscribers`` enrolled, only their first step due (one email each), the rest a month away."""
    enrolled_nothing_due(engine, subscribers)
    make_first_steps_due(engine)


def enrolled_nothing_due(engine: Engine, subscribers: int) -> None:
    """``subscribers`` enrolled, every step a month away (make_first_steps_due brings the first ones due)."""
    bulk_enrolled(engine, subscribers, status="pending", due="now() + interval '30 days'")


def make_first_steps_due(engine: Engine) -> None:
    """Every enrolled subscriber's first step due now (after bulk_enrolled, one statement)."""
    with engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE deliveries SET due_at = now() - interval '1 second' "
                "WHERE step_id = (SELECT min(step_id) FROM deliveries)"
            )
        )


def bulk_enrolled(engine: Engine, subscribers: int, *, status: str, due: str, offset: int = 0) -> None:
    """``subscribers`` enrolled in the first version of ketamine-therapy, one delivery per step, in SQL."""
    with engine.begin() as connection:
        connection.execute(
            text(
                """
                WITH version AS (
                    SELECT v.id AS version_id, v.sequence_id FROM sequence_versions v
                    JOIN sequences s ON s.id = v.sequence_id WHERE s.slug = 'ketamine-therapy' LIMIT 1
                ), new_subscribers AS (
                    INSERT INTO subscribers (public_id, email, first_name, status, attributes, created_at)
                    SELECT 'b' || n, 'reader' || n || '@example.com', 'Reader', 'active', '{}', now()
                    FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS n
                    RETURNING id
                ), new_enrollments AS (
                    INSERT INTO enrollments (subscriber_id, sequence_id, version_id, status, enrolled_at)
                    SELECT ns.id, v.sequence_id, v.version_id, 'active', now()
                    FROM new_subscribers ns, version v
                    RETURNING id, subscriber_id, version_id
                )
                INSERT INTO deliveries
                    (enrollment_id, step_id, subscriber_id, status, due_at, attempts, created_at)
                SELECT e.id, st.id, e.subscriber_id, :status, """
                + due
                + """, 0, now()
                FROM new_enrollments e JOIN steps st ON st.version_id = e.version_id
                """
            ),
            {"first": offset, "last": offset + subscribers - 1, "status": status},
        )
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))


def machine() -> str:
    cpu = "unknown cpu"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        cpu = next((line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line), cpu)
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def banner(title: str, **parameters: object) -> None:
    """What every benchmark prints first: which one, the machine, how busy it is, and its parameters."""
    print(f"== {title}")
    print(f"machine: {machine()}")
    print(f"load average at start (1/5/15 min): {load_average()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    print(f"PostgreSQL settings of the benchmark's database: {PG_SETTINGS or 'the server defaults'}")
    for name, value in parameters.items():
        print(f"  {name} = {value}")


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def save_result(name: str, result: dict[str, Any]) -> None:
    """Write the figures as JSON for bench/run_all.py (only when it asked, via NURTURE_BENCH_OUT)."""
    folder = os.environ.get("NURTURE_BENCH_OUT")
    if not folder:
        return
    result = {"machine": machine(), "load_average": load_average(), **result}
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))


def sync_sequence(slug: str = "ketamine-therapy") -> None:
    """Load one sequence definition into the database named by NURTURE_DATABASE_URL."""
    from nurture.core.config import get_settings
    from nurture.core.db import transaction
    from nurture.mail.templates import EmailTemplates
    from nurture.sequences.loader import find
    from nurture.sequences.sync import sync_definition

    settings = get_settings()
    with transaction() as session:
        sync_definition(session, find(settings.sequences_dir, slug, EmailTemplates(settings.templates_dir)))


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, from /proc (no psutil needed)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def pids_named(name: str) -> list[int]:
    """Every process whose command name is ``name`` (e.g. every PostgreSQL backend: "postgres")."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (exited ones count as 0)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / tick


def rss_mb(pid: int) -> float:
    """Resident set size of one process, in MB (VmRSS from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_nurture(role: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """``nurture <role...>`` as a child process in its own session, output to ``log_path``."""
    import sys

    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "nurture.cli", *role],
        env={**os.environ, **env},
        stdout=log,
        stderr=log,
        start_new_session=True,
    )


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM (Celery's warm shutdown), then SIGKILL the whole session of any that hangs."""
    import signal

    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def median(values: list[float]) -> float:
    return statistics.median(values)
