"""Endpoint URL rules: https and public addresses only in production, checked when saved and at connect."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from nurture.core.config import get_settings
from nurture.core.db import transaction
from nurture.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from nurture.webhooks import endpoints
from nurture.webhooks.secrets import generate, seal
from nurture.webhooks.sending import WebhookSender
from nurture.webhooks.urls import UnsafeUrl, validate_url
from tests.support.webhook_receiver import WebhookReceiver

PRODUCTION = {
    "env": "production",
    "postal_address": "1 Real Street, Springfield, IL 62701, USA",
    "base_url": "https://nurture.test",
}

REJECTED_IN_PRODUCTION = [
    ("http://93.184.215.14/hook", "https://"),
    ("https://127.0.0.1/hook", "loopback"),
    ("https://localhost/hook", "loopback"),
    ("https://[::1]/hook", "loopback"),
    ("https://[::ffff:127.0.0.1]/hook", "loopback"),
    ("https://10.1.2.3/hook", "private"),
    ("https://192.168.0.10/hook", "private"),
    ("https://172.16.5.4/hook", "private"),
    ("https://169.254.169.254/latest/meta-data", "link-local"),
    ("https://[fe80::1]/hook", "link-local"),
    ("https://224.0.0.1/hook", "multicast"),
    ("https://0.0.0.0/hook", "unspecified"),
    ("https://240.0.0.1/hook", "reserved"),
    ("https://100.64.0.1/hook", "not a public address"),
    ("https://user:pass@93.184.215.14/hook", "user name or password"),
    ("https://93.184.215.14/hook#x", "fragment"),
    ("ftp://93.184.215.14/hook", "https://"),
    ("https://93.184.215.14:99999/hook", "port"),
    ("https:///hook", "no host"),
    ("https://93.184.215.14/a b", "no spaces"),
    ("", "give the endpoint URL"),
]


@pytest.mark.parametrize(("url", "reason"), REJECTED_IN_PRODUCTION)
def test_production_rejects(set_env, url, reason) -> None:  # type: ignore[no-untyped-def]
    set_env(**PRODUCTION)
    with pytest.raises(UnsafeUrl, match=reason):
        validate_url(url, get_settings())


def test_production_accepts_https_to_a_public_address(set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(**PRODUCTION)
    assert validate_url(" https://93.184.215.14:8443/hooks?x=1 ", get_settings()) == (
        "https://93.184.215.14:8443/hooks?x=1"
    )


@pytest.mark.parametrize("env", ["development", "test"])
def test_development_and_test_allow_http_and_loopback_but_not_private(set_env, env) -> None:  # type: ignore[no-untyped-def]
    set_env(env=env)
    assert validate_url("http://127.0.0.1:8080/hooks", get_settings())
    assert validate_url("http://localhost:8080/hooks", get_settings())
    with pytest.raises(UnsafeUrl, match="private"):
        validate_url("http://10.0.0.5/hooks", get_settings())
    with pytest.raises(UnsafeUrl, match="link-local"):
        validate_url("http://169.254.169.254/", get_settings())


def test_the_rule_holds_again_at_connect_time(factory, set_env) -> None:  # type: ignore[no-untyped-def]
    """A URL saved while it was fine (or a name that now resolves elsewhere: DNS rebinding) is refused by the
    HTTP client itself, before any byte is sent."""
    with WebhookReceiver() as receiver:
        port = receiver.server.server_address[1]
        with transaction(factory) as session:
            endpoint, _ = endpoints.create(
                session, get_settings(), None, url=receiver.url, event_types=["subscribed"]
            )
            endpoint_id = endpoint.id
        set_env(**PRODUCTION)
        with transaction(factory) as session:
            row = session.get(WebhookEndpoint, endpoint_id)
            row.url = f"https://localhost:{port}/hooks"  # as if the name had resolved publicly at save time
            row.secret = seal(generate(), get_settings())
            delivery_id = endpoints.queue_test(session, None, endpoint_id)
        sender = WebhookSender(get_settings(), factory)
        try:
            outcome = sender.attempt_now(delivery_id, "test")
        finally:
            sender.close()
        assert not outcome.ok and outcome.error.startswith("refused: localhost resolves to")
        assert receiver.received == []
    with transaction(factory) as session:
        attempt = session.scalars(select(WebhookAttempt)).one()
        assert "loopback" in attempt.error
        assert session.get(WebhookDelivery, delivery_id).status == "failed"


def test_create_refuses_a_bad_url_and_writes_nothing(factory, set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(**PRODUCTION)
    with pytest.raises(endpoints.WebhookError, match="private"), transaction(factory) as session:
        endpoints.create(session, get_settings(), None, url="https://10.0.0.1/x", event_types=["subscribed"])
    with pytest.raises(endpoints.WebhookError, match="unknown event type"), transaction(factory) as session:
        endpoints.create(session, get_settings(), None, url="https://93.184.215.14/", event_types=["nope"])
    with transaction(factory) as session:
        assert list(session.scalars(select(WebhookEndpoint))) == []
