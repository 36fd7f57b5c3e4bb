"""Shared set-up for the benchmarks: a scratch PostgreSQL database, bulk data, machine description."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess

from sqlalchemy import Engine, create_engine, text

ADMIN_URL = os.environ.get("NURTURE_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("NURTURE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


def fresh_database(name: str) -> str:
    """Drop and create ``name``, migrate it, and return its URL."""
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        connection.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    from nurture.db import make_engine
    from nurture.migrate import upgrade

    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


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


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def median(values: list[float]) -> float:
    return statistics.median(values)
