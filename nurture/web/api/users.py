"""Staff users (admins only): list, create, change role, deactivate and reactivate, reset a password, issue
and revoke API tokens. Each change locks the user and is audited in the same transaction; the last active
admin cannot be demoted or deactivated (409)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from nurture.core.db import transaction
from nurture.models import StaffRole, StaffUser
from nurture.staff import accounts
from nurture.staff.accounts import Actor
from nurture.web.api.deps import Admin, DbSession, TokenId, UserId
from nurture.web.api.errors import ApiError, error_responses
from nurture.web.api.routing import ApiRoute
from nurture.web.api.schemas import NoBody, RequestBody, Timestamp

router = APIRouter(prefix="/api/v1", tags=["users"], route_class=ApiRoute)
STATUS_OF = {"invalid": 400, "not_found": 404, "conflict": 409}
CHANGE_ERRORS = error_responses(400, 401, 403, 404, 409, 413, 415)

Role = Annotated[StaffRole, Field(strict=False, description="admin, editor or viewer")]

# --- models ---------------------------------------------------------------------------------------------


class TokenInfo(BaseModel):
    id: int
    created_at: Timestamp
    last_used_at: Timestamp
    revoked_at: Timestamp


class User(BaseModel):
    id: int
    email: str
    role: str
    active: bool
    created_at: Timestamp
    last_login_at: Timestamp


class UserWithTokens(User):
    tokens: list[TokenInfo]


class UserList(BaseModel):
    users: list[UserWithTokens]


class NewUser(RequestBody):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"email": "ana@staff.example.com", "role": "editor", "password": "a long passphrase"}
            ]
        }
    )

    email: str
    role: Role
    password: str = Field(description="At least the length nurture.staff.accounts.check_password asks for")


class RoleBody(RequestBody):
    role: Role


class PasswordBody(RequestBody):
    password: str


class UserWithToken(User):
    token: str = Field(description="The new token; shown in this answer only")


class UserTokenRevoked(User):
    revoked_token: int


# --- shapes -----------------------------------------------------------------------------------------------


def _iso(value: Any) -> str | None:
    return value.isoformat() if value else None


def user_dict(user: StaffUser, tokens: list[Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": user.id,
        "email": user.email,
        "role": user.role,
        "active": user.active,
        "created_at": _iso(user.created_at),
        "last_login_at": _iso(user.last_login_at),
    }
    if tokens is not None:
        body["tokens"] = [
            {
                "id": t.id,
                "created_at": _iso(t.created_at),
                "last_used_at": _iso(t.last_used_at),
                "revoked_at": _iso(t.revoked_at),
            }
            for t in tokens
        ]
    return body


def user_change(
    actor: Actor, user_id: int, action: str, change: Callable[[Session, StaffUser], dict[str, Any] | None]
) -> dict[str, Any]:
    """Lock the user, apply ``change(session, user) -> extra``, audit before/after; one transaction."""
    try:
        with transaction() as session:
            user = accounts.get_user(session, user_id, lock=True)
            before = accounts.user_snapshot(user)
            extra = change(session, user) or {}
            accounts.audit(
                session, actor, f"user.{action}", f"user:{user.email}", before, accounts.user_snapshot(user)
            )
            return {**user_dict(user), **extra}
    except accounts.StaffError as exc:
        raise ApiError(STATUS_OF.get(exc.code, 400), exc.code, exc.args[0]) from None


# --- routes -----------------------------------------------------------------------------------------------


@router.get(
    "/users",
    summary="Staff users (admins only)",
    response_model=UserList,
    responses=error_responses(401, 403),
)
def list_users(actor: Admin, session: DbSession) -> JSONResponse:
    users = [user_dict(u, accounts.tokens_of(session, u)) for u in accounts.list_users(session)]
    return JSONResponse({"users": users})


@router.post(
    "/users",
    status_code=201,
    summary='Create a staff user: {"email", "role", "password"} (admins only)',
    response_model=User,
    responses=error_responses(400, 401, 403, 409, 413, 415),
)
def create_user(actor: Admin, body: NewUser) -> JSONResponse:
    try:
        with transaction() as session:
            user = accounts.create_user(session, body.email, body.role.value, body.password)
            accounts.audit(
                session, actor, "user.create", f"user:{user.email}", None, accounts.user_snapshot(user)
            )
            return JSONResponse(user_dict(user), status_code=201)
    except accounts.StaffError as exc:
        raise ApiError(STATUS_OF.get(exc.code, 400), exc.code, exc.args[0]) from None


@router.post(
    "/users/{user_id}/role",
    summary='Change a user\'s role: {"role": "admin|editor|viewer"}',
    response_model=User,
    responses=CHANGE_ERRORS,
)
def change_role(actor: Admin, user_id: UserId, body: RoleBody) -> JSONResponse:
    return JSONResponse(
        user_change(actor, user_id, "role", lambda s, u: accounts.set_role(s, u, body.role.value))
    )


@router.post(
    "/users/{user_id}/deactivate",
    summary="Deactivate: sessions and tokens stop working at once",
    response_model=User,
    responses=CHANGE_ERRORS,
)
def deactivate_user(actor: Admin, user_id: UserId, body: NoBody) -> JSONResponse:
    return JSONResponse(
        user_change(actor, user_id, "deactivate", lambda s, u: accounts.set_active(s, u, False))
    )


@router.post(
    "/users/{user_id}/reactivate",
    summary="Reactivate a deactivated user",
    response_model=User,
    responses=CHANGE_ERRORS,
)
def reactivate_user(actor: Admin, user_id: UserId, body: NoBody) -> JSONResponse:
    return JSONResponse(
        user_change(actor, user_id, "reactivate", lambda s, u: accounts.set_active(s, u, True))
    )


@router.post(
    "/users/{user_id}/password",
    summary='Reset a password: {"password": ...}; ends their sessions',
    response_model=User,
    responses=CHANGE_ERRORS,
)
def reset_password(actor: Admin, user_id: UserId, body: PasswordBody) -> JSONResponse:
    return JSONResponse(
        user_change(actor, user_id, "password", lambda s, u: accounts.reset_password(s, u, body.password))
    )


@router.post(
    "/users/{user_id}/tokens",
    status_code=201,
    summary="Issue an API token for a user; shown once in the answer",
    response_model=UserWithToken,
    responses=CHANGE_ERRORS,
)
def issue_user_token(actor: Admin, user_id: UserId, body: NoBody) -> JSONResponse:
    def issue(session: Session, user: StaffUser) -> dict[str, Any]:
        if not user.active:
            raise accounts.StaffError("the user is deactivated; reactivate them first", "conflict")
        return {"token": accounts.issue_token(session, user)}

    return JSONResponse(user_change(actor, user_id, "token", issue), status_code=201)


@router.post(
    "/users/{user_id}/tokens/{token_id}/revoke",
    summary="Revoke one API token",
    response_model=UserTokenRevoked,
    responses=CHANGE_ERRORS,
)
def revoke_user_token(actor: Admin, user_id: UserId, token_id: TokenId, body: NoBody) -> JSONResponse:
    def revoke(session: Session, user: StaffUser) -> dict[str, Any]:
        return {"revoked_token": accounts.revoke_token(session, user, token_id).id}

    return JSONResponse(user_change(actor, user_id, "revoke-token", revoke))
