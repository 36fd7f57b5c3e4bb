"""The whole engine in real processes: Celery workers and beat, on PostgreSQL + Redis or embedded defaults."""

from __future__ import annotations

import mailbox
import urllib.request
from email import message_from_bytes

import pytest
from sqlalchemy import func, select

from nurture.core.db import transaction
from nurture.models import Delivery
from tests.support.helpers import statuses, subscribe, sync_sequences
from tests.support.processes import SmtpServer, free_port, wait_until

pytestmark = pytest.mark.slow

SUBJECTS = [
    "Demo 1 of 3: your first nurture email",
    "Demo 2 of 3: the schedule lives in the database",
    "Demo 3 of 3: that is the whole sequence",
]


def _service_env(pg_url: str, redis_url: str, smtp_url: str, **extra: str) -> dict[str, str]:
    return {
        "NURTURE_DATABASE_URL": pg_url,
        "NURTURE_BROKER_URL": redis_url,
        "NURTURE_SMTP_URL": smtp_url,
        "NURTURE_DISPATCH_INTERVAL": "0.5",
        **extra,
    }


def test_postgres_redis_worker_and_beat_deliver_three_steps_in_order_once(
    pg_factory, redis_url, three_step, processes, set_env, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    sync_sequences(pg_factory)
    with SmtpServer() as smtp:
        set_env(smtp_url=smtp.url)
        env = _service_env(
            str(pg_factory.kw["bind"].url.render_as_string(hide_password=False)), redis_url, smtp.url
        )
        processes.start("worker", ["worker", "--concurrency", "2"], env)
        processes.start("beat", ["beat"], env)
        subscribe(pg_factory, "ana@example.com", "three-step", first_name="Ana")
        try:
            wait_until(lambda: len(smtp.received) >= 3, 90, "three emails")
            wait_until(lambda: statuses(pg_factory) == ["sent"] * 3, 30, "three deliveries recorded as sent")
        except AssertionError:
            print(processes.logs())
            raise
    assert [r.message["Subject"] for r in smtp.received] == SUBJECTS
    assert len({r.message["Message-ID"] for r in smtp.received}) == 3
    message = smtp.received[0].message
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert [p.get_content_type() for p in message.get_payload()] == ["text/plain", "text/html"]


def test_two_dispatchers_and_two_workers_send_500_each_exactly_once(
    pg_factory, redis_url, one_step, processes, set_env, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    sync_sequences(pg_factory)
    for n in range(500):
        subscribe(pg_factory, f"reader{n}@example.com", "one-step")
    url = pg_factory.kw["bind"].url.render_as_string(hide_password=False)
    with SmtpServer() as smtp:
        # Small claims and batches make many ticks, so the dispatchers and workers really interleave.
        env = _service_env(url, redis_url, smtp.url, NURTURE_CLAIM_LIMIT="40", NURTURE_BATCH_SIZE="8")
        for n in (1, 2):
            processes.start(f"worker{n}", ["worker", "--concurrency", "1"], env)
            processes.start(f"beat{n}", ["beat"], {**env, "NURTURE_VAR_DIR": str(tmp_path / f"beat{n}")})
        try:
            wait_until(lambda: len(smtp.received) >= 500, 240, "500 emails")
            wait_until(
                lambda: statuses(pg_factory).count("sent") == 500, 30, "500 deliveries recorded as sent"
            )
        except AssertionError:
            print(processes.logs())
            raise
    ids = smtp.handler.message_ids()
    assert len(ids) == 500 == len(set(ids))
    assert sorted(r.rcpt_tos[0] for r in smtp.received) == sorted(
        f"reader{n}@example.com" for n in range(500)
    )
    with transaction(pg_factory) as session:
        assert session.scalar(select(func.count()).where(Delivery.attempts != 1)) == 0


def test_embedded_defaults_run_serves_health_and_delivers_to_the_maildir(
    three_step, processes, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    var = tmp_path / "var"
    # Nothing but the embedded defaults: SQLite, the filesystem broker and the Maildir, all under var/.
    env = {
        "NURTURE_SMTP_URL": "",
        "NURTURE_DATABASE_URL": "",
        "NURTURE_BROKER_URL": "",
        "NURTURE_VAR_DIR": str(var),
    }
    env["NURTURE_DISPATCH_INTERVAL"] = "0.5"
    run = processes.start("run", ["run", "--port", str(port)], env)

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
                return answer.status == 200
        except OSError:
            return False

    try:
        wait_until(healthy, 60, "the web app to answer /healthz")
        add = processes.start(
            "add", ["subscribers", "add", "dev@example.com", "--sequence", "three-step", "--name", "Dev"], env
        )
        assert add.wait(timeout=60) == 0
        inbox = var / "mail"
        wait_until(
            lambda: (inbox / "new").is_dir() and len(list((inbox / "new").iterdir())) >= 3, 90, "3 emails"
        )
    except AssertionError:
        print(processes.logs())
        raise
    assert run.poll() is None
    messages = [message_from_bytes(m.as_bytes()) for m in mailbox.Maildir(str(inbox)).values()]
    assert sorted(m["Subject"] for m in messages) == sorted(SUBJECTS)
    assert all(m["Delivered-To"] == "dev@example.com" for m in messages)
