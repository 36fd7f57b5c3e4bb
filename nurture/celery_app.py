"""The Celery application: Redis (or any kombu URL) in production, a broker folder on disk by default.

The embedded default is kombu's filesystem transport: web, worker and beat run as separate processes that
share a folder under ``var/``, so ``make run`` needs no server and behaves like the production topology.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import setup_logging, worker_process_init, worker_process_shutdown
from kombu import Exchange, Queue

from nurture.core.config import Settings, get_settings

DISPATCH_QUEUE = "nurture.dispatch"
SEND_QUEUE = "nurture.send"
DISPATCH_TASK = "nurture.dispatch_due"
HOUSEKEEPING_TASK = "nurture.housekeeping"
SEND_TASK = "nurture.send_deliveries"
# transactional email (signup confirmations), see nurture/delivery/confirmations.py
OUTBOX_TASK = "nurture.drain_outbox"
WEBHOOKS_TICK_TASK = "nurture.webhooks_tick"  # fan events out to webhook endpoints, claim due ones
WEBHOOKS_SEND_TASK = "nurture.send_webhooks"  # POST a claimed batch (nurture/webhooks/sending.py)


def broker_settings(settings: Settings) -> tuple[str, dict[str, Any]]:
    if not settings.embedded_broker:
        # Tasks are short; the schedule lives in the database, so a redelivery after the visibility timeout
        # only meets rows that are no longer claimed by its token and is dropped.
        return settings.broker.broker_url, {"visibility_timeout": settings.broker.broker_visibility_timeout}
    root = (settings.var_dir / "broker").resolve()
    queue = root / "queue"
    for folder in (queue, root / "control", root / "processed"):
        folder.mkdir(parents=True, exist_ok=True)
    options = {
        "data_folder_in": str(queue),
        "data_folder_out": str(queue),
        "control_folder": str(root / "control"),
        "processed_folder": str(root / "processed"),
        "store_processed": False,
        "polling_interval": 0.25,
    }
    # The folder transport ignores the host; naming one spares every start kombu's "No hostname" warning.
    return "filesystem://localhost/", options


def tick_expiry(settings: Settings) -> float:
    """Seconds after which a queued tick is dropped: one that waited longer than two intervals is stale, and
    the next one does the same work."""
    return max(settings.broker.dispatch_interval * 2, 2.0)


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    broker_url, transport_options = broker_settings(settings)
    app = Celery("nurture", broker=broker_url, include=["nurture.tasks"])
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        # Ticks and sends travel in separate queues, so a long send backlog never delays the dispatcher (and
        # its reaper) behind it; every worker consumes both.
        # Each queue on its own exchange and key: without them Celery binds both queues to the default
        # exchange and key, and every task would land in both.
        task_queues=tuple(
            Queue(name, Exchange(name), routing_key=name) for name in (SEND_QUEUE, DISPATCH_QUEUE)
        ),
        task_default_exchange=SEND_QUEUE,
        task_default_routing_key=SEND_QUEUE,
        task_default_queue=SEND_QUEUE,
        task_routes={
            DISPATCH_TASK: {"queue": DISPATCH_QUEUE, "routing_key": DISPATCH_QUEUE},
            # Confirmation emails ride with the ticks: someone waiting at a signup form must not queue
            # behind a campaign's send backlog (a tick sends at most a few of them).
            OUTBOX_TASK: {"queue": DISPATCH_QUEUE, "routing_key": DISPATCH_QUEUE},
            HOUSEKEEPING_TASK: {"queue": DISPATCH_QUEUE, "routing_key": DISPATCH_QUEUE},
            WEBHOOKS_TICK_TASK: {"queue": DISPATCH_QUEUE, "routing_key": DISPATCH_QUEUE},
        },
        result_backend=None,
        # A message is acknowledged after the task ran, one at a time, so a crashed worker loses no claim
        # silently; a redelivered task re-checks every row and cannot send twice.
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        worker_hijack_root_logger=False,
        beat_schedule={
            "dispatch-due": {
                "task": DISPATCH_TASK,
                "schedule": settings.broker.dispatch_interval,
                "options": {"expires": tick_expiry(settings)},
            },
            "housekeeping": {"task": HOUSEKEEPING_TASK, "schedule": 60.0, "options": {"expires": 120.0}},
            "drain-outbox": {
                "task": OUTBOX_TASK,
                "schedule": settings.broker.dispatch_interval,
                "options": {"expires": tick_expiry(settings)},
            },
            "webhooks": {
                "task": WEBHOOKS_TICK_TASK,
                "schedule": settings.broker.dispatch_interval,
                "options": {"expires": tick_expiry(settings)},
            },
        },
        beat_schedule_filename=str(Path(settings.var_dir).resolve() / "celerybeat-schedule"),
        beat_max_loop_interval=max(1.0, min(settings.broker.dispatch_interval, 5.0)),
    )
    if settings.embedded_broker:
        # The filesystem transport has no fast broadcast; remote control and events only add polling.
        app.conf.update(worker_enable_remote_control=False, worker_send_task_events=False)
    return app


app = create_app()


@worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    # Database connections must not be shared with the parent process across fork().
    from nurture.core.db import dispose_engines

    dispose_engines(close=False)


@setup_logging.connect
def _nurture_logging(**_: Any) -> None:
    # Connecting here keeps Celery from configuring logging its own way: worker and beat log like the web
    # app (JSON in production), and the periodic ticks' routine "received/succeeded" lines are dropped.
    import sys

    from nurture.core.logs import configure_logging

    role = "beat" if "beat" in sys.argv[1:] else "worker"
    ticks = {entry["task"] for entry in (app.conf.beat_schedule or {}).values()}
    configure_logging(get_settings(), role, quiet_tasks=ticks)


@worker_process_shutdown.connect
def _forget_live_gauges(pid: int | None = None, **_: Any) -> None:
    from nurture.delivery.metrics import process_exited

    process_exited(pid)
