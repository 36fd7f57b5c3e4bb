"""Fixtures for webhook tests: a recording receiver on loopback, and the staff fixtures for UI and API."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.staff import (  # noqa: F401  (fixtures shared with the staff tests)
    api,
    client,
    course,
    signed_in,
    tokens,
    world,
)
from tests.support.webhook_receiver import Script, WebhookReceiver


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as server:
        yield server


@pytest.fixture
def failing_receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(Script(default=500)) as server:
        yield server
