"""Test helpers that talk to real things: an SMTP server on loopback, nurture processes, polling."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll until ``predicate`` returns something truthy; the timeout is a hang guard, not a timing check."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    at: float = field(default_factory=time.time)  # when the server accepted it (epoch seconds)

    @property
    def message(self) -> Message:
        return message_from_bytes(self.data)


@dataclass
class SmtpScript:
    """What the server answers: codes to return at RCPT or end-of-DATA, consumed in order, then 250."""

    data_replies: list[str] = field(default_factory=list)
    rcpt_replies: dict[str, str] = field(default_factory=dict)  # address -> reply for every RCPT to it
    drop_after_data: int = 0  # close the connection (no reply) after this many DATA phases
    pipelining: bool = False  # advertise PIPELINING (RFC 2920), so clients send MAIL, RCPT, DATA at once


class RecordingHandler:
    def __init__(self, script: SmtpScript) -> None:
        self.script = script
        self.received: list[Received] = []
        self.data_attempts = 0
        self.lock = threading.Lock()

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.script.pipelining:
            responses = [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        reply = self.script.rcpt_replies.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.data_attempts += 1
            if self.script.drop_after_data > 0:
                self.script.drop_after_data -= 1
                # The message arrived whole, but the client never hears the reply: the ambiguous case.
                self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
                server.transport.abort()
                return "250 OK"
            if self.script.data_replies:
                return self.script.data_replies.pop(0)
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"

    def message_ids(self) -> list[str]:
        with self.lock:
            return [r.message["Message-ID"] for r in self.received]


class SmtpServer:
    """aiosmtpd on 127.0.0.1 with a free port; records every accepted message."""

    def __init__(self, script: SmtpScript | None = None, port: int | None = None) -> None:
        self.handler = RecordingHandler(script or SmtpScript())
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=port or free_port())

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()

    @property
    def port(self) -> int:
        return self.controller.port

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    @property
    def received(self) -> list[Received]:
        return self.handler.received


def _die_with_parent() -> None:
    """Linux: SIGKILL this child when the test process dies, even if pytest is killed without teardown;
    orphaned workers would otherwise consume a later test run's queue."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class Processes:
    """nurture processes started for a test; logs go to files (printed on failure); all stopped at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        cwd: Path | None = None,
        prefix: list[str] | None = None,
    ) -> subprocess.Popen[bytes]:
        log_path = self.log_dir / f"{name}.log"
        log_file = log_path.open("wb")
        full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        child = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "nurture.cli", *args],
            env=full_env,
            cwd=cwd or ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.children.append((name, child, log_path))
        return child

    def logs(self) -> str:
        return "\n".join(
            f"----- {name} -----\n{path.read_text(errors='replace')[-4000:]}"
            for name, _, path in self.children
        )

    def stop_all(self) -> None:
        for _, child, _ in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)  # the main process only: it shuts its pool down warmly
        for _, child, _ in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=20)
            # Then whatever is left in its session: pool children, or the real process behind a wrapper such
            # as faketime, which does not pass SIGTERM on.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
