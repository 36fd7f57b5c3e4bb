"""/healthz says the process is up; /readyz says whether it can work: database, migrations, broker."""

from __future__ import annotations

from fastapi.testclient import TestClient

from nurture.web.app import create_app
from tests.support.processes import free_port


def _ready(client: TestClient) -> tuple[int, dict[str, str]]:
    answer = client.get("/readyz")
    return answer.status_code, answer.json()["checks"]


def test_ready_on_postgresql_and_redis(pg_factory, redis_url, set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(broker_url=redis_url)
    assert _ready(TestClient(create_app())) == (200, {"database": "ok", "migrations": "ok", "broker": "ok"})


def test_not_ready_when_the_database_is_down(set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(database_url=f"postgresql://nurture@127.0.0.1:{free_port()}/nurture")
    client = TestClient(create_app())
    status, checks = _ready(client)
    assert status == 503 and checks["database"].startswith("error: ") and checks["broker"] == "ok"
    assert client.get("/healthz").status_code == 200  # alive, just not ready: do not restart it


def test_not_ready_while_migrations_are_pending(tmp_path, set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(database_url=f"sqlite:///{tmp_path / 'never-migrated.db'}")
    status, checks = _ready(TestClient(create_app()))
    assert status == 503 and checks["database"] == "ok" and checks["migrations"].startswith("pending")


def test_not_ready_when_the_redis_broker_is_down(sqlite_url, set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(database_url=sqlite_url, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    status, checks = _ready(TestClient(create_app()))
    assert status == 503 and checks["database"] == "ok" and checks["broker"].startswith("error: ")
    assert "127.0.0.1" not in checks["broker"]  # a public endpoint names the failure, not the address


def test_not_ready_when_the_embedded_broker_folder_cannot_be_written(sqlite_url, tmp_path, set_env) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the var folder should be")
    set_env(database_url=sqlite_url, var_dir=str(blocker))
    status, checks = _ready(TestClient(create_app()))
    assert status == 503 and checks["broker"] == "error: folder not writable"
