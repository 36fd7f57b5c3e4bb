"""An OpenAPI fuzzer (schemathesis) against the live app, on PostgreSQL, with an admin's API token: every
``/api/v1`` operation of ``/openapi.json`` gets examples, boundary and wrong-type cases and random input,
and every answer must be no server error, a documented status, a documented content type, and a body that
matches the documented schema.

Bounded: a fixed seed (the same cases every run, so a failure reproduces), a few random examples per
operation, no deadline (the database sets the pace, not Hypothesis). The data it runs on is real and shared
by the operations: a synced course, subscribers with deliveries, staff users, a webhook endpoint; the path
examples in the spec name them, so the fuzzer reaches the code behind the 404s. Webhook sends never leave
the process (a mock transport), and no host name is looked up.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
import schemathesis
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, settings
from schemathesis import Case
from sqlalchemy import create_engine, text

from nurture.core.config import get_settings
from nurture.core.db import transaction
from nurture.staff import accounts as staff
from nurture.staff.accounts import create_user, issue_token
from nurture.subscribers.enrollment import add_subscriber
from nurture.webhooks import endpoints, sending, urls
from tests.conftest import PG_ADMIN_URL, reset_caches, service_missing
from tests.support.helpers import sync_sequences
from tests.support.staff import COURSE, PASSWORD

FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)  # real argon2id, cheap parameters
SEED = 20_261_201
CONFIG = {
    "seed": SEED,
    "generation": {"max-examples": 4, "mode": "all"},
    "phases": {"stateful": {"enabled": False}},
    "checks": {
        "enabled": False,
        "not_a_server_error": {"enabled": True},
        "status_code_conformance": {"enabled": True},
        "content_type_conformance": {"enabled": True},
        "response_schema_conformance": {"enabled": True},
    },
}


@schemathesis.serializer("application/csv")
def _csv(_context: schemathesis.SerializationContext, value: object) -> bytes:
    """The import's other CSV type goes on the wire as text, as schemathesis sends text/csv."""
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")


def _resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Host names resolve to loopback without DNS (which is allowed in test, and the sends are mocked)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        return [ipaddress.ip_address("127.0.0.1")]


def _client(_settings: object) -> httpx2.Client:
    return httpx2.Client(transport=httpx2.MockTransport(lambda request: httpx2.Response(204)))


@pytest.fixture
def network_stays_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """Endpoint URLs the fuzzer registers resolve without DNS, and a test or replay is answered in-process."""
    monkeypatch.setattr(urls, "resolve", _resolve)
    monkeypatch.setattr(sending, "guarded_client", _client)


@dataclass(frozen=True)
class World:
    database_url: str
    sequences_dir: Path
    token: str


def _seed(world_dir: Path) -> str:
    """The data the fuzzer works on; returns the token it calls with.

    Row 1 of every table is a bystander the spec's path examples point at ("1"): the fuzzer may deactivate,
    erase or revoke it. The fuzzer's own admin is row 2, so it does not lock itself out on the first try."""
    from nurture.core.db import session_factory

    (world_dir / "course.yaml").write_text(COURSE)
    factory = session_factory()
    sync_sequences(factory)
    with transaction(factory) as session:
        bystander = create_user(session, "editor@staff.example.com", "editor", PASSWORD)
        issue_token(session, bystander)
        admin = create_user(session, "admin@staff.example.com", "admin", PASSWORD)
        token = issue_token(session, admin)
        for email in ("ana@example.com", "bo@example.com"):
            add_subscriber(session, email, first_name="Ana", sequence_slug="course")
        endpoints.create(
            session, get_settings(), None, url="https://hooks.example.org/in", event_types=["subscribed"]
        )
    return token


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One database for every operation of this module, migrated and seeded once: its own, because other
    tests on the same worker empty the shared one before each test, and emptying it per operation would cost
    more than the fuzzing. What one operation's calls create or break, the next ones meet, as in real use."""
    from nurture.core.db import make_engine
    from nurture.core.migrate import upgrade

    name = f"nurture_fuzz_{os.getpid()}"
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
    folder = tmp_path_factory.mktemp("fuzz-sequences")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NURTURE_DATABASE_URL", url)
        patch.setenv("NURTURE_SEQUENCES_DIR", str(folder))
        patch.setattr(staff, "_hasher", FAST_HASHER)
        patch.setattr(urls, "resolve", _resolve)
        reset_caches()
        token = _seed(folder)
    reset_caches()
    yield World(url, folder, token)
    reset_caches()  # no pooled connection may keep the database from being dropped
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture
def admin_token(
    world: World, set_env: Callable[..., None], monkeypatch: pytest.MonkeyPatch, network_stays_here: None
) -> str:
    """The settings of this test point at the fuzzer's database; staff passwords hash cheaply (the fuzzer
    creates users and resets passwords)."""
    set_env(database_url=world.database_url, sequences_dir=str(world.sequences_dir))
    monkeypatch.setattr(staff, "_hasher", FAST_HASHER)
    return world.token


def _load_schema() -> schemathesis.BaseSchema:
    """The spec as a client gets it, from an app built while the tests are collected: the cases are made
    from it then. No database is needed for that; each call goes to the test's own app (``app=``)."""
    from nurture.web.app import create_app

    config = schemathesis.Config.from_dict(CONFIG)
    loaded = schemathesis.openapi.from_asgi("/openapi.json", create_app(), config=config)
    return loaded.include(path_regex="^/api/v1/")


schema = _load_schema()


@pytest.fixture
def app(admin_token: str) -> FastAPI:
    from nurture.web.app import create_app

    return create_app()


@schema.parametrize()
# The app and the database outlive one generated case on purpose: what one call creates, the next may use.
@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_api_answer_is_documented(case: Case, app: FastAPI, admin_token: str) -> None:
    case.call_and_validate(app=app, headers={"Authorization": f"Bearer {admin_token}"})


def test_the_fuzzer_sees_every_api_route() -> None:
    """The filter above must not quietly leave routes out: every /api/v1 route of the app is in it."""
    from nurture.web import api

    routes = {
        (method, route.path)
        for router in api.ROUTERS
        for route in router.routes
        if isinstance(route, APIRoute) and route.include_in_schema
        for method in route.methods
    }
    listed = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
    assert routes == listed
    assert len(routes) >= 40
