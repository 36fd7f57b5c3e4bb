"""A fresh install: the start page, the one-time setup link that creates the first admin in the browser, the
summary `nurture run` prints, and the dev mailbox (development only)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from nurture.cli import main
from nurture.cli.run_summary import summary
from nurture.core import clock
from nurture.core.config import get_settings
from nurture.core.db import transaction
from nurture.models import AuditLog, SetupToken, StaffUser
from nurture.staff import first_admin
from nurture.staff.accounts import create_user
from tests.support.staff import CSRF, PASSWORD, csrf_of, make_client

LINK = re.compile(r"https?://\S+/admin/setup/(\S+)")


def _issue(factory, hours: int = 24) -> str:  # type: ignore[no-untyped-def]
    with transaction(factory) as session:
        token = first_admin.issue(session, timedelta(hours=hours))
    assert token is not None
    return token


def _create(client, token: str, email: str = "first@clinic.example", again: str | None = None):  # type: ignore[no-untyped-def]
    form = client.get(f"/admin/setup/{token}")
    assert form.status_code == 200, form.text
    csrf = CSRF.search(form.text).group(1)  # type: ignore[union-attr]
    return client.post(
        "/admin/setup",
        data={
            "csrf": csrf,
            "token": token,
            "email": email,
            "password": PASSWORD,
            "password_again": again or PASSWORD,
        },
    )


def test_the_start_page_points_to_signup_and_staff_and_hides_the_mailbox_outside_development(client) -> None:  # type: ignore[no-untyped-def]
    page = client.get("/")
    assert page.status_code == 200
    assert 'href="/subscribe"' in page.text and 'href="/admin/"' in page.text
    assert "/dev/mail" not in page.text  # NURTURE_ENV=test: no dev mailbox, and its pages are 404
    assert client.get("/dev/mail").status_code == 404
    assert client.get("/static/admin.css").status_code == 200


def test_sign_in_page_offers_setup_until_an_admin_exists(world) -> None:  # type: ignore[no-untyped-def]
    with make_client() as client:
        assert "No admin account yet" in client.get("/admin/login").text
        with transaction(world) as session:
            create_user(session, "ed@staff.example.com", "editor", PASSWORD)
        assert "No admin account yet" in client.get("/admin/login").text  # an editor is not an admin
        with transaction(world) as session:
            create_user(session, "root@staff.example.com", "admin", PASSWORD)
        assert "No admin account yet" not in client.get("/admin/login").text


def test_setup_link_creates_the_first_admin_once_signs_them_in_and_is_audited(world) -> None:  # type: ignore[no-untyped-def]
    token = _issue(world)
    with transaction(world) as session:
        stored = session.scalar(select(SetupToken.token_hash))
        assert stored is not None and token not in stored  # only a hash is kept
    with make_client() as client:
        created = _create(client, token)
        assert created.status_code == 303 and created.headers["location"].startswith("/admin/?done=")
        home = client.get(created.headers["location"])
        assert home.status_code == 200 and "you are the first admin" in home.text  # signed in
        assert client.get("/admin/users").status_code == 200  # as an admin
        again = client.get(f"/admin/setup/{token}")
        assert again.status_code == 410 and "Setup is done" in again.text
    with make_client() as stranger:
        assert _create_refused(stranger, token) == 410
    with transaction(world) as session:
        assert (
            session.scalar(select(StaffUser.role).where(StaffUser.email == "first@clinic.example")) == "admin"
        )
        actions = list(session.scalars(select(AuditLog.action).order_by(AuditLog.id)))
        assert actions == ["setup.link-issued", "user.setup"]


def _create_refused(client, token: str) -> int:  # type: ignore[no-untyped-def]
    csrf = csrf_of(client)
    answer = client.post(
        "/admin/setup",
        data={
            "csrf": csrf,
            "token": token,
            "email": "late@clinic.example",
            "password": PASSWORD,
            "password_again": PASSWORD,
        },
    )
    return answer.status_code


def test_setup_refuses_a_wrong_expired_or_replaced_link_a_bad_form_and_a_cli_made_admin(world) -> None:  # type: ignore[no-untyped-def]
    with make_client() as client:
        assert client.get("/admin/setup/not-the-token").status_code == 404
        first = _issue(world)
        second = _issue(world)  # a new link replaces the old one
        assert client.get(f"/admin/setup/{first}").status_code == 404
        differ = _create(client, second, again=PASSWORD + "!")
        assert differ.status_code == 400 and "differ" in differ.text
        weak = client.post(
            "/admin/setup",
            data={
                "csrf": csrf_of(client),
                "token": second,
                "email": "a@b.example",
                "password": "short",
                "password_again": "short",
            },
        )
        assert weak.status_code == 400 and "at least 12" in weak.text
        forged = client.post(
            "/admin/setup",
            data={
                "csrf": "forged",
                "token": second,
                "email": "a@b.example",
                "password": PASSWORD,
                "password_again": PASSWORD,
            },
        )
        assert forged.status_code == 403
        with transaction(world) as session:
            assert session.scalar(select(func.count()).select_from(StaffUser)) == 0  # nothing created
        clock.set_now(clock.now() + timedelta(hours=25))
        assert client.get(f"/admin/setup/{second}").status_code == 404  # expired
        clock.set_now(None)
        third = _issue(world)
        with transaction(world) as session:
            create_user(session, "cli@staff.example.com", "admin", PASSWORD)  # `nurture users create`
        assert client.get(f"/admin/setup/{third}").status_code == 410
        with transaction(world) as session:
            assert first_admin.issue(session, timedelta(hours=1)) is None  # no link once an admin exists
            assert session.scalar(select(func.count()).select_from(SetupToken)) == 0


def test_pasting_the_link_on_the_sign_in_page_leads_to_the_form(world) -> None:  # type: ignore[no-untyped-def]
    token = _issue(world)
    link = first_admin.link("http://127.0.0.1:8000", token)
    with make_client() as client:
        pasted = client.post("/admin/setup", data={"csrf": csrf_of(client), "token": f"  {link}  "})
        assert pasted.status_code == 200 and 'name="password_again"' in pasted.text
        assert f'value="{token}"' in pasted.text
        assert (
            client.post("/admin/setup", data={"csrf": csrf_of(client), "token": "x" * 5000}).status_code
            == 404
        )


def test_setup_tokens_stay_out_of_the_logs() -> None:
    from nurture.core.logs import redact_tokens

    assert (
        redact_tokens('"GET /admin/setup/abc-DEF_123 HTTP/1.1" 200')
        == '"GET /admin/setup/[token] HTTP/1.1" 200'
    )


def test_run_summary_says_what_runs_where_mail_goes_and_prints_the_setup_link(set_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    set_env(
        env="development",
        smtp_url=f"maildir://{tmp_path}/mail",
        database_url="postgresql://u:s3cret@db/nurture",
    )
    text = summary(get_settings(), "http://127.0.0.1:8000", "TOKEN123")
    assert "web, worker (sends email) and beat" in text
    assert "s3cret" not in text and "postgresql://u:***@db/nurture" in text
    assert "the dev mailbox, a Maildir" in text and "http://127.0.0.1:8000/dev/mail" in text
    assert "http://127.0.0.1:8000/admin/setup/TOKEN123" in text
    assert "celery" not in text.lower()
    set_env(
        env="production", smtp_url="smtp://relay.example:587", secret_key="x" * 40, postal_address="1 Real St"
    )
    quiet = summary(get_settings(), "https://mail.example", None)
    assert "/dev/mail" not in quiet and "setup" not in quiet and "SMTP at relay.example:587" in quiet


def test_cli_setup_link_prints_a_working_link_until_an_admin_exists(world) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    printed = runner.invoke(main, ["users", "setup-link"])
    assert printed.exit_code == 0, printed.output
    token = LINK.search(printed.output).group(1)  # type: ignore[union-attr]
    with make_client() as client:
        assert _create(client, token).status_code == 303
    refused = runner.invoke(main, ["users", "setup-link"])
    assert refused.exit_code == 1 and "an admin exists" in refused.output


@pytest.fixture
def dev_mail(set_env, tmp_path):  # type: ignore[no-untyped-def]
    folder = tmp_path / "devmail"
    set_env(env="development", smtp_url=f"maildir://{folder}")
    return folder


def test_dev_mailbox_lists_and_shows_what_was_sent_in_development(dev_mail, world) -> None:  # type: ignore[no-untyped-def]
    from nurture.mail.transports import MaildirTransport

    MaildirTransport(dev_mail).send(
        "hello@example.com",
        "ana@example.com",
        b"From: hello@example.com\r\nTo: ana@example.com\r\nSubject: Welcome, Ana\r\n"
        b"Date: Mon, 02 Mar 2026 15:00:00 +0000\r\nContent-Type: text/plain\r\n\r\nHello Ana\r\n",
    )
    with make_client() as client:
        assert 'href="/dev/mail"' in client.get("/").text
        listing = client.get("/dev/mail")
        assert listing.status_code == 200 and "Welcome, Ana" in listing.text
        key = re.search(r'href="/dev/mail/([^"]+)"', listing.text).group(1)  # type: ignore[union-attr]
        letter = client.get(f"/dev/mail/{key}")
        assert letter.status_code == 200 and "Hello Ana" in letter.text
        assert client.get("/dev/mail/..%2F..%2Fetc%2Fpasswd").status_code == 404
        assert client.get("/dev/mail/no-such-key").status_code == 404


@pytest.mark.slow
def test_nurture_run_prints_its_summary_and_a_working_setup_link_without_celery_banners(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import urllib.request

    from tests.support.processes import Processes, free_port, wait_until

    port = free_port()
    env = {
        "NURTURE_ENV": "development",
        "NURTURE_SMTP_URL": "",
        "NURTURE_DATABASE_URL": "",
        "NURTURE_BROKER_URL": "",
        "NURTURE_VAR_DIR": str(tmp_path / "var"),
    }
    processes = Processes(tmp_path)
    run = processes.start("run", ["run", "--port", str(port)], env)
    log = tmp_path / "run.log"

    def printed_link() -> str | None:
        found = LINK.search(log.read_text(errors="replace"))
        return found.group(0) if found else None

    def answers(url: str) -> int | None:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return answer.status
        except OSError:
            return None

    try:
        link = wait_until(printed_link, 60, "the setup link in the summary")
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/healthz") == 200, 60, "the web app")
        with urllib.request.urlopen(link.replace("127.0.0.1:8000", f"127.0.0.1:{port}"), timeout=5) as page:
            assert "Create the first admin" in page.read().decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as start:
            assert 'href="/dev/mail"' in start.read().decode()
        wait_until(lambda: "ready." in log.read_text(errors="replace"), 60, "the worker to start")
        text = log.read_text(errors="replace")
        assert f"http://127.0.0.1:{port}/admin/      staff area" in text
        assert "the dev mailbox, a Maildir" in text
        # Celery's banners and its warning about root are gone; the summary said what they said.
        assert "-------------- celery@" not in text and "[config]" not in text
        assert "superuser privileges" not in text and "No hostname was supplied" not in text
    except AssertionError:
        print(processes.logs())
        raise
    finally:
        processes.stop_all()
    assert run.poll() is not None
