"""Real nurture processes: SIGTERM shutdown of worker, beat and web, their logs, and worker-side metrics
collected across processes."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import urllib.request
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.support.helpers import statuses, subscribe, sync_sequences
from tests.support.processes import Processes, RecordingHandler, SmtpScript, free_port, wait_until

pytestmark = pytest.mark.slow

EXIT_BOUND = 60  # seconds a stopping process may take before the test calls it hung


class HoldingHandler(RecordingHandler):
    """Keeps each message's DATA phase open until the test releases it: a send caught in the middle."""

    def __init__(self) -> None:
        super().__init__(SmtpScript())
        self.entered = threading.Event()
        self.release = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.entered.set()
        while not self.release.is_set():
            await asyncio.sleep(0.02)
        return await super().handle_DATA(server, session, envelope)


def _url(factory) -> str:  # type: ignore[no-untyped-def]
    return factory.kw["bind"].url.render_as_string(hide_password=False)


def _log(processes: Processes, name: str) -> str:
    return (processes.log_dir / f"{name}.log").read_text(errors="replace")


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_sigterm_lets_a_worker_finish_the_email_it_is_sending_then_exit_cleanly(
    pg_factory, redis_url, one_step, processes, tmp_path, set_env, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    sync_sequences(pg_factory)
    subscribe(pg_factory, "ana@example.org", "one-step")
    handler = HoldingHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    metrics_dir = tmp_path / "metrics"
    env = {
        "NURTURE_DATABASE_URL": _url(pg_factory),
        "NURTURE_BROKER_URL": redis_url,
        "NURTURE_SMTP_URL": f"smtp://127.0.0.1:{controller.port}",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    try:
        worker = processes.start("worker", ["worker", "--concurrency", "1"], env)
        assert processes.start("dispatch", ["dispatch", "--once"], env).wait(timeout=EXIT_BOUND) == 0
        wait_until(handler.entered.is_set, 60, "the worker to be in the middle of sending")

        worker.send_signal(signal.SIGTERM)  # what `docker stop` sends to the container's main process
        wait_until(
            lambda: "Warm shutdown" in _log(processes, "worker"), 30, "the worker to begin shutting down"
        )
        assert worker.poll() is None  # still running: it waits for the message in hand
        handler.release.set()
        assert worker.wait(timeout=EXIT_BOUND) == 0
    finally:
        handler.release.set()
        controller.stop()
    assert len(handler.received) == 1
    assert statuses(pg_factory) == ["sent"]  # finished *and recorded*: nothing left for the reaper to guess

    # The worker process is gone, and its send latency is still visible to the web process through the
    # shared multiprocess folder; the outcome counts come from the database.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    set_env(database_url=_url(pg_factory))
    from nurture.web.app import create_app

    text = TestClient(create_app()).get("/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("nurture_send_seconds_count", (("outcome", "sent"),))] == 1
    assert samples[("nurture_deliveries_total", (("outcome", "sent"),))] == 1


def test_worker_and_beat_log_json_without_tick_chatter_and_stop_on_sigterm(
    three_step, processes, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    env = {  # embedded defaults: SQLite and the broker folder under var/, mail to the Maildir
        "NURTURE_DATABASE_URL": "",
        "NURTURE_BROKER_URL": "",
        "NURTURE_SMTP_URL": "",
        "NURTURE_VAR_DIR": str(tmp_path / "var"),
        "NURTURE_DISPATCH_INTERVAL": "0.3",
        "NURTURE_LOG_FORMAT": "json",
    }
    assert processes.start("migrate", ["db", "upgrade"], env).wait(timeout=EXIT_BOUND) == 0
    assert processes.start("sync", ["sequences", "sync"], env).wait(timeout=EXIT_BOUND) == 0
    worker = processes.start("worker", ["worker", "--concurrency", "1"], env)
    beat = processes.start("beat", ["beat"], env)
    add = processes.start("add", ["subscribers", "add", "ana@example.org", "--sequence", "three-step"], env)
    assert add.wait(timeout=EXIT_BOUND) == 0
    inbox = tmp_path / "var" / "mail" / "new"
    wait_until(lambda: inbox.is_dir() and len(list(inbox.iterdir())) == 3, 90, "three emails in the Maildir")

    for child in (beat, worker):
        child.send_signal(signal.SIGTERM)
    assert beat.wait(timeout=EXIT_BOUND) == 0
    assert worker.wait(timeout=EXIT_BOUND) == 0

    worker_lines = _json_lines(_log(processes, "worker"))
    beat_lines = _json_lines(_log(processes, "beat"))
    assert worker_lines and all(line["role"] == "worker" for line in worker_lines)
    assert beat_lines and all(line["role"] == "beat" for line in beat_lines)
    sent = [
        line for line in worker_lines if line["logger"] == "nurture.tasks" and "sent batch" in line["message"]
    ]
    assert sent and all(line["task_name"] == "nurture.send_deliveries" and line["task_id"] for line in sent)
    # Dispatch ticks ran (their own "claimed" lines are there), yet Celery's per-tick lines are not: no
    # "received", "succeeded" or beat "sending due task" lines for the tick.
    assert any(line.get("task_name") == "nurture.dispatch_due" for line in worker_lines)
    chatter = [
        line["message"]
        for line in worker_lines + beat_lines
        if line["logger"].startswith("celery") and "nurture.dispatch_due" in line["message"]
    ]
    assert chatter == []
    assert any(line["logger"] == "celery.app.trace" for line in worker_lines)  # other tasks' lines remain


def test_web_logs_request_ids_and_stops_cleanly_on_sigterm(sqlite_url, processes: Processes) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    env = {"NURTURE_DATABASE_URL": sqlite_url, "NURTURE_LOG_FORMAT": "json"}
    web = processes.start("web", ["web", "--port", str(port), "--workers", "2"], env)

    def get(path: str) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{path}", headers={"X-Request-ID": "probe-42"}
        )
        try:
            return urllib.request.urlopen(request, timeout=2)
        except OSError:
            return None

    answer = wait_until(lambda: get("/healthz"), 60, "the web app to answer")
    assert answer.status == 200 and answer.headers["X-Request-ID"] == "probe-42"
    access = wait_until(
        lambda: [
            line
            for line in _json_lines(_log(processes, "web"))
            if line["logger"] == "uvicorn.access" and "/healthz" in line["message"]
        ],
        30,
        "the access log line",
    )
    assert access[-1]["request_id"] == "probe-42" and access[-1]["role"] == "web"

    web.send_signal(signal.SIGTERM)
    assert web.wait(timeout=EXIT_BOUND) == 0
