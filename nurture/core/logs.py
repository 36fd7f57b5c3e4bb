"""Logging for every nurture process: readable lines in development, one JSON object per line in production.

``NURTURE_LOG_FORMAT`` chooses (``auto``: JSON when ``NURTURE_ENV=production``, text otherwise) and
``NURTURE_LOG_LEVEL`` sets the level. Each HTTP request gets an id (the caller's ``X-Request-ID`` when it
looks sane, else a new one), echoed in the response and attached to every line logged while serving it,
uvicorn's access line included. Lines logged inside a Celery task carry the task's name and id. The token in
a link path (``/confirm/``, ``/unsubscribe/``, ``/preferences/``, ``/l/``, ``/o/``) is as good as the link
itself, so every line shows ``/unsubscribe/[token]`` instead (:class:`RedactTokensFilter`).

The web command hands :func:`logging_config` to uvicorn, which applies it in every worker process it starts;
Celery workers and beat apply it from the ``setup_logging`` signal (nurture/celery_app.py).
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
import sys
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, MutableMapping

    from nurture.core.config import Settings

    Scope = MutableMapping[str, Any]
    Message = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[Message]]
    Send = Callable[[Message], Awaitable[None]]
    ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REQUEST_ID: ContextVar[str | None] = ContextVar("nurture_request_id", default=None)
REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+/=@-]{1,128}")
DISPATCH_TASK = "nurture.dispatch_due"  # the same name as nurture.celery_app.DISPATCH_TASK
# A public route whose next path segment is a secret token; a token never holds "/", "?", "#" or spaces.
# The first-admin setup link (/admin/setup/<token>) is a secret too (nurture.staff.first_admin).
_TOKEN_PATH = re.compile(r"(/(?:confirm|unsubscribe|preferences|l|o|admin/setup)/)[^/?#\s\"']+")
REDACTED_TOKEN = "[token]"

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and goes into the JSON.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "request_id",
    "task_id",
    "task_name",
    "color_message",  # uvicorn's copy of the message with terminal colours
}


def new_request_id() -> str:
    return uuid.uuid4().hex


def sane_request_id(value: str | None) -> str | None:
    """``value`` when it is safe to log and echo (short, no spaces or control characters), else None."""
    return value if value and _SANE_REQUEST_ID.fullmatch(value) else None


def redact_tokens(text: str) -> str:
    """``text`` with the token of every link path in it replaced: ``/unsubscribe/[token]?from=mail``."""
    return _TOKEN_PATH.sub(rf"\1{REDACTED_TOKEN}", text)


class RedactTokensFilter(logging.Filter):
    """Takes link tokens out of every line the handler writes: uvicorn's access line quotes the path, and
    so might any message. Whoever reads the logs (a log service, a support engineer) could otherwise
    unsubscribe, confirm or read the preferences of anyone whose link was requested."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: the formatter reports it, as it would without this filter
            return True
        redacted = redact_tokens(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class ContextFilter(logging.Filter):
    """Adds the request id (web) and the current task (Celery) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        record.task_id = record.task_name = None
        if "celery" in sys.modules:
            from celery import current_task

            request = getattr(current_task, "request", None)  # the proxy is empty outside a task
            if request is not None and getattr(request, "id", None):
                record.task_id, record.task_name = request.id, current_task.name
        return True


class QuietTicksFilter(logging.Filter):
    """Drops Celery's INFO lines about periodic ticks (received, succeeded, beat's "sending due task").

    The dispatch tick runs every few seconds and Celery says so three times each time; nurture logs a line
    itself when a tick claims or reaps anything. Warnings and errors about ticks still pass, and so do the
    lines about every other task.
    """

    def __init__(self, tasks: list[str] | tuple[str, ...] = (DISPATCH_TASK,)) -> None:
        super().__init__()
        self.tasks = tuple(tasks)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING or not record.name.startswith("celery"):
            return True
        message = record.getMessage()
        return not any(task in message for task in self.tasks)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, role, pid, request/task ids, extras."""

    def __init__(self, role: str = "nurture") -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "role": self.role,
            "pid": record.process,
        }
        for key in ("request_id", "task_id", "task_name"):
            value = getattr(record, key, None)
            if value:
                entry[key] = value
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``12:00:01.234 INFO  nurture.tasks: message [req=...]`` for a terminal."""

    def __init__(self, role: str = "nurture") -> None:
        super().__init__("%(asctime)s.%(msecs)03d %(levelname)-5s %(name)s: %(message)s", "%H:%M:%S")
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        tags = []
        if getattr(record, "request_id", None):
            tags.append(f"req={record.request_id}")
        if getattr(record, "task_id", None):
            tags.append(f"task={record.task_name}[{str(record.task_id)[:8]}]")
        if not tags:
            return line
        head, sep, rest = line.partition("\n")  # keep tags on the message line, before any traceback
        return f"{head} [{' '.join(tags)}]{sep}{rest}"


def logging_config(settings: Settings, role: str, quiet_tasks: Iterable[str] = ()) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dictionary (also what uvicorn's ``log_config`` takes).

    ``quiet_tasks``: periodic tasks whose routine Celery INFO lines are dropped (the dispatch tick always).
    """
    formatter = "nurture.core.logs.JsonFormatter" if settings.json_logs else "nurture.core.logs.TextFormatter"
    level = settings.log_level
    passthrough = {"handlers": [], "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "context": {"()": "nurture.core.logs.ContextFilter"},
            "quiet_ticks": {
                "()": "nurture.core.logs.QuietTicksFilter",
                "tasks": sorted({DISPATCH_TASK, *quiet_tasks}),
            },
            "redact_tokens": {"()": "nurture.core.logs.RedactTokensFilter"},
        },
        "formatters": {"nurture": {"()": formatter, "role": role}},
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "nurture",
                "filters": ["context", "quiet_ticks", "redact_tokens"],
            }
        },
        "root": {"level": level, "handlers": ["console"]},
        "loggers": {
            # uvicorn's own loggers pass through ours, so its access lines get the same format and request id.
            "uvicorn": {"level": level, **passthrough},
            "uvicorn.error": {"level": level, **passthrough},
            "uvicorn.access": {"level": level, **passthrough},
            # Per-message chatter from the mail and broker libraries.
            "dkimpy": {"level": "WARNING", **passthrough},
            "kombu": {"level": "WARNING", **passthrough},
            "amqp": {"level": "WARNING", **passthrough},
            "alembic": {"level": "WARNING", **passthrough},  # /readyz compares revisions on every probe
        },
    }


def configure_logging(settings: Settings, role: str, quiet_tasks: Iterable[str] = ()) -> None:
    logging.config.dictConfig(logging_config(settings, role, quiet_tasks))


class RequestIdMiddleware:
    """Pure ASGI (so the id is in context for uvicorn's access line too): accept a sane ``X-Request-ID`` or
    make one, expose it as ``request.state.request_id``, and echo it in the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = sane_request_id(incoming) or new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        token = REQUEST_ID.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode("ascii")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)
