"""Long staff work with visible progress: an import of a big file, an export of every subscriber, enrolling
thousands. The browser must not wait on one request for minutes, and a person must see it move.

The work runs in a thread of the web process that took the request (at most ``MAX_RUNNING`` at once); a
``jobs`` row carries its counts, so any web process can answer the page that polls them. Progress is
written at most every ``WRITE_EVERY`` seconds, in its own short transaction, never inside the work's; the
counts are also kept in memory (:func:`live`), which is all there is on SQLite: there the work's open write
transaction would make a second writer wait, so the row only learns the end (``make run`` has one web
process, which serves the polling page from memory).
A job whose process died stops moving: a running job whose heartbeat is older than ``STALE_SECONDS`` is
shown as stopped, with what it had done (imports and enrolments are safe to run again: they skip whoever
is already there).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import update

from nurture.core import clock
from nurture.core.db import get_engine, transaction
from nurture.models import Job, JobStatus
from nurture.staff.accounts import Actor

log = logging.getLogger(__name__)
MAX_RUNNING = 2  # two cores: more would only slow each other and the requests being served
WRITE_EVERY = 0.5
STALE_SECONDS = 120
MAX_ERROR_LENGTH = 2000

_executor = ThreadPoolExecutor(max_workers=MAX_RUNNING, thread_name_prefix="nurture-job")
_futures: dict[int, Future[None]] = {}
_running: dict[int, Progress] = {}
_lock = threading.Lock()


class Progress:
    """Handed to the work: ``add(n)`` after each piece of it is done."""

    def __init__(self, job_id: int, total: int, *, write: bool = True) -> None:
        self.job_id = job_id
        self._total = total
        self.done = 0
        self._written_at = 0.0
        self._write_rows = write

    @property
    def total_count(self) -> int:
        return max(self._total, self.done)

    def add(self, count: int) -> None:
        self.done += count
        self._write()

    def _write(self) -> None:
        now = time.monotonic()
        if not self._write_rows or now - self._written_at < WRITE_EVERY:
            return
        self._written_at = now
        with transaction() as session:
            session.execute(
                update(Job)
                .where(Job.id == self.job_id)
                .values(done=self.done, total=max(self._total, self.done), heartbeat_at=clock.now())
            )


@dataclass(frozen=True)
class Outcome:
    result: dict[str, Any]
    output: bytes | None = None


Work = Callable[[Progress], Outcome]


def start(kind: str, label: str, actor: Actor | None, total: int, work: Work) -> int:
    """Record the job, start ``work`` in the background, return the job's id."""
    with transaction() as session:
        job = Job(kind=kind, label=label[:200], user_id=actor.id if actor else None, total=total)
        session.add(job)
        session.flush()
        job_id = job.id
    future = _executor.submit(_run, job_id, total, work)
    with _lock:
        _futures[job_id] = future
    future.add_done_callback(lambda _f: _forget(job_id))
    return job_id


def _forget(job_id: int) -> None:
    with _lock:
        _futures.pop(job_id, None)
        _running.pop(job_id, None)


def live(job_id: int) -> Progress | None:
    """The counts of a job this process is running right now, fresher than its row."""
    with _lock:
        return _running.get(job_id)


def _run(job_id: int, total: int, work: Work) -> None:
    progress = Progress(job_id, total, write=get_engine().dialect.name != "sqlite")
    with _lock:
        _running[job_id] = progress
    try:
        outcome = work(progress)
    except Exception as exc:
        # The job page shows what went wrong; the log has the traceback.
        log.exception("job %s failed", job_id)
        _finish(job_id, progress, JobStatus.failed, error=f"{type(exc).__name__}: {exc}"[:MAX_ERROR_LENGTH])
        return
    _finish(job_id, progress, JobStatus.done, outcome=outcome)


def _finish(
    job_id: int,
    progress: Progress,
    status: JobStatus,
    *,
    outcome: Outcome | None = None,
    error: str | None = None,
) -> None:
    now = clock.now()
    with transaction() as session:
        job = session.get(Job, job_id)
        if job is None:  # removed meanwhile: nothing to report to
            return
        job.status = status
        job.done = progress.done if status is JobStatus.failed else max(progress.done, job.total)
        job.total = max(job.total, job.done)
        job.result = outcome.result if outcome else None
        job.output = outcome.output if outcome else None
        job.error = error
        job.heartbeat_at = job.finished_at = now


def wait(job_id: int, timeout: float) -> None:
    """Block until the job (started by this process) has finished; for tests and the CLI."""
    with _lock:
        future = _futures.get(job_id)
    if future is not None:
        future.result(timeout=timeout)


def state(job: Job) -> str:
    """running, done, failed, or stopped (running, but its process stopped moving it)."""
    if job.status == JobStatus.running and clock.now() - job.heartbeat_at > timedelta(seconds=STALE_SECONDS):
        return "stopped"
    return job.status


def percent(job: Job, done: int | None = None, total: int | None = None) -> int:
    """How far the job is, in whole percent; ``done``/``total`` override the row's (fresher live counts)."""
    if job.status == JobStatus.done:
        return 100
    done, total = (job.done if done is None else done), (job.total if total is None else total)
    return min(100, int(100 * done / total)) if total else 0
