"""Staff pages for outbound webhooks under ``/admin/webhooks`` (templates/admin/webhook*.html).

Everyone signed in reads; admins create, enable or disable, rotate secrets, delete, send tests and replay.
A new or rotated secret is shown on the answer page of that POST (never in a URL, never again).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from nurture.core.config import Settings
from nurture.core.db import session_factory, transaction
from nurture.models import StaffRole
from nurture.web.admin.common import NotFound, page, settings_of
from nurture.web.admin.deps import AdminForm, Staff, Viewer
from nurture.webhooks import endpoints
from nurture.webhooks.event_types import EVENT_TYPES
from nurture.webhooks.sending import WebhookSender

router = APIRouter(prefix="/admin/webhooks", include_in_schema=False)


def _list_page(
    request: Request,
    who: Staff,
    *,
    status_code: int = 200,
    error: str | None = None,
    form: dict[str, Any] | None = None,
) -> HTMLResponse:
    with transaction() as session:
        rows = endpoints.list_endpoints(session)
    return page(
        request,
        "webhooks.html",
        status_code,
        csrf=who.csrf,
        actor=who.actor,
        endpoints=rows,
        event_types=EVENT_TYPES,
        can_manage=who.actor.may(StaffRole.admin),
        error=error,
        notice=request.query_params.get("done"),
        form=form or {"url": "", "description": "", "event_types": []},
    )


def _detail_page(
    request: Request, who: Staff, endpoint_id: str, *, notice: str | None = None
) -> HTMLResponse:
    with transaction() as session:
        try:
            endpoint = endpoints.get(session, endpoint_id)
        except endpoints.WebhookError:
            raise NotFound("There is no such webhook endpoint.") from None
        summary = endpoints.summary(endpoint, endpoints.recent_failure_rates(session))
        deliveries = endpoints.list_deliveries(session, endpoint.id)
    return page(
        request,
        "webhook.html",
        csrf=who.csrf,
        actor=who.actor,
        endpoint=summary,
        deliveries=deliveries,
        can_manage=who.actor.may(StaffRole.admin),
        notice=notice or request.query_params.get("done"),
    )


def _back(endpoint_id: int | str, message: str) -> RedirectResponse:
    return RedirectResponse(f"/admin/webhooks/{endpoint_id}?done={quote(message, safe='')}", status_code=303)


@router.get("")
def webhooks_page(request: Request, who: Viewer) -> HTMLResponse:
    return _list_page(request, who)


@router.post("")
async def create_webhook(request: Request, posted: AdminForm) -> Response:
    actor, fields = posted.actor, posted.fields
    chosen = [t for t in EVENT_TYPES if fields.get(f"event_{t}")]
    settings = settings_of(request)

    def work() -> tuple[int, str]:
        with transaction() as session:
            endpoint, secret = endpoints.create(
                session,
                settings,
                actor,
                url=fields.get("url"),
                event_types=chosen,
                description=fields.get("description"),
            )
            return endpoint.id, secret

    try:
        endpoint_id, secret = await run_in_threadpool(work)
    except endpoints.WebhookError as exc:
        problem = exc.message
        form = {
            "url": fields.get("url", ""),
            "description": fields.get("description", ""),
            "event_types": chosen,
        }
        return await run_in_threadpool(
            lambda: _list_page(request, posted, status_code=400, error=problem, form=form)
        )
    return page(
        request,
        "webhook_secret.html",
        csrf=posted.csrf,
        actor=actor,
        endpoint_id=endpoint_id,
        secret=secret,
        heading="Endpoint created",
        until=None,
    )


@router.get("/{endpoint_id}")
def webhook_page(request: Request, endpoint_id: str, who: Viewer) -> HTMLResponse:
    return _detail_page(request, who, endpoint_id)


async def _change(actor: Any, endpoint_id: str, work: Any, message: str) -> Response:

    def run() -> None:
        with transaction() as session:
            work(session, actor)

    try:
        await run_in_threadpool(run)
    except endpoints.WebhookError:
        raise NotFound("There is no such webhook endpoint.") from None
    return _back(endpoint_id, message)


@router.post("/{endpoint_id}/disable")
async def disable_webhook(endpoint_id: str, posted: AdminForm) -> Response:
    return await _change(
        posted.actor,
        endpoint_id,
        lambda s, actor: endpoints.set_enabled(s, actor, endpoint_id, False),
        "Disabled: nothing is sent until it is enabled again.",
    )


@router.post("/{endpoint_id}/enable")
async def enable_webhook(endpoint_id: str, posted: AdminForm) -> Response:
    return await _change(
        posted.actor,
        endpoint_id,
        lambda s, actor: endpoints.set_enabled(s, actor, endpoint_id, True),
        "Enabled: waiting deliveries go out on the next tick.",
    )


@router.post("/{endpoint_id}/delete")
async def delete_webhook(endpoint_id: str, posted: AdminForm) -> Response:
    actor = posted.actor

    def run() -> None:
        with transaction() as session:
            endpoints.delete(session, actor, endpoint_id)

    try:
        await run_in_threadpool(run)
    except endpoints.WebhookError:
        raise NotFound("There is no such webhook endpoint.") from None
    return RedirectResponse("/admin/webhooks?done=" + quote("Endpoint deleted.", safe=""), status_code=303)


@router.post("/{endpoint_id}/rotate")
async def rotate_webhook(request: Request, endpoint_id: str, posted: AdminForm) -> Response:
    actor = posted.actor
    settings = settings_of(request)

    def run() -> tuple[str, Any]:
        with transaction() as session:
            endpoint, secret = endpoints.rotate_secret(session, settings, actor, endpoint_id)
            return secret, endpoint.previous_secret_until

    try:
        secret, until = await run_in_threadpool(run)
    except endpoints.WebhookError:
        raise NotFound("There is no such webhook endpoint.") from None
    return page(
        request,
        "webhook_secret.html",
        csrf=posted.csrf,
        actor=actor,
        endpoint_id=endpoint_id,
        secret=secret,
        heading="New signing secret",
        until=until,
    )


def _send_now(settings: Settings, delivery_id: int, trigger: str) -> str:
    sender = WebhookSender(settings, session_factory())
    try:
        outcome = sender.attempt_now(delivery_id, trigger)
    finally:
        sender.close()
    verdict = "delivered" if outcome.ok else "failed"
    return f"{trigger.capitalize()} of delivery {delivery_id} {verdict}: {outcome.describe()}."


@router.post("/{endpoint_id}/test")
async def test_webhook(request: Request, endpoint_id: str, posted: AdminForm) -> Response:
    actor = posted.actor

    def run() -> int:
        with transaction() as session:
            return endpoints.queue_test(session, actor, endpoint_id)

    try:
        delivery_id = await run_in_threadpool(run)
    except endpoints.WebhookError:
        raise NotFound("There is no such webhook endpoint.") from None
    message = await run_in_threadpool(_send_now, settings_of(request), delivery_id, "test")
    return _back(endpoint_id, message)


@router.post("/{endpoint_id}/deliveries/{delivery_id}/replay")
async def replay_delivery(
    request: Request, endpoint_id: str, delivery_id: str, posted: AdminForm
) -> Response:
    actor = posted.actor

    def run() -> int:
        with transaction() as session:
            endpoint = endpoints.get(session, endpoint_id)
            delivery = endpoints.delivery_for_replay(session, actor, delivery_id)
            if delivery.endpoint_id != endpoint.id:
                raise endpoints.WebhookError("not_found", "no such delivery")
            return delivery.id

    try:
        found = await run_in_threadpool(run)
    except endpoints.WebhookError:
        raise NotFound("There is no such delivery for this endpoint.") from None
    message = await run_in_threadpool(_send_now, settings_of(request), found, "replay")
    return _back(endpoint_id, message)
