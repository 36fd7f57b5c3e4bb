"""Scenarios 7, 8, 9 and 13: what the SMTP server answers, and a delivery that cannot be rendered."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from nurture.core.db import transaction
from nurture.models import Delivery, Subscriber, Suppression
from tests.scenarios.faults.conftest import Cluster, duplicates, seed
from tests.support.helpers import sync_sequences
from tests.support.processes import ROOT, SmtpScript, SmtpServer, wait_until

# Real processes on a 2-core machine: generous hang guards; the assertions are on outcomes, not time.
pytestmark = pytest.mark.timeout(900)


def test_421_and_451_three_times_then_250_delivers_once_with_growing_backoff(cluster: Cluster) -> None:
    seed(cluster.factory, 1, "one-step")
    script = SmtpScript(data_replies=["421 4.4.2 closing soon", "451 4.3.0 try later", "451 4.3.0 try later"])
    with SmtpServer(script) as smtp:
        cluster.beat(NURTURE_SMTP_URL=smtp.url)
        cluster.worker(NURTURE_SMTP_URL=smtp.url)
        wait_until(lambda: cluster.statuses().get("sent", 0) == 1, 120, "the delivery to be sent")
    assert len(smtp.received) == 1 and smtp.handler.data_attempts == 4
    with transaction(cluster.factory) as session:
        delivery = session.scalar(select(Delivery))
        assert delivery.attempts == 4
    retries = sorted(cluster.events("retry"), key=lambda e: e.id)
    assert len(retries) == 3
    waits = [(datetime.fromisoformat(e.detail["retry_at"]) - e.created_at).total_seconds() for e in retries]
    assert waits == sorted(waits) and waits[-1] > waits[0], f"backoff did not grow: {waits}"


def test_550_for_one_recipient_in_a_batch_fails_only_that_one(cluster: Cluster) -> None:
    seed(cluster.factory, 30, "one-step")
    script = SmtpScript(rcpt_replies={"reader7@example.com": "550 5.1.1 no such mailbox"})
    with SmtpServer(script) as smtp:
        cluster.beat(NURTURE_SMTP_URL=smtp.url)
        cluster.worker(NURTURE_SMTP_URL=smtp.url)
        wait_until(lambda: cluster.statuses() == {"sent": 29, "failed": 1}, 120, "29 sent and 1 failed")
    assert duplicates(smtp) == {} and len(smtp.received) == 29
    assert "reader7@example.com" not in {r.rcpt_tos[0] for r in smtp.received}
    with transaction(cluster.factory) as session:
        assert session.scalar(select(Suppression.email)) == "reader7@example.com"


def test_connection_dropped_after_data_is_resent_once_with_its_message_id(cluster: Cluster) -> None:
    seed(cluster.factory, 10, "one-step")
    with SmtpServer(SmtpScript(drop_after_data=1)) as smtp:
        cluster.beat(NURTURE_SMTP_URL=smtp.url)
        cluster.worker(NURTURE_SMTP_URL=smtp.url)
        wait_until(lambda: cluster.statuses() == {"sent": 10}, 120, "all 10 sent")
        assert smtp.handler.data_attempts == 11  # the dropped one, and its one resend
    unknown = cluster.events("ambiguous")
    assert len(unknown) == 1 and unknown[0].detail["resolution"] == "resent"
    # The server had kept the dropped one: it arrived twice, both copies with the one Message-ID.
    assert list(duplicates(smtp).values()) == [2] and len(set(smtp.handler.message_ids())) == 10


def test_a_poison_delivery_fails_alone_with_its_error(
    cluster: Cluster, tmp_path: Path, set_env, sequences_dir
) -> None:  # type: ignore[no-untyped-def]
    templates = tmp_path / "templates" / "email"
    for folder in ("_base", "demo"):
        shutil.copytree(ROOT / "templates" / "email" / folder, templates / folder)
    shutil.copytree(ROOT / "templates" / "email" / "demo" / "hello", templates / "poison" / "hello")
    body = templates / "poison" / "hello" / "body.txt"
    # Renders for everyone but one subscriber: a template bug that only some data triggers.
    poison = "{% block content %}{{ 1 // (first_name != 'Poison') }}"
    body.write_text(body.read_text().replace("{% block content %}", poison))
    (sequences_dir / "poison.yaml").write_text(
        "slug: poison\nname: Poison\nsteps:\n  - {key: hello, delay: 0, template: poison/hello}\n"
    )
    set_env(templates_dir=str(templates.parent))  # the worker processes inherit it
    sync_sequences(cluster.factory)
    seed(cluster.factory, 20, "poison")
    with transaction(cluster.factory) as session:
        session.scalar(
            select(Subscriber).where(Subscriber.email == "reader3@example.com")
        ).first_name = "Poison"
    with SmtpServer() as smtp:
        cluster.beat(NURTURE_SMTP_URL=smtp.url)
        cluster.worker(NURTURE_SMTP_URL=smtp.url)
        wait_until(
            lambda: cluster.statuses() == {"sent": 19, "failed": 1}, 120, "19 sent and the poison failed"
        )
    with transaction(cluster.factory) as session:
        failed = session.scalar(select(Delivery).where(Delivery.status == "failed"))
        assert failed.subscriber.email == "reader3@example.com"
        assert "render failed" in failed.last_error and "by zero" in failed.last_error
    assert len(smtp.received) == 19
