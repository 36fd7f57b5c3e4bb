"""Staff accounts (admins): create users, change a role, deactivate or reactivate, reset a password, issue
and revoke API tokens. Every change is audited; a new token is shown once, on the answer page only."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from nurture.core.db import transaction
from nurture.core.ids import parse_id
from nurture.models import StaffRole
from nurture.staff import accounts
from nurture.web.admin.common import NotFound, capitalized, page, q
from nurture.web.admin.deps import Admin, AdminForm, Staff

router = APIRouter(prefix="/admin", include_in_schema=False)
USER_ACTIONS = ("role", "deactivate", "reactivate", "password", "token", "revoke")


def _users_page(
    request: Request,
    who: Staff,
    *,
    status_code: int = 200,
    error: str | None = None,
    new_token: tuple[str, str] | None = None,
    form: dict[str, Any] | None = None,
) -> HTMLResponse:
    with transaction() as session:
        users = [
            {"user": u, "tokens": [t for t in accounts.tokens_of(session, u) if t.revoked_at is None]}
            for u in accounts.list_users(session)
        ]
        return page(
            request,
            "users.html",
            status_code,
            csrf=who.csrf,
            actor=who.actor,
            users=users,
            roles=[r.value for r in StaffRole],
            error=error,
            notice=request.query_params.get("done"),
            new_token=new_token,
            form=form or {},
        )


@router.get("/users")
def users_page(request: Request, who: Admin) -> HTMLResponse:
    return _users_page(request, who)


@router.post("/users")
async def users_create(request: Request, form: AdminForm) -> Response:
    actor, fields = form.actor, form.fields
    email, role, password = (
        fields.get(k) if isinstance(fields.get(k), str) else "" for k in ("email", "role", "password")
    )

    def work() -> str | None:
        try:
            with transaction() as session:
                user = accounts.create_user(session, email, role, password)
                accounts.audit(
                    session, actor, "user.create", f"user:{user.email}", None, accounts.user_snapshot(user)
                )
        except accounts.StaffError as exc:
            return str(exc)
        return None

    error = await run_in_threadpool(work)
    if error:
        return await run_in_threadpool(
            lambda: _users_page(
                request,
                form,
                status_code=400,
                error=capitalized(error),
                form={"email": email, "role": role},
            )
        )
    return RedirectResponse(
        f"/admin/users?done={q(f'Created {role} {email.strip().lower()}.')}", status_code=303
    )


def _user_target(user_id: str, action: str) -> tuple[int, str]:
    # Checked before the session: an unknown user id or action is 404 for everyone, signed in or not.
    target = parse_id(user_id)
    if action not in USER_ACTIONS or target is None:
        raise NotFound("There is no such staff user or action.")
    return target, action


@router.post("/users/{user_id}/{action}")
async def user_action(
    request: Request,
    checked: Annotated[tuple[int, str], Depends(_user_target)],
    form: AdminForm,
) -> Response:
    target, action = checked
    actor, fields = form.actor, form.fields

    def change(session: Any, user: Any) -> tuple[str, str | None]:
        if action == "role":
            accounts.set_role(session, user, str(fields.get("role", "")))
            return f"{user.email} is now {user.role}.", None
        if action in ("deactivate", "reactivate"):
            accounts.set_active(session, user, action == "reactivate")
            return f"{user.email} is {'active' if user.active else 'deactivated'}.", None
        if action == "password":
            accounts.reset_password(session, user, str(fields.get("password", "")))
            return f"New password set for {user.email}; their sessions have ended.", None
        if action == "token":
            if not user.active:
                raise accounts.StaffError("the user is deactivated; reactivate them first")
            return f"Token issued for {user.email}.", accounts.issue_token(session, user)
        token_id = parse_id(fields.get("token_id"))
        if token_id is None:
            raise accounts.StaffError("that user has no such token")
        accounts.revoke_token(session, user, token_id)
        return f"Token revoked for {user.email}.", None

    def work() -> tuple[str | None, str | None, str | None, str]:
        try:
            with transaction() as session:
                user = accounts.get_user(session, target, lock=True)
                before = accounts.user_snapshot(user)
                message, token = change(session, user)
                audit_action = "revoke-token" if action == "revoke" else action
                accounts.audit(
                    session,
                    actor,
                    f"user.{audit_action}",
                    f"user:{user.email}",
                    before,
                    accounts.user_snapshot(user),
                )
                return message, token, None, user.email
        except accounts.StaffError as exc:
            return None, None, capitalized(str(exc)), exc.code

    message, token, error, extra = await run_in_threadpool(work)
    if error is not None:
        status = {"not_found": 404, "conflict": 409}.get(extra, 400)
        return await run_in_threadpool(lambda: _users_page(request, form, status_code=status, error=error))
    if token is not None:
        # Shown once, on this page only (no redirect: the token must not travel in a URL).
        return await run_in_threadpool(lambda: _users_page(request, form, new_token=(extra, token)))
    return RedirectResponse(f"/admin/users?done={q(message or '')}", status_code=303)
