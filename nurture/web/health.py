"""Health checks for load balancers and orchestrators."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from nurture.core.config import get_settings
from nurture.core.db import get_engine
from nurture.core.migrate import is_current
from nurture.delivery.doctor import broker_problem

router = APIRouter()


@router.get("/healthz", include_in_schema=False)
def healthz() -> dict[str, str]:
    """The process is up and serving."""
    return {"status": "ok"}


@router.get("/readyz", include_in_schema=False)
def readyz() -> JSONResponse:
    """The database answers and its schema is current; the broker answers (Redis PING, or the embedded
    broker's folder is writable)."""
    checks: dict[str, str] = {}
    try:
        engine = get_engine()
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
        checks["migrations"] = "ok" if is_current(engine) else "pending: run `nurture db upgrade`"
    except Exception as exc:  # any failure means "not ready", reported rather than raised
        checks["database"] = f"error: {type(exc).__name__}"
    settings = get_settings()
    broker = broker_problem(settings)
    if broker is None:
        checks["broker"] = "ok"
    else:  # the kind of failure only: this endpoint is public
        kind = "folder not writable" if settings.embedded_broker else broker.split(":")[0]
        checks["broker"] = f"error: {kind}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ready else "unavailable", "checks": checks}, 200 if ready else 503)
