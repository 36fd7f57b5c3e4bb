"""The prospects' side's world: the app on a real database with two small courses synced, and a client from
a prospect's address. A folder's conftest imports the fixtures it needs from here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from tests.support.helpers import sync_sequences

CLIENT_IP = "203.0.113.7"
# Two steps a day apart, no send window: the second step is the one that must never arrive after leaving.
TWO_STEP = """
slug: two-step
name: Two steps
steps:
  - {key: hello, delay: 0, template: demo/hello}
  - {key: middle, delay: 1d, template: demo/middle}
"""
OTHER = """
slug: other
name: Another course
steps:
  - {key: hello, delay: 0, template: demo/hello}
  - {key: goodbye, delay: 2d, template: demo/goodbye}
"""


@pytest.fixture
def courses(sequences_dir: Path, set_env: Callable[..., None]) -> Path:
    (sequences_dir / "two-step.yaml").write_text(TWO_STEP)
    (sequences_dir / "other.yaml").write_text(OTHER)
    set_env(default_sequence="two-step")
    return sequences_dir


@pytest.fixture
def app_factory(factory: sessionmaker[Session], courses: Path) -> sessionmaker[Session]:
    """The test database with both courses synced; the settings (and so the app) point at it."""
    sync_sequences(factory)
    return factory


def make_client(ip: str = CLIENT_IP) -> TestClient:
    from nurture.web.app import create_app

    return TestClient(create_app(), client=(ip, 50000), base_url="https://nurture.test")


@pytest.fixture
def prospect_client(app_factory: sessionmaker[Session]) -> Iterator[TestClient]:
    """A client from a prospect's address on the prospects' world (``client`` in tests/web/public)."""
    with make_client() as test_client:
        yield test_client
