"""Outbound webhook endpoints (docs/webhooks.md): list and read them and their deliveries; register,
change, delete, rotate the secret, send a test, replay a delivery.

Everyone with a token reads; only admins change endpoints, rotate secrets, send tests and replay. The
signing secret appears in an answer twice in an endpoint's life: when it is created and when it is rotated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError
from sqlalchemy.orm import Session

from nurture.core.config import Settings
from nurture.core.db import transaction
from nurture.web.api.deps import Admin, AppSettings, EndpointId, Viewer, WebhookDeliveryId
from nurture.web.api.errors import ApiError, error_responses
from nurture.web.api.routing import ApiRoute
from nurture.web.api.schemas import RequestBody, Timestamp
from nurture.webhooks import endpoints
from nurture.webhooks.event_types import EVENT_TYPES
from nurture.webhooks.sending import WebhookSender

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"], route_class=ApiRoute)
EDITABLE = ("description", "enabled", "event_types", "url")
NO_STORE = {"Cache-Control": "no-store"}  # answers that carry a signing secret
T = TypeVar("T")

# --- models ---------------------------------------------------------------------------------------------


def _url_text(value: object) -> object:
    if not isinstance(value, str):
        raise PydanticCustomError("invalid", "give the endpoint URL as text")
    return value


# The URL's rules (scheme, no credentials, a public address) are nurture.webhooks.urls'; here only its type.
Url = Annotated[
    str,
    BeforeValidator(_url_text),
    Field(description="Where to POST: https (http and loopback only in development and test)"),
]
EventTypes = Annotated[
    list[str],
    Field(
        description="At least one of the event types",
        json_schema_extra={"items": {"enum": list(EVENT_TYPES)}},
    ),
]


class NewEndpoint(RequestBody):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"url": "https://crm.example.org/hooks", "event_types": ["subscribed"], "description": "CRM"}
            ]
        }
    )

    url: Url
    event_types: EventTypes
    description: str | None = Field(default=None, description="At most 500 characters")


class EndpointChange(RequestBody):
    """Only the fields given change."""

    model_config = ConfigDict(extra="allow")  # so that an unknown field is named, not silently dropped

    url: Url | None = None
    event_types: EventTypes | None = None
    description: str | None = None
    enabled: bool | None = None

    @model_validator(mode="after")
    def _only_editable(self) -> EndpointChange:
        unknown = sorted(self.model_extra or {})
        if unknown:
            raise PydanticCustomError(
                "invalid",
                "unknown field {field}; editable: {editable}",
                {"field": repr(unknown[0]), "editable": ", ".join(EDITABLE)},
            )
        return self


class Endpoint(BaseModel):
    id: int
    url: str
    description: str
    event_types: list[str]
    enabled: bool
    disabled_at: Timestamp
    disabled_reason: str | None
    consecutive_failures: int
    last_success_at: Timestamp
    secret_rotation_until: Timestamp
    attempts_24h: int
    failure_rate_24h: float | None
    created_at: Timestamp
    created_by: str


class EndpointList(BaseModel):
    endpoints: list[Endpoint]
    event_types: list[str]


class Created(BaseModel):
    endpoint: Endpoint
    secret: str = Field(description="The signing secret; shown in this answer only")


class Deleted(BaseModel):
    deleted: str


class Rotated(BaseModel):
    secret: str
    previous_valid_until: str = Field(json_schema_extra={"format": "date-time"})


class SendOutcome(BaseModel):
    delivery_id: int
    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: int


class Attempt(BaseModel):
    at: Timestamp
    trigger: str = Field(description="scheduled, replay or test")
    status_code: int | None
    error: str | None
    response: str | None
    duration_ms: int


class WebhookDelivery(BaseModel):
    id: int
    endpoint_id: int
    message_id: str
    event_type: str
    status: str
    attempts: int
    due_at: Timestamp
    delivered_at: Timestamp
    last_status_code: int | None
    last_error: str | None
    created_at: Timestamp
    body: str = Field(description="The JSON sent, exactly as signed")
    attempt_log: list[Attempt]


class DeliveryList(BaseModel):
    endpoint_id: int
    deliveries: list[WebhookDelivery] = Field(description="The latest 100, newest first")


# --- helpers ----------------------------------------------------------------------------------------------


def _in_transaction(work: Callable[[Session], T]) -> T:
    try:
        with transaction() as session:
            return work(session)
    except endpoints.WebhookError as exc:
        raise ApiError(404 if exc.code == "not_found" else 400, exc.code, exc.message) from None


def _send_now(settings: Settings, delivery_id: int, trigger: str) -> dict[str, Any]:
    from nurture.core.db import session_factory

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


# --- routes -----------------------------------------------------------------------------------------------


@router.get(
    "",
    summary="Every endpoint with status and its failure rate over 24 hours",
    response_model=EndpointList,
    responses=error_responses(401),
)
def list_webhooks(actor: Viewer) -> JSONResponse:
    rows = _in_transaction(endpoints.list_endpoints)
    return JSONResponse({"endpoints": rows, "event_types": list(EVENT_TYPES)})


@router.post(
    "",
    status_code=201,
    summary='Register: {"url", "event_types": [...], "description"}; the secret is in this answer only',
    response_model=Created,
    responses=error_responses(400, 401, 403, 413, 415),
)
def create_webhook(actor: Admin, settings: AppSettings, body: NewEndpoint) -> JSONResponse:
    def work(session: Session) -> dict[str, Any]:
        endpoint, secret = endpoints.create(
            session,
            settings,
            actor,
            url=body.url,
            event_types=body.event_types,
            description=body.description,
        )
        return {"endpoint": endpoints.summary(endpoint, {}), "secret": secret}

    return JSONResponse(_in_transaction(work), status_code=201, headers=NO_STORE)


@router.get(
    "/{endpoint_id}", summary="One endpoint", response_model=Endpoint, responses=error_responses(401, 404)
)
def get_webhook(actor: Viewer, endpoint_id: EndpointId) -> JSONResponse:
    def work(session: Session) -> dict[str, Any]:
        endpoint = endpoints.get(session, endpoint_id)
        return endpoints.summary(endpoint, endpoints.recent_failure_rates(session))

    return JSONResponse(_in_transaction(work))


@router.patch(
    "/{endpoint_id}",
    summary="Change url, event_types, description or enabled",
    response_model=Endpoint,
    responses=error_responses(400, 401, 403, 404, 413, 415),
)
def update_webhook(
    actor: Admin, settings: AppSettings, endpoint_id: EndpointId, body: EndpointChange
) -> JSONResponse:
    fields = body.model_dump(exclude_unset=True)

    def work(session: Session) -> dict[str, Any]:
        return endpoints.summary(endpoints.update(session, settings, actor, endpoint_id, fields), {})

    return JSONResponse(_in_transaction(work))


@router.delete(
    "/{endpoint_id}",
    summary="Delete an endpoint with its delivery history",
    response_model=Deleted,
    responses=error_responses(401, 403, 404),
)
def delete_webhook(actor: Admin, endpoint_id: EndpointId) -> JSONResponse:
    _in_transaction(lambda s: endpoints.delete(s, actor, endpoint_id))
    return JSONResponse({"deleted": endpoint_id})


@router.post(
    "/{endpoint_id}/rotate-secret",
    summary="New secret; the old one also signs for a grace period",
    response_model=Rotated,
    responses=error_responses(401, 403, 404),
)
def rotate_webhook_secret(actor: Admin, settings: AppSettings, endpoint_id: EndpointId) -> JSONResponse:
    def work(session: Session) -> dict[str, Any]:
        endpoint, secret = endpoints.rotate_secret(session, settings, actor, endpoint_id)
        assert endpoint.previous_secret_until is not None
        return {"secret": secret, "previous_valid_until": endpoint.previous_secret_until.isoformat()}

    return JSONResponse(_in_transaction(work), headers=NO_STORE)


@router.post(
    "/{endpoint_id}/test",
    summary="Send a signed test event now; answers with the outcome",
    response_model=SendOutcome,
    responses=error_responses(401, 403, 404),
)
def test_webhook(actor: Admin, settings: AppSettings, endpoint_id: EndpointId) -> JSONResponse:
    delivery_id = _in_transaction(lambda s: endpoints.queue_test(s, actor, endpoint_id))
    return JSONResponse(_send_now(settings, delivery_id, "test"))


@router.get(
    "/{endpoint_id}/deliveries",
    summary="The latest 100 deliveries with every attempt",
    response_model=DeliveryList,
    responses=error_responses(401, 404),
)
def list_webhook_deliveries(actor: Viewer, endpoint_id: EndpointId) -> JSONResponse:
    def work(session: Session) -> dict[str, Any]:
        endpoint = endpoints.get(session, endpoint_id)
        return {"endpoint_id": endpoint.id, "deliveries": endpoints.list_deliveries(session, endpoint.id)}

    return JSONResponse(_in_transaction(work))


@router.post(
    "/{endpoint_id}/deliveries/{delivery_id}/replay",
    summary="Send a delivery again now (same body and webhook-id, fresh timestamp and signature)",
    response_model=SendOutcome,
    responses=error_responses(401, 403, 404),
)
def replay_webhook_delivery(
    actor: Admin, settings: AppSettings, endpoint_id: EndpointId, delivery_id: WebhookDeliveryId
) -> JSONResponse:
    def work(session: Session) -> int:
        endpoint = endpoints.get(session, endpoint_id)
        delivery = endpoints.delivery_for_replay(session, actor, delivery_id)
        if delivery.endpoint_id != endpoint.id:
            raise endpoints.WebhookError("not_found", "no such delivery for this endpoint")
        return delivery.id

    return JSONResponse(_send_now(settings, _in_transaction(work), "replay"))
