"""``/api/v1/webhooks``: endpoints, their deliveries, replay and test (docs/webhooks.md).

Everyone with a token reads; only admins change endpoints, rotate secrets, send tests and replay. The
signing secret appears in a response twice in an endpoint's life: when it is created and when it is
rotated.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from nurture.config import Settings
from nurture.db import transaction
from nurture.models import StaffRole
from nurture.staff import Actor
from nurture.web.api import ApiError, _actor, _json
from nurture.webhooks import endpoints
from nurture.webhooks.catalog import EVENT_TYPES
from nurture.webhooks.sending import WebhookSender

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"])
EDITABLE = {"url", "event_types", "description", "enabled"}
NO_STORE = {"Cache-Control": "no-store"}  # answers that carry a signing secret


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _api_error(exc: endpoints.WebhookError) -> ApiError:
    return ApiError(404 if exc.code == "not_found" else 400, exc.code, exc.message)


def _in_transaction(work: Any) -> Any:
    try:
        with transaction() as session:
            return work(session)
    except endpoints.WebhookError as exc:
        raise _api_error(exc) from None


def _send_now(settings: Settings, delivery_id: int, trigger: str) -> dict[str, Any]:
    from nurture.db import session_factory

    sender = WebhookSender(settings, session_factory())
    try:
        outcome = sender.attempt_now(delivery_id, trigger)
    finally:
        sender.close()
    return {
        "delivery_id": delivery_id,
        "ok": outcome.ok,
        "status_code": outcome.status_code,
        "error": outcome.error,
        "duration_ms": outcome.duration_ms,
    }


@router.get("", summary="Every endpoint with status and its failure rate over 24 hours")
def list_webhooks(request: Request) -> JSONResponse:
    _actor(request, StaffRole.viewer)
    rows = _in_transaction(endpoints.list_endpoints)
    return JSONResponse({"endpoints": rows, "event_types": list(EVENT_TYPES)})


@router.post(
    "",
    status_code=201,
    summary='Register: {"url", "event_types": [...], "description"}; the secret is in this answer only',
)
async def create_webhook(request: Request) -> JSONResponse:
    actor = await run_in_threadpool(_actor, request, StaffRole.admin)
    fields = await _json(request)
    settings = _settings(request)

    def work(session: Any) -> dict[str, Any]:
        endpoint, secret = endpoints.create(
            session,
            settings,
            actor,
            url=fields.get("url"),
            event_types=fields.get("event_types"),
            description=fields.get("description"),
        )
        return {"endpoint": endpoints.summary(endpoint, {}), "secret": secret}

    return JSONResponse(await run_in_threadpool(_in_transaction, work), status_code=201, headers=NO_STORE)


@router.get("/{endpoint_id}", summary="One endpoint")
def get_webhook(request: Request, endpoint_id: str) -> JSONResponse:
    _actor(request, StaffRole.viewer)

    def work(session: Any) -> dict[str, Any]:
        endpoint = endpoints.get(session, endpoint_id)
        return endpoints.summary(endpoint, endpoints.recent_failure_rates(session))

    return JSONResponse(_in_transaction(work))


@router.patch("/{endpoint_id}", summary="Change url, event_types, description or enabled")
async def update_webhook(request: Request, endpoint_id: str) -> JSONResponse:
    actor = await run_in_threadpool(_actor, request, StaffRole.admin)
    fields = await _json(request)
    unknown = sorted(set(fields) - EDITABLE)
    if unknown:
        raise ApiError(
            400, "invalid", f"unknown field {unknown[0]!r}; editable: {', '.join(sorted(EDITABLE))}"
        )
    settings = _settings(request)

    def work(session: Any) -> dict[str, Any]:
        endpoint = endpoints.update(session, settings, actor, endpoint_id, fields)
        return endpoints.summary(endpoint, {})

    return JSONResponse(await run_in_threadpool(_in_transaction, work))


@router.delete("/{endpoint_id}", summary="Delete an endpoint with its delivery history")
async def delete_webhook(request: Request, endpoint_id: str) -> JSONResponse:
    actor = await run_in_threadpool(_actor, request, StaffRole.admin)
    await run_in_threadpool(_in_transaction, lambda s: endpoints.delete(s, actor, endpoint_id))
    return JSONResponse({"deleted": endpoint_id})


@router.post("/{endpoint_id}/rotate-secret", summary="New secret; the old one also signs for a grace period")
async def rotate_webhook_secret(request: Request, endpoint_id: str) -> JSONResponse:
    actor: Actor = await run_in_threadpool(_actor, request, StaffRole.admin)
    settings = _settings(request)

    def work(session: Any) -> dict[str, Any]:
        endpoint, secret = endpoints.rotate_secret(session, settings, actor, endpoint_id)
        assert endpoint.previous_secret_until is not None
        return {"secret": secret, "previous_valid_until": endpoint.previous_secret_until.isoformat()}

    return JSONResponse(await run_in_threadpool(_in_transaction, work), headers=NO_STORE)


@router.post("/{endpoint_id}/test", summary="Send a signed test event now; answers with the outcome")
async def test_webhook(request: Request, endpoint_id: str) -> JSONResponse:
    actor = await run_in_threadpool(_actor, request, StaffRole.admin)
    delivery_id = await run_in_threadpool(
        _in_transaction, lambda s: endpoints.queue_test(s, actor, endpoint_id)
    )
    return JSONResponse(await run_in_threadpool(_send_now, _settings(request), delivery_id, "test"))


@router.get("/{endpoint_id}/deliveries", summary="The latest 100 deliveries with every attempt")
def list_webhook_deliveries(request: Request, endpoint_id: str) -> JSONResponse:
    _actor(request, StaffRole.viewer)

    def work(session: Any) -> dict[str, Any]:
        endpoint = endpoints.get(session, endpoint_id)
        return {"endpoint_id": endpoint.id, "deliveries": endpoints.list_deliveries(session, endpoint.id)}

    return JSONResponse(_in_transaction(work))


@router.post(
    "/{endpoint_id}/deliveries/{delivery_id}/replay",
    summary="Send a delivery again now (same body and webhook-id, fresh timestamp and signature)",
)
async def replay_webhook_delivery(request: Request, endpoint_id: str, delivery_id: str) -> JSONResponse:
    actor = await run_in_threadpool(_actor, request, StaffRole.admin)

    def work(session: Any) -> int:
        endpoint = endpoints.get(session, endpoint_id)
        delivery = endpoints.delivery_for_replay(session, actor, delivery_id)
        if delivery.endpoint_id != endpoint.id:
            raise endpoints.WebhookError("not_found", "no such delivery for this endpoint")
        return delivery.id

    found = await run_in_threadpool(_in_transaction, work)
    return JSONResponse(await run_in_threadpool(_send_now, _settings(request), found, "replay"))
