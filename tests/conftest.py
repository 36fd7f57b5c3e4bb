"""Real databases and services for the tests.

SQLite: each test gets a copy of a database migrated once per session. PostgreSQL: one database per test
process, migrated once, emptied before each test that uses it. Redis: one logical database per test process.
With CI=true a missing PostgreSQL or Redis fails the run; locally the tests that need it are skipped.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from tests.support.processes import Processes

TEST_SECRET = "test-secret-key-for-nurture-tests-0123456789"
BASE_ENV = {
    "NURTURE_ENV": "test",
    "NURTURE_SECRET_KEY": TEST_SECRET,
    "NURTURE_BASE_URL": "https://nurture.test",
    "NURTURE_CONTACT_URL": "https://clinic.test/contact",
    "NURTURE_SMTP_URL": "memory://",
}
# Also for the whole run, not only per test: some modules read the settings when imported (nurture.celery_app
# builds its app), and collecting the tests imports them before any fixture runs. Without this they would
# meet an unset NURTURE_ENV, which is production, and refuse to load.
os.environ.update(BASE_ENV)
PG_ADMIN_URL = os.environ.get("NURTURE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_HOST = os.environ.get("NURTURE_TEST_REDIS_HOST", "127.0.0.1:6379")
IN_CI = os.environ.get("CI", "").lower() == "true"


def _all_tables() -> str:
    from nurture import models  # noqa: F401  (registers every table)
    from nurture.core.db import Base

    return ", ".join(table.name for table in Base.metadata.sorted_tables)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Keep each phase's report on the test item, so fixtures can print process logs when a test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def service_missing(name: str, error: Exception) -> None:
    message = f"{name} is not reachable: {error}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: services are required, not skipped)")
    pytest.skip(message)


def reset_caches() -> None:
    from nurture.core.config import get_settings
    from nurture.core.db import dispose_engines
    from nurture.tasks import process_sender, process_webhook_sender

    dispose_engines()
    get_settings.cache_clear()
    process_sender.cache_clear()
    process_webhook_sender.cache_clear()


@pytest.fixture(autouse=True)
def _base_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for key, value in BASE_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("NURTURE_VAR_DIR", str(tmp_path / "var"))
    for key in ("NURTURE_DATABASE_URL", "NURTURE_BROKER_URL", "NURTURE_SEQUENCES_DIR"):
        monkeypatch.delenv(key, raising=False)
    reset_caches()
    yield
    from nurture.core import clock

    clock.set_now(None)
    reset_caches()


@pytest.fixture
def set_env(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Change NURTURE_* settings for this test and make every cached object see them."""

    def apply(**values: str) -> None:
        for key, value in values.items():
            monkeypatch.setenv(f"NURTURE_{key.upper()}", str(value))
        reset_caches()

    return apply


# --- SQLite ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nurture.core.db import make_engine
    from nurture.core.migrate import upgrade

    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "nurture.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


# --- PostgreSQL -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    from nurture.core.db import make_engine
    from nurture.core.migrate import upgrade

    # Unique per test process, so concurrent runs on one machine never drop each other's database.
    name = f"nurture_test_{os.getpid()}"
    try:
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            connection.execute(text(f"CREATE DATABASE {name}"))
    except Exception as exc:
        service_missing("PostgreSQL", exc)
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture
def pg_url(pg_database: str) -> str:
    engine = create_engine(pg_database)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {_all_tables()} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return pg_database


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def factory(db_url: str, set_env: Callable[..., None]) -> sessionmaker[Session]:
    """A session factory on the test database, which is also what the settings name."""
    from nurture.core.db import session_factory

    set_env(database_url=db_url)
    return session_factory()


@pytest.fixture
def pg_factory(pg_url: str, set_env: Callable[..., None]) -> sessionmaker[Session]:
    from nurture.core.db import session_factory

    set_env(database_url=pg_url)
    return session_factory()


# --- Redis ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_db() -> Iterator[int]:
    """A Redis logical database reserved for this test process (a lock key in db 0), so concurrent runs on one
    machine never flush each other's queues."""
    import redis

    try:
        control = redis.Redis.from_url(f"redis://{REDIS_HOST}/0", socket_connect_timeout=2)
        control.ping()
    except Exception as exc:
        service_missing("Redis", exc)
    for index in range(1, 16):
        if control.set(f"nurture-test-lock:{index}", os.getpid(), nx=True, ex=3600):
            break
    else:
        pytest.fail("all 15 Redis test databases are reserved by other test runs")
    yield index
    control.delete(f"nurture-test-lock:{index}")
    control.close()


@pytest.fixture
def redis_url(redis_db: int) -> str:
    import redis

    url = f"redis://{REDIS_HOST}/{redis_db}"
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    client.flushdb()
    client.close()
    return url


# --- sequences ------------------------------------------------------------------------------------------


@pytest.fixture
def sequences_dir(tmp_path: Path, set_env: Callable[..., None]) -> Path:
    """An empty sequences folder that the settings point at; tests write YAML into it."""
    folder = tmp_path / "sequences"
    folder.mkdir()
    set_env(sequences_dir=str(folder))
    return folder


THREE_STEP = """
slug: three-step
name: Three steps
steps:
  - {key: hello, delay: 0, template: demo/hello}
  - {key: middle, delay: 1s, template: demo/middle}
  - {key: goodbye, delay: 1s, template: demo/goodbye}
"""


@pytest.fixture
def three_step(sequences_dir: Path) -> Path:
    path = sequences_dir / "three-step.yaml"
    path.write_text(THREE_STEP)
    return path


ONE_STEP = """
slug: one-step
name: One step
steps:
  - {key: hello, delay: 0, template: demo/hello}
"""


@pytest.fixture
def one_step(sequences_dir: Path) -> Path:
    path = sequences_dir / "one-step.yaml"
    path.write_text(ONE_STEP)
    return path


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throwaway self-signed key and certificate for 127.0.0.1, for TLS tests against loopback servers."""
    import subprocess

    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


@pytest.fixture(autouse=True)
def _fast_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real argon2id, with cheap parameters: the production profile costs about a second per hash on the
    test machine, and the tests hash dozens of times. Parameters are all that change."""
    from argon2 import PasswordHasher

    from nurture.staff import accounts

    monkeypatch.setattr(accounts, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture(autouse=True)
def _fresh_live_metrics(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with no worker-side metrics and no multiprocess folder unless it sets one."""
    from nurture.delivery import metrics

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    metrics.reset_live()
    yield
    metrics.reset_live()


@pytest.fixture
def processes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Processes]:
    """Real nurture processes for one test, all stopped at its end; their logs are printed if it failed."""
    from tests.support.processes import Processes

    group = Processes(tmp_path)
    yield group
    group.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(group.logs())


@pytest.fixture(scope="session")
def dkim_pem(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2048-bit RSA key generated for this run (no key is ever committed)."""
    from nurture.core.dkim_keys import generate_private_key

    path = tmp_path_factory.mktemp("dkim") / "dkim.pem"
    path.write_bytes(generate_private_key(2048))
    path.chmod(0o600)
    return path
