"""``nurture worker`` keeps its Celery worker alive: a child that dies unasked is started again with a growing
pause, and a stop signal reaches the child and ends the keeper with the child's exit code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nurture.cli import keep_alive as keeper
from tests.support.processes import wait_until


class FakeTime:
    """The keeper's pauses and clock, without waiting: each pause step moves the clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept = 0.0

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += seconds

    def clock(self) -> float:
        return self.now


def _script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "child.py"
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


def test_a_child_that_dies_is_started_again_with_a_growing_pause(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    # Exits 3, is killed by SIGKILL, exits 3 again, then exits 0: four runs in all.
    command = _script(
        tmp_path,
        f"""
        import os, signal, sys
        from pathlib import Path
        runs = Path({str(runs)!r})
        n = len(runs.read_text()) if runs.exists() else 0
        runs.write_text("x" * (n + 1))
        if n == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        sys.exit(3 if n < 3 else 0)
        """,
    )
    fake = FakeTime()
    code = keeper.keep_alive(command, dict(os.environ), name="child", sleep=fake.sleep, clock=fake.clock)
    assert code == 0
    assert runs.read_text() == "xxxx"
    assert fake.slept == pytest.approx(1 + 2 + 4)  # FIRST_DELAY, then doubled after each quick death


def test_the_pause_doubles_while_the_child_keeps_dying_and_starts_small_after_a_healthy_run() -> None:
    quick = keeper.HEALTHY_SECONDS / 10
    pauses = [keeper.pause_after(None, quick)]
    for _ in range(8):
        pauses.append(keeper.pause_after(pauses[-1], quick))
    assert pauses == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert keeper.pause_after(60, keeper.HEALTHY_SECONDS) == keeper.FIRST_DELAY


def test_sigterm_reaches_the_child_and_the_keeper_exits_with_its_code(tmp_path: Path) -> None:
    ready, got = tmp_path / "ready", tmp_path / "got"
    child = _script(
        tmp_path,
        f"""
        import signal, sys, time
        from pathlib import Path
        def stop(signum, frame):
            Path({str(got)!r}).write_text(str(signum))
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        Path({str(ready)!r}).write_text("1")
        while True:
            time.sleep(0.05)
        """,
    )
    runner = (
        "import os, sys; from nurture.cli.keep_alive import keep_alive; "
        f"sys.exit(keep_alive({child!r}, dict(os.environ), name='child'))"
    )
    process = subprocess.Popen([sys.executable, "-c", runner])
    try:
        wait_until(ready.exists, 30, "the child to start")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert got.read_text() == str(int(signal.SIGTERM))


def test_nurture_worker_starts_its_celery_worker_again_when_it_is_killed(
    processes, sqlite_url: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    env = {"NURTURE_DATABASE_URL": sqlite_url, "NURTURE_VAR_DIR": str(tmp_path / "var")}
    keeper_process = processes.start("worker", ["worker", "--concurrency", "1"], env)
    log = tmp_path / "worker.log"

    def celery_child() -> int | None:
        found = subprocess.run(["pgrep", "-P", str(keeper_process.pid)], capture_output=True, text=True)
        pids = found.stdout.split()
        return int(pids[0]) if pids else None

    wait_until(lambda: log.read_text(errors="replace").count("ready.") == 1, 60, "the worker to be ready")
    first = celery_child()
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: log.read_text(errors="replace").count("ready.") == 2, 60, "a new worker to be ready")
    assert "celery worker died (signal 9)" in log.read_text(errors="replace")
    assert celery_child() not in (None, first)
    keeper_process.send_signal(signal.SIGTERM)
    assert keeper_process.wait(timeout=60) == 0


def test_a_celery_worker_that_fails_exits_1_and_is_started_again(
    processes, sqlite_url: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    # A pidfile in a folder that does not exist: Celery logs "Unrecoverable error" at start, every time.
    env = {"NURTURE_DATABASE_URL": sqlite_url, "NURTURE_VAR_DIR": str(tmp_path / "var")}
    pidfile = str(tmp_path / "missing" / "worker.pid")
    keeper_process = processes.start("worker", ["worker", "--concurrency", "1", "--pidfile", pidfile], env)
    log = tmp_path / "worker.log"
    wait_until(
        lambda: log.read_text(errors="replace").count("celery worker died (exit code 1)") >= 2,
        90,
        "the failing worker to be started again twice",
    )
    assert "Unrecoverable error" in log.read_text(errors="replace")
    keeper_process.send_signal(signal.SIGTERM)  # during a pause: nothing to wait for
    assert keeper_process.wait(timeout=30) == 1
