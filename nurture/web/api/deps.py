"""FastAPI dependencies of the JSON API: who is calling (a bearer token, with the role a route needs), the
database session of a read, the settings, and the path parameters that name rows.

A route states what it needs in its signature, and FastAPI solves the dependencies in that order::

    @router.get("/sequences/{slug}")
    def get_sequence(actor: Viewer, session: DbSession, slug: SequenceSlug) -> JSONResponse: ...

so the token is checked first (401, then 403 for the role), then a path parameter that cannot name a row is a
404, and only then is a body that fails its model a 400. Ids arrive as text and are parsed strictly
(:func:`nurture.core.ids.parse_id`): ``"²"`` or ``"１"`` is no id, a 404 rather than a different row.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from nurture.core.config import Settings
from nurture.core.db import transaction
from nurture.core.ids import MAX_ROW_ID, row_id
from nurture.models import Sequence, StaffRole
from nurture.sequences.loader import SLUG
from nurture.staff import accounts
from nurture.staff.accounts import Actor
from nurture.web.api.errors import ApiError

bearer = HTTPBearer(
    auto_error=False,  # a missing token is our 401 in the API's error shape, not FastAPI's 403
    scheme_name="token",
    description="An API token: `nurture users token EMAIL`, or an admin's `POST /api/v1/users/{id}/tokens`",
)
# Row ids are INTEGER columns: on PostgreSQL a larger number in a query is an error, not a miss, so it is
# refused here as what it is, an id no row has.
ID_PATTERN = rf"^[0-9]{{1,{len(str(MAX_ROW_ID))}}}$"


def authenticate(credentials: HTTPAuthorizationCredentials | None, needed: StaffRole) -> Actor:
    token = credentials.credentials.strip() if credentials else ""
    if not token:
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <token> (nurture users token EMAIL)")
    with transaction() as session:
        user = accounts.user_for_token(session, token)
        actor = Actor.of(user) if user is not None else None
    if actor is None:
        raise ApiError(401, "unauthorized", "the token is not valid")
    if not actor.may(needed):
        raise ApiError(403, "forbidden", f"this needs the {needed.value} role; you are {actor.role}")
    return actor


@functools.cache
def require_role(needed: StaffRole) -> Callable[[HTTPAuthorizationCredentials | None], Actor]:
    """A dependency: the caller behind the bearer token, with at least ``needed``."""

    # Synchronous on purpose: it reads the database, so FastAPI runs it in the thread pool.
    def caller(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Actor:
        return authenticate(credentials, needed)

    caller.__name__ = f"require_{needed.value}"
    return caller


Viewer = Annotated[Actor, Depends(require_role(StaffRole.viewer))]
Editor = Annotated[Actor, Depends(require_role(StaffRole.editor))]
Admin = Annotated[Actor, Depends(require_role(StaffRole.admin))]


def read_session() -> Iterator[Session]:
    """One transaction around a read. Writes open their own, so that the lock, the change and the audit row
    commit together inside the work and an error rolls all of it back before the answer is written."""
    with transaction() as session:
        yield session


# scope="function": the transaction ends when the handler returns, before the answer goes out, so a failure
# to commit is an error answer (503 for an unreachable database), not a success already sent.
DbSession = Annotated[Session, Depends(read_session, scope="function")]


def app_settings(request: Request) -> Settings:
    return request.app.state.settings


AppSettings = Annotated[Settings, Depends(app_settings)]


# --- path parameters ------------------------------------------------------------------------------------


def _id_path(what: str, example: str = "1") -> Any:
    # The pattern documents what an id looks like; it is not enforced by FastAPI, because anything else must
    # be a 404 in the API's shape (no such row), not a validation error.
    return Path(
        description=f"The {what}'s id (at most {MAX_ROW_ID})",
        examples=[example],
        json_schema_extra={"pattern": ID_PATTERN},
    )


SlugPath = Annotated[
    str,
    Path(
        description="The sequence's slug (its file name)",
        examples=["course"],
        json_schema_extra={"pattern": SLUG.pattern},
    ),
]


def sequence_slug(slug: SlugPath) -> str:
    """The slug, or a 404 for text no sequence can be called (before it reaches a query or a lock)."""
    if not SLUG.match(slug):
        raise ApiError(404, "not_found", f"no sequence {slug!r}")
    return slug


SequenceSlug = Annotated[str, Depends(sequence_slug)]


def find_sequence(session: Session, slug: str) -> Sequence:
    sequence = session.scalar(select(Sequence).where(Sequence.slug == slug))
    if sequence is None:
        raise ApiError(404, "not_found", f"no sequence {slug!r}")
    return sequence


def _row_id(value: str, message: str) -> int:
    parsed = row_id(value)
    if parsed is None:
        raise ApiError(404, "not_found", message)
    return parsed


def subscriber_id_of(subscriber_id: Annotated[str, _id_path("subscriber")]) -> int:
    return _row_id(subscriber_id, "no such subscriber")


def user_id_of(user_id: Annotated[str, _id_path("staff user")]) -> int:
    return _row_id(user_id, "no such staff user")


def token_id_of(token_id: Annotated[str, _id_path("API token")]) -> int:
    return _row_id(token_id, "that user has no such token")


def delivery_id_of(delivery_id: Annotated[str, _id_path("delivery")]) -> int:
    return _row_id(delivery_id, "there is no such delivery")


def endpoint_id_of(endpoint_id: Annotated[str, _id_path("webhook endpoint")]) -> str:
    _row_id(endpoint_id, "no such webhook endpoint")
    return endpoint_id


def webhook_delivery_id_of(delivery_id: Annotated[str, _id_path("webhook delivery")]) -> str:
    _row_id(delivery_id, "no such delivery")
    return delivery_id


SubscriberId = Annotated[int, Depends(subscriber_id_of)]
UserId = Annotated[int, Depends(user_id_of)]
TokenId = Annotated[int, Depends(token_id_of)]
DeliveryId = Annotated[int, Depends(delivery_id_of)]
# Webhook ids stay text once checked: nurture.webhooks.endpoints parses them itself (as for the UI and CLI).
EndpointId = Annotated[str, Depends(endpoint_id_of)]
WebhookDeliveryId = Annotated[str, Depends(webhook_delivery_id_of)]
