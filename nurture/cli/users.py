"""``nurture users ...``: staff accounts, API tokens and the first-admin setup link."""

from __future__ import annotations

import sys

import click

from nurture.cli.common import load_settings
from nurture.core.config import Settings


@click.group()
def users() -> None:
    """Staff accounts for the web UI and the JSON API (docs/staff.md)."""


def _read_password() -> str:
    if sys.stdin.isatty():
        return click.prompt("password", hide_input=True, confirmation_prompt=True)
    # Piped: the first line is the password (so scripts need no terminal), without its line end.
    return sys.stdin.readline().rstrip("\r\n")


@users.command("create")
@click.argument("email")
@click.option("--role", type=click.Choice(["admin", "editor", "viewer"]), required=True)
def users_create(email: str, role: str) -> None:
    """Create a staff user; the password is prompted for (or read from stdin when it is not a terminal)."""
    from nurture.core.db import transaction
    from nurture.staff.accounts import StaffError, audit, check_password, create_user

    load_settings()
    password = _read_password()
    try:
        check_password(password)
        with transaction() as session:
            user = create_user(session, email, role, password)
            audit(session, None, "user.create", f"user:{user.email}", None, {"role": role})
    except StaffError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created {role} {user.email}")


@users.command("token")
@click.argument("email")
def users_token(email: str) -> None:
    """Create an API token for EMAIL and print it once (only its hash is stored)."""
    from nurture.core.db import transaction
    from nurture.staff.accounts import audit, find_user, issue_token

    load_settings()
    with transaction() as session:
        user = find_user(session, email)
        if user is None or not user.active:
            raise click.ClickException(f"no active staff user {email.strip().lower()}")
        token = issue_token(session, user)
        audit(session, None, "user.token", f"user:{user.email}")
    click.echo(token)


def setup_token(settings: Settings) -> str | None:
    """A fresh first-admin setup token while no admin exists (nurture.staff.first_admin), else None."""
    from datetime import timedelta

    from nurture.core.db import transaction
    from nurture.staff import first_admin

    with transaction() as session:
        return first_admin.issue(session, timedelta(hours=settings.web.setup_link_hours))


@users.command("setup-link")
def users_setup_link() -> None:
    """Print a one-time link that creates the first admin in the browser (only while no admin exists)."""
    from nurture.staff import first_admin

    settings = load_settings()
    token = setup_token(settings)
    if token is None:
        raise click.ClickException("an admin exists already: sign in, or ask them for an account")
    click.echo(first_admin.link(settings.web.base_url, token))
    hours = settings.web.setup_link_hours
    click.echo(f"It works once, for {hours} hours, and only until an admin exists.", err=True)


@users.command("list")
def users_list() -> None:
    """Every staff user with role and status."""
    from nurture.core.db import transaction
    from nurture.staff.accounts import list_users

    load_settings()
    with transaction() as session:
        for user in list_users(session):
            last = f"{user.last_login_at:%Y-%m-%d %H:%M}" if user.last_login_at else "never"
            status = "active" if user.active else "deactivated"
            click.echo(f"{user.email}\t{user.role}\t{status}\tlast sign-in {last}")


def _change_user(email: str, action: str, change) -> str:  # type: ignore[no-untyped-def]
    from nurture.core.db import transaction
    from nurture.staff.accounts import StaffError, audit, find_user, get_user, user_snapshot

    load_settings()
    try:
        with transaction() as session:
            found = find_user(session, email)
            if found is None:
                raise StaffError(f"no staff user {email.strip().lower()}")
            user = get_user(session, found.id, lock=True)
            before = user_snapshot(user)
            change(session, user)
            audit(session, None, f"user.{action}", f"user:{user.email}", before, user_snapshot(user))
            return f"{user.email}: {user.role}, {'active' if user.active else 'deactivated'}"
    except StaffError as exc:
        raise click.ClickException(str(exc)) from None


@users.command("role")
@click.argument("email")
@click.argument("role", type=click.Choice(["admin", "editor", "viewer"]))
def users_role(email: str, role: str) -> None:
    """Change EMAIL's role (the last active admin cannot be demoted)."""
    from nurture.staff.accounts import set_role

    click.echo(_change_user(email, "role", lambda session, user: set_role(session, user, role)))


@users.command("deactivate")
@click.argument("email")
def users_deactivate(email: str) -> None:
    """Deactivate EMAIL: their sessions and API tokens stop working at once."""
    from nurture.staff.accounts import set_active

    click.echo(_change_user(email, "deactivate", lambda session, user: set_active(session, user, False)))


@users.command("reactivate")
@click.argument("email")
def users_reactivate(email: str) -> None:
    """Reactivate EMAIL."""
    from nurture.staff.accounts import set_active

    click.echo(_change_user(email, "reactivate", lambda session, user: set_active(session, user, True)))
