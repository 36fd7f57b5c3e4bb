"""The public pages' tests run in the prospects' world: two small courses and a prospect's client."""

import pytest
from fastapi.testclient import TestClient

from tests.support.public import app_factory, courses, prospect_client  # noqa: F401  (tests/support/public.py)


@pytest.fixture
def client(prospect_client: TestClient) -> TestClient:  # noqa: F811
    """Every test here is a prospect's: ``client`` is the prospect's one."""
    return prospect_client
