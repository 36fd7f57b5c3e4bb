"""Shared pieces of the API's pydantic models: the base of every request body, instants, and the subscriber
and delivery shapes that several resources answer with. Each resource's own models live beside its routes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Body
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, JsonValue, WithJsonSchema
from pydantic_core import PydanticCustomError

# Far enough for any real schedule, and far enough from datetime.max that adding a sequence's delays to an
# instant can never overflow (which would be a 500, not an answer).
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


class RequestBody(BaseModel):
    """The base of every request body. Values keep their JSON types (``"yes"`` is not true, ``"5"`` is not 5),
    and fields a route does not know are ignored, as they always were."""

    model_config = ConfigDict(strict=True, extra="ignore")


class NoFields(RequestBody):
    """An action that takes no fields; a body, if sent, must still be a JSON object."""


# The body of an action without fields: optional, as an empty body was always an empty object.
NoBody = Annotated[NoFields, Body(default_factory=NoFields)]


def _instant(value: Any) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise PydanticCustomError(
                "invalid", "{value} is not an ISO 8601 date-time", {"value": repr(value)}
            ) from None
    else:
        raise PydanticCustomError("invalid", "must be an ISO 8601 date-time with an offset")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise PydanticCustomError("invalid", "needs a time zone offset, e.g. 2026-12-01T09:00:00Z")
    out_of_range = PydanticCustomError("invalid", "must be between 1970 and 9000")
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 with an offset that crosses the calendar's edge
        raise out_of_range from None
    if not EARLIEST <= moment < LATEST:
        raise out_of_range
    return moment


# An aware instant, in UTC once validated; in JSON an ISO 8601 date-time with an offset.
Instant = Annotated[
    datetime,
    BeforeValidator(_instant),
    WithJsonSchema({"type": "string", "format": "date-time", "examples": ["2030-12-01T09:00:00-05:00"]}),
]


def _blank_is_none(value: Any) -> Any:
    return None if value == "" else value


# An optional instant where an empty string means "not given", as the form-fed fields always allowed.
OptionalInstant = Annotated[Instant | None, BeforeValidator(_blank_is_none)]

# Timestamps in answers: ISO 8601 with an offset, or null.
Timestamp = Annotated[str | None, Field(json_schema_extra={"format": "date-time"})]

JsonObject = dict[str, JsonValue]


class Profile(BaseModel):
    """A subscriber's own record, as the staff API shows it (nurture.subscribers.staff_actions.profile)."""

    id: int
    email: str | None
    first_name: str | None
    timezone: str | None
    status: str
    created_at: Timestamp
    confirmed_at: Timestamp
    unsubscribed_at: Timestamp
    paused_until: Timestamp


class UnknownOutcome(BaseModel):
    """A send whose outcome a crash or a broken connection left unknown, and how it was resolved."""

    delivery_id: int
    subscriber_id: int
    email: str | None
    sequence: str
    step: str
    at: Timestamp
    cause: str
    resolution: str = Field(description="resent | held | mark-sent | send-again")
    status: str = Field(description="the delivery's status now")
