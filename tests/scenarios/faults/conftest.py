"""Fault-injection scenarios on real processes: PostgreSQL, Redis, Celery workers and beat, SMTP on loopback.

Every scenario asserts on what the SMTP server accepted (Message-IDs) and on the database afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from nurture.core.db import transaction
from nurture.models import Delivery, Event
from nurture.subscribers.enrollment import add_subscriber
from tests.support.helpers import sync_sequences
from tests.support.processes import Processes, SmtpServer

# Short leases and ticks so that faults play out in seconds; the mechanisms are the production ones.
FAST = {
    "NURTURE_DISPATCH_INTERVAL": "0.3",
    "NURTURE_LEASE_SECONDS": "20",
    "NURTURE_BATCH_SIZE": "20",
    "NURTURE_CLAIM_LIMIT": "60",
    "NURTURE_RETRY_BASE_SECONDS": "0.5",
    "NURTURE_RETRY_CAP_SECONDS": "4",
}


@dataclass
class Cluster:
    processes: Processes
    factory: sessionmaker[Session]
    env: dict[str, str]
    tmp: Path
    names: Counter[str] = field(default_factory=Counter)
    # The embedded broker is a folder under NURTURE_VAR_DIR: every process must share it to share the queue.
    embedded_broker: bool = False

    def _name(self, kind: str) -> str:
        self.names[kind] += 1
        return f"{kind}{self.names[kind]}"

    def worker(
        self, concurrency: int = 1, prefix: list[str] | None = None, **env: str
    ) -> subprocess.Popen[bytes]:
        args = ["worker", "--concurrency", str(concurrency), "--without-mingle", "--without-gossip"]
        return self.processes.start(self._name("worker"), args, {**self.env, **env}, prefix=prefix)

    def beat(self, prefix: list[str] | None = None, **env: str) -> subprocess.Popen[bytes]:
        name = self._name("beat")
        # Each beat keeps its own schedule file, as on separate machines (with a broker that is no folder).
        own = {} if self.embedded_broker else {"NURTURE_VAR_DIR": str(self.tmp / name)}
        env = {**self.env, **own, **env}
        return self.processes.start(name, ["beat"], env, prefix=prefix)

    @staticmethod
    def kill(child: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGKILL) -> None:
        """SIGKILL the process and everything it forked (a Celery worker and its pool) at once; other signals
        go to the main process, as an orchestrator sends them, so it can stop its pool in order."""
        with contextlib.suppress(ProcessLookupError):
            if sig == signal.SIGKILL:
                os.killpg(child.pid, sig)
            else:
                child.send_signal(sig)
        child.wait(timeout=60)

    def statuses(self) -> Counter[str]:
        with transaction(self.factory) as session:
            return Counter(
                dict(session.execute(select(Delivery.status, func.count()).group_by(Delivery.status)).all())
            )

    def events(self, kind: str) -> list[Event]:
        with transaction(self.factory) as session:
            return list(session.scalars(select(Event).where(Event.kind == kind)))

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")


def seed(factory: sessionmaker[Session], count: int, slug: str, prefix: str = "reader") -> None:
    """``count`` confirmed subscribers enrolled in ``slug``, in one transaction."""
    with transaction(factory) as session:
        for n in range(count):
            add_subscriber(session, f"{prefix}{n}@example.com", sequence_slug=slug)


def duplicates(smtp: SmtpServer) -> dict[str, int]:
    counts = Counter(smtp.handler.message_ids())
    return {message_id: n for message_id, n in counts.items() if n > 1}


def _run(group: Cluster, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    yield group
    group.processes.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(group.processes.logs())


@pytest.fixture
def cluster(pg_factory, redis_url, one_step, tmp_path, request) -> Iterator[Cluster]:  # type: ignore[no-untyped-def]
    sync_sequences(pg_factory)
    url = pg_factory.kw["bind"].url.render_as_string(hide_password=False)
    env = {"NURTURE_DATABASE_URL": url, "NURTURE_BROKER_URL": redis_url, **FAST}
    yield from _run(Cluster(Processes(tmp_path), pg_factory, env, tmp_path), request)


@pytest.fixture(params=["postgres", "sqlite"])
def any_cluster(request, tmp_path, one_step) -> Iterator[Cluster]:  # type: ignore[no-untyped-def]
    """The same processes on PostgreSQL with Redis, or on embedded defaults: SQLite and a broker folder."""
    if request.param == "postgres":
        yield request.getfixturevalue("cluster")
        return
    from nurture.core.db import session_factory

    request.getfixturevalue("set_env")(database_url=request.getfixturevalue("sqlite_url"))
    factory = session_factory()
    sync_sequences(factory)
    url = factory.kw["bind"].url.render_as_string(hide_password=False)
    env = {"NURTURE_DATABASE_URL": url, "NURTURE_VAR_DIR": str(tmp_path / "var"), **FAST}
    group = Cluster(Processes(tmp_path), factory, env, tmp_path, embedded_broker=True)
    yield from _run(group, request)
