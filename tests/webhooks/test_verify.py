"""The verification snippet in docs/webhooks.md is the sample verifier and accepts real deliveries; the
``nurture webhooks`` commands work and refuse bad input with exit 1."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import select

from nurture.cli import main
from nurture.core.db import transaction
from nurture.models import AuditLog, WebhookDelivery
from nurture.subscribers.enrollment import add_subscriber

DOC = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"
VERIFY = Path(__file__).resolve().parents[2] / "nurture" / "webhooks" / "verify.py"


def doc_snippet() -> str:
    match = re.search(r"<!-- verify-snippet -->\n```python\n(.*?)```", DOC.read_text(), re.S)
    assert match, "docs/webhooks.md lost its verification snippet"
    return match.group(1)


def test_the_documented_snippet_is_the_sample_verifier() -> None:
    source = VERIFY.read_text()
    assert doc_snippet().split("import base64", 1)[1] == source.split("import base64", 1)[1]


def test_cli_add_list_pump_replay_disable(factory, receiver) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    added = runner.invoke(main, ["webhooks", "add", receiver.url, "--events", "subscribed,unsubscribed"])
    assert added.exit_code == 0, added.output
    secret = re.search(r"(whsec_\S+)", added.output).group(1)  # type: ignore[union-attr]
    with transaction(factory) as session:
        add_subscriber(session, "ana@example.com")
    pumped = runner.invoke(main, ["webhooks", "pump"])
    assert pumped.exit_code == 0 and "succeeded 1" in pumped.output, pumped.output

    namespace: dict[str, object] = {}
    exec(compile(doc_snippet(), "docs/webhooks.md", "exec"), namespace)  # the copy-paste recipe itself
    request = receiver.received[0]
    namespace["verify"](request.body, request.headers, secret)  # type: ignore[operator]
    stale = int(request.headers["webhook-timestamp"]) + 600
    try:
        namespace["verify"](request.body, request.headers, secret, now=stale)  # type: ignore[operator]
    except namespace["InvalidWebhook"]:  # type: ignore[misc]
        pass
    else:
        raise AssertionError("the documented recipe accepted a replayed old timestamp")

    listed = runner.invoke(main, ["webhooks", "list"])
    assert receiver.url in listed.output and "enabled" in listed.output and "0% failed" in listed.output
    with transaction(factory) as session:
        delivery_id = session.scalars(select(WebhookDelivery.id)).one()
    replayed = runner.invoke(main, ["webhooks", "replay", str(delivery_id)])
    assert replayed.exit_code == 0 and "200" in replayed.output, replayed.output
    assert len(receiver.received) == 2
    assert runner.invoke(main, ["webhooks", "test", "1"]).exit_code == 0
    assert runner.invoke(main, ["webhooks", "disable", "1"]).exit_code == 0
    assert "DISABLED" in runner.invoke(main, ["webhooks", "list"]).output
    assert runner.invoke(main, ["webhooks", "enable", "1"]).exit_code == 0
    rotated = runner.invoke(main, ["webhooks", "rotate-secret", "1"])
    assert rotated.exit_code == 0 and "whsec_" in rotated.output
    with transaction(factory) as session:
        actions = list(session.scalars(select(AuditLog.action).order_by(AuditLog.id)))
        actors = set(session.scalars(select(AuditLog.actor)))
    assert actions == [
        "webhook.create",
        "webhook.replay",
        "webhook.test",
        "webhook.disable",
        "webhook.enable",
        "webhook.rotate_secret",
    ]
    assert actors == {"cli"}


def test_cli_refuses_bad_input_with_exit_1(factory) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    for args, message in (
        (["add", "http://10.0.0.1/x", "--events", "subscribed"], "private address"),
        (["add", "http://127.0.0.1:9/x", "--events", "everything"], "unknown event type"),
        (["disable", "42"], "no such webhook endpoint"),
        (["replay", "42"], "no such delivery"),
        (["replay", "x"], "no such delivery"),
    ):
        result = runner.invoke(main, ["webhooks", *args])
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output
    with transaction(factory) as session:
        assert list(session.scalars(select(AuditLog))) == []


def test_dispatch_once_inline_also_sends_webhooks(factory, receiver) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    assert runner.invoke(main, ["webhooks", "add", receiver.url, "--events", "subscribed"]).exit_code == 0
    with transaction(factory) as session:
        add_subscriber(session, "ana@example.com")
    result = runner.invoke(main, ["dispatch", "--once", "--inline"])
    assert result.exit_code == 0, result.output
    assert "webhooks: succeeded 1" in result.output
    assert len(receiver.received) == 1
