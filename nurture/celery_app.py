"""The Celery application: Redis (or any kombu URL) in production, a broker folder on disk by default.

The embedded default is kombu's filesystem transport: web, worker and beat run as separate processes that
share a folder under ``var/``, so ``make run`` needs no server and behaves like the production topology.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from nurture.config import Settings, get_settings

DISPATCH_TASK = "nurture.dispatch_due"
SEND_TASK = "nurture.send_deliveries"


def broker_settings(settings: Settings) -> tuple[str, dict[str, Any]]:
    if not settings.embedded_broker:
        # Tasks are short; the schedule lives in the database, so a redelivery after the visibility timeout
        # only meets rows that are no longer claimed by its token and is dropped.
        return settings.broker_url, {"visibility_timeout": 3600}
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
    return "filesystem://", options


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    broker_url, transport_options = broker_settings(settings)
    app = Celery("nurture", broker=broker_url, include=["nurture.tasks"])
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
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
                "schedule": settings.dispatch_interval,
                # A tick that waited longer than two intervals is stale: the next one does the same work.
                "options": {"expires": max(settings.dispatch_interval * 2, 2.0)},
            }
        },
        beat_schedule_filename=str(Path(settings.var_dir).resolve() / "celerybeat-schedule"),
        beat_max_loop_interval=max(1.0, min(settings.dispatch_interval, 5.0)),
    )
    if settings.embedded_broker:
        # The filesystem transport has no fast broadcast; remote control and events only add polling.
        app.conf.update(worker_enable_remote_control=False, worker_send_task_events=False)
    return app


app = create_app()


@worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    # Database connections must not be shared with the parent process across fork().
    from nurture.db import dispose_engines

    dispose_engines(close=False)
