"""What one ``POST /subscribe`` costs: N signups through the ASGI app in this process, against PostgreSQL.

    .venv/bin/python bench/profile_signup.py [--count 2000] [--form] [--no-log] [--profile]

The app is the one ``nurture web`` serves (production settings, JSON logs), called directly as ASGI with the
scope uvicorn would build (no HTTP client in this process to blur the figures); every request carries its
own client address, like benchmark 3. uvicorn's access line is logged per request as uvicorn logs it (to
/dev/null), since it is part of every request's cost in production. Prints:

* CPU ms per signup in this process (``time.process_time``: the web process's share) and in the PostgreSQL
  backends serving this database (from /proc; the database's share);
* SQL statements per signup, counted by a ``before_cursor_execute`` listener (BEGIN/COMMIT are not
  statements SQLAlchemy executes through a cursor, and the pool's pre-ping is not counted either).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import banner, cpu_seconds, fresh_database, sync_sequence  # noqa: E402

DATABASE = "nurture_bench_profile_signup"


def request_scope(index: int, form: bool) -> tuple[dict[str, Any], bytes]:
    """The ASGI scope and body uvicorn hands the app for one signup from client 10.x.y.z."""
    email = f"load{index}@example.com"
    if form:
        body = f"email={email}&consent=yes&first_name=Load&source=bench".encode()
        kind, accept = b"application/x-www-form-urlencoded", b"text/html"
    else:
        body = json.dumps({"email": email, "consent": True, "first_name": "Load", "source": "bench"}).encode()
        kind, accept = b"application/json", b"application/json"
    client = f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}"
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": (client, 50000),
        "scheme": "http",
        "method": "POST",
        "root_path": "",
        "path": "/subscribe",
        "raw_path": b"/subscribe",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", kind),
            (b"accept", accept),
            (b"content-length", str(len(body)).encode()),
        ],
        "state": {},
    }
    return scope, body


async def one_request(app: Any, index: int, form: bool, access: logging.Logger | None) -> int:
    scope, body = request_scope(index, form)
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    if access is not None:  # exactly uvicorn's access line (uvicorn.protocols.http.httptools_impl)
        access.info(
            '%s - "%s %s HTTP/%s" %d', f"{scope['client'][0]}:50000", "POST", "/subscribe", "1.1", status
        )
    return status


def backend_pids(engine: Any) -> list[int]:
    """PostgreSQL backends connected to the benchmark database (the pool's connections)."""
    from sqlalchemy import text

    with engine.connect() as connection:
        return list(
            connection.execute(
                text("SELECT pid FROM pg_stat_activity WHERE datname = :name"), {"name": DATABASE}
            ).scalars()
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--form", action="store_true", help="form posts (303) instead of JSON (202)")
    parser.add_argument("--no-log", action="store_true", help="leave out uvicorn's access line")
    parser.add_argument("--profile", action="store_true", help="print pyinstrument's call tree too")
    args = parser.parse_args()
    banner("profile: POST /subscribe in one process", signups=args.count, form=args.form)
    os.environ.update(
        {
            "NURTURE_ENV": "production",
            "NURTURE_SECRET_KEY": secrets.token_urlsafe(48),
            "NURTURE_POSTAL_ADDRESS": "1 Benchmark Street, Testville",
            "NURTURE_BASE_URL": "https://nurture.example.org",
            "NURTURE_DATABASE_URL": fresh_database(DATABASE),
            "NURTURE_SMTP_URL": "memory://",
            "NURTURE_VAR_DIR": "/tmp/nurture-bench-profile-signup",
            # Benchmark 3 gives every request its own address; here one process plays all of them.
            "NURTURE_SIGNUP_IP_LIMIT": "100000",
        }
    )
    sync_sequence()
    from sqlalchemy import event

    from nurture.core.config import get_settings
    from nurture.core.db import get_engine
    from nurture.core.logs import configure_logging
    from nurture.web.app import create_app

    configure_logging(get_settings(), "web")
    devnull = open(os.devnull, "w")  # noqa: SIM115  (lives as long as the process)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(devnull)
    access = None if args.no_log else logging.getLogger("uvicorn.access")
    app = create_app()
    engine = get_engine()
    statements = 0

    @event.listens_for(engine, "before_cursor_execute")
    def _count(*_: Any) -> None:
        nonlocal statements
        statements += 1

    async def run(first: int, count: int) -> list[int]:
        return [await one_request(app, first + i, args.form, access) for i in range(count)]

    asyncio.run(run(0, 50))  # warm: connections open, statements compiled and cached
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005)
    pids = backend_pids(engine)
    statements = 0
    pg_cpu, wall, cpu = cpu_seconds(pids), time.perf_counter(), time.process_time()
    if args.profile:
        # pyinstrument samples one thread: run the signup transaction inline so its time shows up too.
        from nurture.web.public import subscribe

        async def inline(function: Any, *a: Any, **k: Any) -> Any:
            return function(*a, **k)

        subscribe.run_in_threadpool = inline  # type: ignore[assignment]
        profiler.start()
    statuses = asyncio.run(run(1_000_000, args.count))
    if args.profile:
        profiler.stop()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    pids = sorted(set(pids) | set(backend_pids(engine)))
    pg_cpu = cpu_seconds(pids) - pg_cpu
    expected = 303 if args.form else 202
    assert statuses == [expected] * args.count, {s: statuses.count(s) for s in set(statuses)}
    n = args.count
    print(f"{n} signups in {wall:.2f} s ({n / wall:.0f}/s sequentially), every one answered {expected}")
    print(f"per signup: {wall / n * 1e3:.2f} ms wall, {cpu / n * 1e3:.2f} ms CPU in this process")
    print(f"per signup: {pg_cpu / n * 1e3:.2f} ms CPU in PostgreSQL ({len(pids)} backends, 10 ms ticks)")
    print(f"per signup: {(cpu + pg_cpu) / n * 1e3:.2f} ms CPU in all")
    print(f"per signup: {statements / n:.2f} SQL statements")
    if args.profile:
        print(profiler.output_text(unicode=True, color=False, show_all=False))


if __name__ == "__main__":
    main()
