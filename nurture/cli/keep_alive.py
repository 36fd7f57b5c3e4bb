"""Keep a child process running: start it again when it dies unasked, pass stop signals on to it.

``nurture worker`` runs the Celery worker under this. Celery reconnects to a broker that went away, but
not always: with Redis killed while a task is in flight, celery 5.7 / kombu 5.7 can fail while closing the
dead connection (``AttributeError: 'NoneType' object has no attribute 'hostname'`` from kombu's
``_connparams``) and the worker exits with "Unrecoverable error". Nothing is lost when a worker dies (the
database holds every delivery; leases expire and the reaper returns them), but nothing is sent either until
something starts it again. An orchestrator would (docker-compose's ``restart: unless-stopped``); a plain
``nurture worker`` in a terminal or under ``nurture run`` would not, so the command restarts its own worker.

Written here rather than taken from supervisord or circus: it is one child, three signals and a back-off,
and a whole process manager would be a second way to run the service.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from types import FrameType

logger = logging.getLogger(__name__)

# The signals an operator or orchestrator stops a Celery worker with: warm (TERM, INT) or cold (QUIT).
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
FIRST_DELAY = 1.0
MOST_DELAY = 60.0
# A child that ran this long before dying was healthy: the next restart waits the first delay again.
HEALTHY_SECONDS = 60.0
STEP = 0.1
_PR_SET_PDEATHSIG = 1


def _die_with_this_process() -> None:
    """In the child before exec: if the keeper is killed outright (SIGKILL), the child gets SIGTERM instead
    of running on unwatched. Linux only; elsewhere the child outlives a killed keeper, as any child would."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def pause_after(previous: float | None, ran: float) -> float:
    """How long to wait before the next start: short after a healthy run, doubling while it keeps dying."""
    if previous is None or ran >= HEALTHY_SECONDS:
        return FIRST_DELAY
    return min(previous * 2, MOST_DELAY)


def keep_alive(
    command: list[str],
    env: dict[str, str],
    *,
    name: str,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Run ``command`` until it exits after a stop signal (or exits 0 on its own); return its exit code.
    Any other exit, including a signal that killed it, starts it again after a growing pause."""
    stop_signal: int | None = None
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stop_signal
        stop_signal = signum
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    pause: float | None = None
    try:
        while True:
            started = clock()
            child = subprocess.Popen(command, env=env, preexec_fn=_die_with_this_process)
            if stop_signal is not None:  # it came before ``child`` named the new process: pass it on now
                child.send_signal(stop_signal)
            code = child.wait()
            if stop_signal is not None or code == 0:
                return code
            ran = clock() - started
            pause = pause_after(pause, ran)
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            logger.error("%s died (%s) after %.0f s; starting it again in %.0f s", name, how, ran, pause)
            resume = clock() + pause
            while stop_signal is None and (left := resume - clock()) > 0:
                sleep(min(STEP, left))  # in steps: a stop signal during the pause ends it at once
            if stop_signal is not None:
                return code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
