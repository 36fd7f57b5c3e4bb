"""The staff side of webhooks: API and UI role matrix, JSON and form errors, audit, test and replay."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from nurture.core import clock
from nurture.core.config import get_settings
from nurture.core.db import transaction
from nurture.models import AuditLog, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from nurture.subscribers.enrollment import add_subscriber
from nurture.webhooks.sending import WebhookSender
from nurture.webhooks.verify import verify
from tests.support.staff import CSRF, csrf_of

BODY = {"url": "http://127.0.0.1:9/hooks", "event_types": ["subscribed"], "description": "CRM"}


def make_endpoint(api, url: str = BODY["url"]) -> dict:  # type: ignore[no-untyped-def, type-arg]
    response = api("admin", "POST", "/api/v1/webhooks", json={**BODY, "url": url})
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"  # it carries the secret
    return response.json()


def writes(endpoint_id: int, delivery_id: int) -> list[tuple[str, str, dict | None]]:  # type: ignore[type-arg]
    base = f"/api/v1/webhooks/{endpoint_id}"
    return [
        ("POST", "/api/v1/webhooks", BODY),
        ("PATCH", base, {"description": "changed"}),
        ("POST", f"{base}/rotate-secret", None),
        ("POST", f"{base}/test", None),
        ("POST", f"{base}/deliveries/{delivery_id}/replay", None),
        ("DELETE", base, None),
    ]


@pytest.mark.parametrize("role", ["viewer", "editor", "admin"])
def test_api_role_matrix(api, world, receiver, role) -> None:  # type: ignore[no-untyped-def]
    endpoint = make_endpoint(api, receiver.url)["endpoint"]
    endpoint_id = endpoint["id"]
    with transaction(world) as session:
        add_subscriber(session, "ana@example.com")
    sender = WebhookSender(get_settings(), world)
    try:
        sender.tick()
    finally:
        sender.close()
    with transaction(world) as session:
        delivery_id = session.scalars(select(WebhookDelivery.id)).one()
    for path in (
        "/api/v1/webhooks",
        f"/api/v1/webhooks/{endpoint_id}",
        f"/api/v1/webhooks/{endpoint_id}/deliveries",
    ):
        assert api(role, "GET", path).status_code == 200, path
    for method, path, body in writes(endpoint_id, delivery_id):
        response = api(role, method, path, json=body)
        if role == "admin":
            assert response.status_code in (200, 201), (path, response.text)
        else:
            assert response.status_code == 403, path
            assert response.json()["error"]["code"] == "forbidden"
    for method, path, body in writes(endpoint_id, delivery_id)[:1]:
        assert api(None, method, path, json=body).status_code == 401


def test_api_lifecycle_is_audited_and_shows_the_secret_only_when_made(api, world, receiver) -> None:  # type: ignore[no-untyped-def]
    created = make_endpoint(api, receiver.url)
    endpoint_id = created["endpoint"]["id"]
    assert created["secret"].startswith("whsec_")
    listed = api("viewer", "GET", "/api/v1/webhooks").json()
    assert listed["endpoints"][0]["url"] == receiver.url and "secret" not in listed["endpoints"][0]
    assert "goal_met" in listed["event_types"]
    tested = api("admin", "POST", f"/api/v1/webhooks/{endpoint_id}/test").json()
    assert tested["ok"] is True and tested["status_code"] == 200
    verify(receiver.received[0].body, receiver.received[0].headers, created["secret"])
    assert (
        api("admin", "PATCH", f"/api/v1/webhooks/{endpoint_id}", json={"enabled": False}).json()["enabled"]
        is False
    )
    rotated = api("admin", "POST", f"/api/v1/webhooks/{endpoint_id}/rotate-secret").json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != created["secret"]
    deliveries = api("viewer", "GET", f"/api/v1/webhooks/{endpoint_id}/deliveries").json()["deliveries"]
    assert deliveries[0]["event_type"] == "test" and deliveries[0]["attempt_log"][0]["trigger"] == "test"
    assert api("admin", "DELETE", f"/api/v1/webhooks/{endpoint_id}").status_code == 200
    assert api("viewer", "GET", f"/api/v1/webhooks/{endpoint_id}").status_code == 404
    with transaction(world) as session:
        actions = list(session.scalars(select(AuditLog.action).order_by(AuditLog.id)))
        assert list(session.scalars(select(WebhookDelivery))) == []  # history went with the endpoint
    assert actions == [
        "webhook.create",
        "webhook.test",
        "webhook.update",
        "webhook.rotate_secret",
        "webhook.delete",
    ]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "/api/v1/webhooks", {**BODY, "url": "ftp://x.example/"}, 400, "http"),
        ("POST", "/api/v1/webhooks", {**BODY, "url": "http://10.0.0.1/"}, 400, "private"),
        ("POST", "/api/v1/webhooks", {**BODY, "event_types": ["everything"]}, 400, "unknown event type"),
        ("POST", "/api/v1/webhooks", {**BODY, "event_types": []}, 400, "at least one"),
        ("POST", "/api/v1/webhooks", {**BODY, "url": 5}, 400, "URL"),
        ("POST", "/api/v1/webhooks", {**BODY, "description": "x" * 501}, 400, "description"),
        ("PATCH", "/api/v1/webhooks/1", {"secret": "mine"}, 400, "unknown field"),
        ("PATCH", "/api/v1/webhooks/999", {"description": "x"}, 404, "no such"),
        ("GET", "/api/v1/webhooks/abc", None, 404, "no such"),
        ("POST", "/api/v1/webhooks/999/deliveries/1/replay", None, 404, "no such"),
    ],
)
def test_api_bad_input_is_a_json_error_and_writes_nothing(
    api, world, method, path, body, status, message
) -> None:  # type: ignore[no-untyped-def]
    response = api("admin", method, path, json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]
    with transaction(world) as session:
        assert list(session.scalars(select(WebhookEndpoint))) == []
        assert list(session.scalars(select(AuditLog))) == []


def test_ui_roles_create_and_replay(signed_in, world, receiver) -> None:  # type: ignore[no-untyped-def]
    viewer = signed_in("viewer")
    page = viewer.get("/admin/webhooks")
    assert page.status_code == 200 and "Add an endpoint" not in page.text
    token = CSRF.search(page.text).group(1)  # type: ignore[union-attr]
    refused = viewer.post(
        "/admin/webhooks", data={"csrf": token, "url": receiver.url, "event_subscribed": "on"}
    )
    assert refused.status_code == 403

    admin = signed_in("admin")
    token = csrf_of(admin, "/admin/webhooks")
    bad = admin.post(
        "/admin/webhooks", data={"csrf": token, "url": "http://10.9.9.9/x", "event_subscribed": "on"}
    )
    assert bad.status_code == 400 and "private address" in bad.text and "10.9.9.9" in bad.text
    none_chosen = admin.post("/admin/webhooks", data={"csrf": token, "url": receiver.url})
    assert none_chosen.status_code == 400 and "at least one event type" in none_chosen.text
    created = admin.post(
        "/admin/webhooks",
        data={"csrf": token, "url": receiver.url, "description": "CRM", "event_subscribed": "on"},
    )
    assert created.status_code == 200 and "whsec_" in created.text
    secret = created.text.split('<code id="secret">')[1].split("</code>")[0]
    with transaction(world) as session:
        endpoint_id = session.scalars(select(WebhookEndpoint.id)).one()
        add_subscriber(session, "ana@example.com")
    sender = WebhookSender(get_settings(), world)
    try:
        assert sender.tick() == {"succeeded": 1}
    finally:
        sender.close()
    with transaction(world) as session:
        delivery_id = session.scalars(select(WebhookDelivery.id)).one()

    detail = viewer.get(f"/admin/webhooks/{endpoint_id}")
    assert detail.status_code == 200 and "Replay" not in detail.text and "HTTP 200" in detail.text
    assert (
        viewer.post(
            f"/admin/webhooks/{endpoint_id}/deliveries/{delivery_id}/replay", data={"csrf": token}
        ).status_code
        == 403
    )

    with clock.frozen(clock.now() + timedelta(minutes=10)):
        token = csrf_of(admin, f"/admin/webhooks/{endpoint_id}")
        replayed = admin.post(
            f"/admin/webhooks/{endpoint_id}/deliveries/{delivery_id}/replay", data={"csrf": token}
        )
    assert replayed.status_code == 303
    assert "delivered" in admin.get(replayed.headers["location"]).text
    first, again = receiver.received
    assert again.body == first.body and again.headers["webhook-id"] == first.headers["webhook-id"]
    assert int(again.headers["webhook-timestamp"]) - int(first.headers["webhook-timestamp"]) >= 590
    verify(again.body, again.headers, secret, now=int(again.headers["webhook-timestamp"]))

    tested = admin.post(f"/admin/webhooks/{endpoint_id}/test", data={"csrf": token})
    assert tested.status_code == 303 and len(receiver.received) == 3
    assert admin.post(f"/admin/webhooks/{endpoint_id}/disable", data={"csrf": token}).status_code == 303
    assert "disabled" in admin.get(f"/admin/webhooks/{endpoint_id}").text
    assert admin.post(f"/admin/webhooks/{endpoint_id}/rotate", data={"csrf": token}).text.count("whsec_") == 1
    assert admin.post("/admin/webhooks/999/disable", data={"csrf": token}).status_code == 404
    assert admin.get("/admin/webhooks/nope").status_code == 404
    with transaction(world) as session:
        triggers = list(session.scalars(select(WebhookAttempt.trigger).order_by(WebhookAttempt.id)))
        actions = list(session.scalars(select(AuditLog.action).order_by(AuditLog.id)))
    assert triggers == ["scheduled", "replay", "test"]
    assert actions == [
        "webhook.create",
        "webhook.replay",
        "webhook.test",
        "webhook.disable",
        "webhook.rotate_secret",
    ]


def test_an_auto_disabled_endpoint_shows_why_in_the_ui_and_api(  # type: ignore[no-untyped-def]
    api, signed_in, world, failing_receiver, set_env
) -> None:
    set_env(webhook_disable_failures="2", webhook_disable_hours="0")
    endpoint_id = make_endpoint(api, failing_receiver.url)["endpoint"]["id"]
    with transaction(world) as session:
        add_subscriber(session, "ana@example.com")
        add_subscriber(session, "ben@example.com")
    sender = WebhookSender(get_settings(), world)
    try:
        assert sender.tick() == {"retry": 2}
    finally:
        sender.close()
    shown = api("viewer", "GET", f"/api/v1/webhooks/{endpoint_id}").json()
    assert shown["enabled"] is False and shown["disabled_reason"].startswith("automatically: 2 failed")
    assert shown["failure_rate_24h"] == 1.0 and shown["attempts_24h"] == 2
    page = signed_in("viewer").get("/admin/webhooks")
    assert "automatically: 2 failed attempts in a row" in page.text and "100% failed" in page.text
