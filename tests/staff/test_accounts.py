"""Staff user management by admins, in the web UI, the JSON API and the CLI: create, role, deactivate and
reactivate, password reset (ends sessions), API tokens (shown once, stored hashed, revocable), the last
active admin kept, every change audited, and nobody but admins allowed."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from nurture.cli import main
from nurture.core.db import transaction
from nurture.models import ApiToken, AuditLog, StaffUser
from nurture.staff.accounts import token_digest
from tests.support.staff import PASSWORD, csrf_of, login, make_client

NEW_PASSWORD = "a brand new passphrase 42"


def user_id(factory, email: str) -> int:  # type: ignore[no-untyped-def]
    with transaction(factory) as session:
        return session.scalar(select(StaffUser.id).where(StaffUser.email == email))


def audit_actions(factory) -> list[str]:  # type: ignore[no-untyped-def]
    with transaction(factory) as session:
        return list(session.scalars(select(AuditLog.action).order_by(AuditLog.id)))


# --- web UI ---------------------------------------------------------------------------------------------


def test_admin_creates_changes_and_deactivates_users_in_the_ui(signed_in, world) -> None:  # type: ignore[no-untyped-def]
    admin = signed_in("admin")
    page = admin.get("/admin/users")
    assert page.status_code == 200 and "viewer@staff.example.com" in page.text and "Users" in page.text
    token = csrf_of(admin, "/admin/users")
    short = admin.post(
        "/admin/users", data={"csrf": token, "email": "ed@x.example", "role": "editor", "password": "short"}
    )
    assert short.status_code == 400 and "at least 12" in short.text
    taken = admin.post(
        "/admin/users",
        data={"csrf": token, "email": "viewer@staff.example.com", "role": "editor", "password": PASSWORD},
    )
    assert taken.status_code == 400 and "already exists" in taken.text
    made = admin.post(
        "/admin/users", data={"csrf": token, "email": "Ed@X.example", "role": "editor", "password": PASSWORD}
    )
    assert (
        made.status_code == 303 and "Created editor ed@x.example" in admin.get(made.headers["location"]).text
    )
    ed = user_id(world, "ed@x.example")
    with make_client() as ed_client:
        assert login(ed_client, "ed@x.example").status_code == 303
        assert admin.post(f"/admin/users/{ed}/role", data={"csrf": token, "role": "boss"}).status_code == 400
        assert (
            admin.post(f"/admin/users/{ed}/role", data={"csrf": token, "role": "viewer"}).status_code == 303
        )
        # The role is read on every request: the demotion applies to the open session at once.
        assert (
            ed_client.post(
                "/admin/sequences/course/pause", data={"csrf": csrf_of(ed_client, "/admin/sequences/course")}
            ).status_code
            == 403
        )
        assert admin.post(f"/admin/users/{ed}/deactivate", data={"csrf": token}).status_code == 303
        assert ed_client.get("/admin/sequences").status_code == 303  # signed out
        assert login(ed_client, "ed@x.example").status_code == 401
        assert admin.post(f"/admin/users/{ed}/reactivate", data={"csrf": token}).status_code == 303
        assert login(ed_client, "ed@x.example").status_code == 303
        reset = admin.post(f"/admin/users/{ed}/password", data={"csrf": token, "password": NEW_PASSWORD})
        assert reset.status_code == 303
        assert ed_client.get("/admin/sequences").status_code == 303  # the reset ended the session
        assert login(ed_client, "ed@x.example").status_code == 401
        assert login(ed_client, "ed@x.example", NEW_PASSWORD).status_code == 303
    assert (
        admin.post(f"/admin/users/{ed}/password", data={"csrf": token, "password": "short"}).status_code
        == 400
    )
    assert admin.post("/admin/users/99999/role", data={"csrf": token, "role": "viewer"}).status_code == 404
    assert audit_actions(world) == [
        "user.create", "user.role", "user.deactivate", "user.reactivate", "user.password",
    ]  # fmt: skip
    with transaction(world) as session:
        entry = session.scalar(select(AuditLog).where(AuditLog.action == "user.role"))
    assert (
        entry.before["role"] == "editor"
        and entry.after["role"] == "viewer"
        and entry.actor == "admin@staff.example.com"
    )
    assert "password_hash" not in str(entry.after)


def test_tokens_are_shown_once_work_and_can_be_revoked_in_the_ui(signed_in, client, world) -> None:  # type: ignore[no-untyped-def]
    admin = signed_in("admin")
    token = csrf_of(admin, "/admin/users")
    editor_id = user_id(world, "editor@staff.example.com")
    issued = admin.post(f"/admin/users/{editor_id}/token", data={"csrf": token})
    assert issued.status_code == 200 and "shown only this once" in issued.text
    secret = re.search(r'<code id="new-token">(nrt_[^<]+)</code>', issued.text).group(1)  # type: ignore[union-attr]
    assert secret not in admin.get("/admin/users").text
    with transaction(world) as session:
        row = session.scalar(select(ApiToken).where(ApiToken.token_hash == token_digest(secret)))
        assert row is not None and secret not in row.token_hash
    headers = {"Authorization": f"Bearer {secret}"}
    assert client.get("/api/v1/sequences", headers=headers).status_code == 200
    revoked = admin.post(f"/admin/users/{editor_id}/revoke", data={"csrf": token, "token_id": str(row.id)})
    assert revoked.status_code == 303
    assert client.get("/api/v1/sequences", headers=headers).status_code == 401
    assert (
        admin.post(f"/admin/users/{editor_id}/revoke", data={"csrf": token, "token_id": "99999"}).status_code
        == 404
    )
    assert audit_actions(world) == ["user.token", "user.revoke-token"]


def test_the_last_active_admin_cannot_be_demoted_or_deactivated(signed_in, world) -> None:  # type: ignore[no-untyped-def]
    admin = signed_in("admin")
    token = csrf_of(admin, "/admin/users")
    me = user_id(world, "admin@staff.example.com")
    demote = admin.post(f"/admin/users/{me}/role", data={"csrf": token, "role": "editor"})
    assert demote.status_code == 409 and "last active admin" in demote.text
    assert admin.post(f"/admin/users/{me}/deactivate", data={"csrf": token}).status_code == 409
    editor = user_id(world, "editor@staff.example.com")
    assert admin.post(f"/admin/users/{editor}/role", data={"csrf": token, "role": "admin"}).status_code == 303
    assert admin.post(f"/admin/users/{me}/role", data={"csrf": token, "role": "viewer"}).status_code == 303
    with transaction(world) as session:
        roles = dict(session.execute(select(StaffUser.email, StaffUser.role)).all())
    assert roles["admin@staff.example.com"] == "viewer" and roles["editor@staff.example.com"] == "admin"
    assert audit_actions(world) == ["user.role", "user.role"]  # the refusals changed nothing


USER_POSTS = {
    "role": {"role": "viewer"},
    "deactivate": {},
    "reactivate": {},
    "password": {"password": NEW_PASSWORD},
    "token": {},
    "revoke": {"token_id": "1"},
}


@pytest.mark.parametrize("role", ["viewer", "editor"])
def test_only_admins_manage_users_in_the_ui(signed_in, client, world, role) -> None:  # type: ignore[no-untyped-def]
    target = user_id(world, "viewer@staff.example.com")
    assert client.get("/admin/users").status_code == 303  # no session: to the login page
    assert client.post(f"/admin/users/{target}/deactivate", data={"csrf": "x"}).status_code == 303
    staffer = signed_in(role)
    assert staffer.get("/admin/users").status_code == 403
    token = csrf_of(staffer, "/admin/sequences")
    assert (
        staffer.post(
            "/admin/users",
            data={"csrf": token, "email": "x@y.example", "role": "admin", "password": PASSWORD},
        ).status_code
        == 403
    )
    for action, fields in USER_POSTS.items():
        assert (
            staffer.post(f"/admin/users/{target}/{action}", data={"csrf": token, **fields}).status_code == 403
        ), action
    assert "Users" not in staffer.get("/admin/sequences").text.split("<main")[0]
    admin = signed_in("admin")
    admin_token = csrf_of(admin, "/admin/users")
    forged = admin.post(f"/admin/users/{target}/deactivate", data={"csrf": token})
    cross = admin.post(
        f"/admin/users/{target}/deactivate",
        data={"csrf": admin_token},
        headers={"Sec-Fetch-Site": "cross-site"},
    )
    assert forged.status_code == 403 and cross.status_code == 403
    assert audit_actions(world) == []


# --- JSON API -------------------------------------------------------------------------------------------


def test_user_management_through_the_api(api, world) -> None:  # type: ignore[no-untyped-def]
    for role in ("viewer", "editor"):
        assert api(role, "GET", "/api/v1/users").status_code == 403
        assert (
            api(
                role,
                "POST",
                "/api/v1/users",
                json={"email": "x@y.example", "role": "admin", "password": PASSWORD},
            ).status_code
            == 403
        )
    assert api(None, "GET", "/api/v1/users").status_code == 401
    listing = api("admin", "GET", "/api/v1/users").json()["users"]
    assert {u["email"] for u in listing} == {f"{r}@staff.example.com" for r in ("viewer", "editor", "admin")}
    assert all(len(u["tokens"]) == 1 for u in listing) and "token_hash" not in str(listing)
    bad = api(
        "admin", "POST", "/api/v1/users", json={"email": "x@y.example", "role": "boss", "password": PASSWORD}
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid"
    made = api(
        "admin",
        "POST",
        "/api/v1/users",
        json={"email": "x@y.example", "role": "viewer", "password": PASSWORD},
    )
    assert made.status_code == 201
    new_id = made.json()["id"]
    dup = api(
        "admin",
        "POST",
        "/api/v1/users",
        json={"email": "X@y.example", "role": "viewer", "password": PASSWORD},
    )
    assert dup.status_code == 409
    assert (
        api("admin", "POST", f"/api/v1/users/{new_id}/role", json={"role": "editor"}).json()["role"]
        == "editor"
    )
    issued = api("admin", "POST", f"/api/v1/users/{new_id}/tokens")
    assert issued.status_code == 201 and issued.json()["token"].startswith("nrt_")
    secret = issued.json()["token"]
    assert (
        api(None, "GET", "/api/v1/sequences", headers={"Authorization": f"Bearer {secret}"}).status_code
        == 200
    )
    assert api("admin", "POST", f"/api/v1/users/{new_id}/deactivate").json()["active"] is False
    assert (
        api(None, "GET", "/api/v1/sequences", headers={"Authorization": f"Bearer {secret}"}).status_code
        == 401
    )
    assert api("admin", "POST", f"/api/v1/users/{new_id}/tokens").status_code == 409
    assert api("admin", "POST", f"/api/v1/users/{new_id}/reactivate").json()["active"] is True
    with transaction(world) as session:
        token_id = session.scalar(select(ApiToken.id).where(ApiToken.user_id == new_id))
    assert api("admin", "POST", f"/api/v1/users/{new_id}/tokens/{token_id}/revoke").status_code == 200
    assert (
        api(None, "GET", "/api/v1/sequences", headers={"Authorization": f"Bearer {secret}"}).status_code
        == 401
    )
    assert (
        api("admin", "POST", f"/api/v1/users/{new_id}/password", json={"password": "short"}).status_code
        == 400
    )
    assert (
        api("admin", "POST", f"/api/v1/users/{new_id}/password", json={"password": NEW_PASSWORD}).status_code
        == 200
    )
    me = user_id(world, "admin@staff.example.com")
    last = api("admin", "POST", f"/api/v1/users/{me}/role", json={"role": "viewer"})
    assert last.status_code == 409 and last.json()["error"]["code"] == "conflict"
    assert api("admin", "POST", f"/api/v1/users/{me}/deactivate").status_code == 409
    assert api("admin", "POST", "/api/v1/users/99999/deactivate").status_code == 404
    assert audit_actions(world) == [
        "user.create", "user.role", "user.token", "user.deactivate", "user.reactivate", "user.revoke-token",
        "user.password",
    ]  # fmt: skip


# --- CLI ------------------------------------------------------------------------------------------------


def run(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_users_list_role_deactivate_from_the_cli(tokens, world) -> None:  # type: ignore[no-untyped-def]
    listing = run("users", "list").output
    assert (
        "admin@staff.example.com\tadmin\tactive" in listing and "viewer@staff.example.com\tviewer" in listing
    )
    assert run("users", "role", "viewer@staff.example.com", "editor").exit_code == 0
    assert run("users", "role", "nobody@staff.example.com", "editor").exit_code == 1
    last = run("users", "role", "admin@staff.example.com", "viewer")
    assert last.exit_code == 1 and "last active admin" in last.output
    assert run("users", "deactivate", "admin@staff.example.com").exit_code == 1
    assert run("users", "deactivate", "editor@staff.example.com").output.strip().endswith("deactivated")
    assert "editor@staff.example.com\teditor\tdeactivated" in run("users", "list").output
    assert run("users", "reactivate", "editor@staff.example.com").exit_code == 0
    assert audit_actions(world) == ["user.role", "user.deactivate", "user.reactivate"]
