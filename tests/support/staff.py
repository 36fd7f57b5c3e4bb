"""The staff side's world: the app on a real database, a four-step course, one user (and API token) per role,
and signing in to the web UI. A folder's conftest imports the fixtures it needs from here."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from nurture.core.db import transaction
from nurture.staff.accounts import create_user, issue_token
from tests.support.helpers import sync_sequences

PASSWORD = "correct horse battery staple"
ROLES = ("viewer", "editor", "admin")
# Four steps in a weekday window, so a pause crosses a weekend and window re-fitting matters.
COURSE = """
slug: course
name: The course
timezone: America/New_York
window: {days: mon-fri, start: "09:00", end: "17:00"}
steps:
  - {key: hello, delay: 0, template: demo/hello}
  - {key: middle, delay: 1d, template: demo/middle}
  - {key: later, delay: 2d, template: demo/middle}
  - {key: goodbye, delay: 1d, template: demo/goodbye}
"""


@pytest.fixture
def course(sequences_dir: Path) -> Path:
    path = sequences_dir / "course.yaml"
    path.write_text(COURSE)
    return path


@pytest.fixture
def world(factory: sessionmaker[Session], course: Path) -> sessionmaker[Session]:
    sync_sequences(factory)
    return factory


@pytest.fixture
def tokens(world: sessionmaker[Session]) -> dict[str, str]:
    """An API token per role (users viewer@, editor@, admin@staff.example.com)."""
    issued = {}
    with transaction(world) as session:
        for role in ROLES:
            user = create_user(session, f"{role}@staff.example.com", role, PASSWORD)
            issued[role] = issue_token(session, user)
    return issued


def make_client(ip: str = "198.51.100.9") -> TestClient:
    from nurture.web.app import create_app

    return TestClient(
        create_app(), client=(ip, 50000), base_url="https://nurture.test", follow_redirects=False
    )


@pytest.fixture
def client(world: sessionmaker[Session]) -> Iterator[TestClient]:
    with make_client() as test_client:
        yield test_client


@pytest.fixture
def api(client: TestClient, tokens: dict[str, str]) -> Callable[..., object]:
    """api(role, method, path, json=...) -> response."""

    def call(role: str | None, method: str, path: str, **kwargs: object):  # type: ignore[no-untyped-def]
        headers = dict(kwargs.pop("headers", None) or {})  # type: ignore[call-overload]
        if role:
            headers["Authorization"] = f"Bearer {tokens[role]}"
        return client.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]

    return call


# --- signing in to the web UI ---------------------------------------------------------------------------

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(client: TestClient, path: str = "/admin/login") -> str:
    response = client.get(path)
    assert response.status_code == 200, response.text
    match = CSRF.search(response.text)
    assert match, "no CSRF field on the page"
    return match.group(1)


def login(client: TestClient, email: str, password: str = PASSWORD) -> object:
    token = csrf_of(client)
    return client.post(
        "/admin/login", data={"email": email, "password": password, "csrf": token, "next": "/admin/sequences"}
    )


@pytest.fixture
def signed_in(tokens, world):  # type: ignore[no-untyped-def]
    """signed_in(role) -> a client with a session for that role."""
    clients = []

    def make(role: str) -> TestClient:
        client = make_client()
        client.__enter__()
        clients.append(client)
        response = login(client, f"{role}@staff.example.com")
        assert response.status_code == 303, response.text
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)
