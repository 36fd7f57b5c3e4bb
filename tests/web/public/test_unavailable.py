"""A database that cannot be reached (or a pool with no connection free) is a 503 with Retry-After, in the
format the client asked for, never a 500."""

from __future__ import annotations

from fastapi.testclient import TestClient

from nurture.staff.accounts import TOKEN_PREFIX
from tests.support.processes import free_port


def _client_without_a_database(set_env) -> TestClient:  # type: ignore[no-untyped-def]
    from nurture.web.app import create_app

    # Nothing listens on this port: every connection attempt is refused at once.
    set_env(database_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test", db_pool_timeout="1")
    return TestClient(create_app(), client=("203.0.113.9", 50000), base_url="https://nurture.test")


def test_signups_get_a_503_with_retry_after_when_the_database_is_down(set_env) -> None:  # type: ignore[no-untyped-def]
    with _client_without_a_database(set_env) as client:
        as_json = client.post("/subscribe", json={"email": "ana@example.com", "consent": True})
        assert as_json.status_code == 503 and as_json.headers["retry-after"] == "5"
        assert as_json.json()["error"]["code"] == "unavailable"
        as_form = client.post("/subscribe", data={"email": "ana@example.com", "consent": "yes"})
        assert as_form.status_code == 503 and "try again" in as_form.text
        assert as_form.headers["content-type"].startswith("text/html")


def test_the_api_answers_json_503_and_readiness_says_not_ready(set_env) -> None:  # type: ignore[no-untyped-def]
    with _client_without_a_database(set_env) as client:
        token = f"{TOKEN_PREFIX}{'x' * 40}"  # well formed, so checking it needs the database
        api = client.get("/api/v1/sequences", headers={"Authorization": f"Bearer {token}"})
        assert api.status_code == 503 and api.json()["error"]["code"] == "unavailable"
        assert client.get("/readyz").status_code == 503
