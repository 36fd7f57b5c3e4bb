"""Log formats, the quieting of periodic-tick chatter, and request ids on HTTP requests."""

from __future__ import annotations

import json
import logging
import re

from fastapi.testclient import TestClient

from nurture.core.logs import (
    DISPATCH_TASK,
    REQUEST_ID,
    ContextFilter,
    JsonFormatter,
    QuietTicksFilter,
    TextFormatter,
)
from nurture.web.app import create_app


def _record(name: str, level: int, message: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord(
        {
            "name": name,
            "levelno": level,
            "levelname": logging.getLevelName(level),
            "msg": message,
            "args": args,
        }
    )
    record.__dict__.update(extra)
    return record


def test_json_lines_carry_the_message_context_extras_and_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = _record("nurture.tasks", logging.ERROR, "sent %d of %d", 3, 4, delivery_id=17)
        record.exc_info = sys.exc_info()
    token = REQUEST_ID.set("req-123")
    try:
        ContextFilter().filter(record)
    finally:
        REQUEST_ID.reset(token)
    entry = json.loads(JsonFormatter(role="worker").format(record))
    assert (
        entry["message"] == "sent 3 of 4" and entry["level"] == "ERROR" and entry["logger"] == "nurture.tasks"
    )
    assert entry["role"] == "worker" and entry["request_id"] == "req-123" and entry["delivery_id"] == 17
    assert "ValueError: boom" in entry["exc_info"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", entry["time"])


def test_text_lines_are_readable_and_tagged_with_the_request() -> None:
    record = _record("nurture.web", logging.INFO, "hello")
    record.request_id, record.task_id = "req-9", None
    line = TextFormatter().format(record)
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} INFO  nurture\.web: hello \[req=req-9\]", line)


def test_only_routine_tick_lines_are_dropped() -> None:
    from nurture import celery_app

    assert DISPATCH_TASK == celery_app.DISPATCH_TASK  # always quieted, even before beat's schedule is known
    quiet = QuietTicksFilter([DISPATCH_TASK, "nurture.drain_outbox"])
    tick = f"Task {DISPATCH_TASK}[6c1f] succeeded in 0.01s: {{'claimed': 0}}"
    assert not quiet.filter(_record("celery.app.trace", logging.INFO, tick))
    assert not quiet.filter(
        _record("celery.worker.strategy", logging.INFO, "Task %s[1] received", DISPATCH_TASK)
    )
    beat_line = _record(
        "celery.beat", logging.INFO, "Scheduler: Sending due task dispatch-due (%s)", DISPATCH_TASK
    )
    assert not quiet.filter(beat_line)
    assert quiet.filter(_record("celery.app.trace", logging.ERROR, tick))  # failures still show
    assert quiet.filter(
        _record("celery.app.trace", logging.INFO, "Task nurture.send_deliveries[2] succeeded")
    )
    assert quiet.filter(_record("nurture.tasks", logging.INFO, f"{DISPATCH_TASK}: claimed 5"))


def test_each_request_gets_an_id_echoed_in_the_response(sqlite_url, set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(database_url=sqlite_url)
    client = TestClient(create_app())
    assert (
        client.get("/healthz", headers={"X-Request-ID": "lb-7f3a.42"}).headers["x-request-id"] == "lb-7f3a.42"
    )
    for unusable in ("has spaces in it", "x" * 200, "tab\there"):
        made = client.get("/healthz", headers={"X-Request-ID": unusable}).headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", made)
    first, second = (client.get("/healthz").headers["x-request-id"] for _ in range(2))
    assert first != second
    assert client.get("/unsubscribe/not-a-token").headers["x-request-id"]  # on every route, errors too
