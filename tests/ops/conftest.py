"""Fixtures for the operations tests: a DKIM key made at run time, real processes, clean metrics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import Processes


@pytest.fixture(scope="session")
def dkim_pem(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2048-bit RSA key generated for this run (no key is ever committed)."""
    from nurture.core.dkim_keys import generate_private_key

    path = tmp_path_factory.mktemp("dkim") / "dkim.pem"
    path.write_bytes(generate_private_key(2048))
    path.chmod(0o600)
    return path


@pytest.fixture
def processes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Processes]:
    group = Processes(tmp_path)
    yield group
    group.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(group.logs())


@pytest.fixture(autouse=True)
def _fresh_live_metrics(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with no worker-side metrics and no multiprocess folder unless it sets one."""
    from nurture.delivery import metrics

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    metrics.reset_live()
    yield
    metrics.reset_live()
