"""The staff web UI: sign-in, throttling, session cookie, CSRF, the role matrix, and each page."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email import message_from_bytes

import pytest
from sqlalchemy import func, select

from nurture.core import clock
from nurture.core.db import transaction
from nurture.mail.transports import MEMORY_OUTBOX
from nurture.models import AuditLog, Delivery, LoginFailure, Sequence
from nurture.subscribers.enrollment import add_subscriber
from tests.support.staff import CSRF, PASSWORD, csrf_of, login, make_client

START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)


def test_pages_redirect_to_login_without_a_session(client) -> None:  # type: ignore[no-untyped-def]
    for path in ("/admin/sequences", "/admin/sequences/course", "/admin/audit", "/admin/subscribers?q=a"):
        response = client.get(path)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/admin/login?next=/admin/")
    assert client.post("/admin/sequences/course/pause", data={"csrf": "x"}).status_code == 303


def test_login_sets_a_safe_cookie_and_logout_ends_it(tokens, client) -> None:  # type: ignore[no-untyped-def]
    response = login(client, "viewer@staff.example.com")
    assert response.status_code == 303 and response.headers["location"] == "/admin/sequences"
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "secure" in cookie
    page = client.get("/admin/sequences")
    assert page.status_code == 200 and "The course" in page.text
    token = CSRF.search(page.text).group(1)  # type: ignore[union-attr]
    assert client.post("/admin/logout", data={"csrf": token}).status_code == 303
    assert client.get("/admin/sequences").status_code == 303


def test_wrong_password_is_401_and_login_form_needs_its_csrf_token(tokens, client) -> None:  # type: ignore[no-untyped-def]
    assert login(client, "viewer@staff.example.com", "wrong password!!").status_code == 401
    assert login(client, "nobody@staff.example.com").status_code == 401
    csrf_of(client)
    response = client.post(
        "/admin/login", data={"email": "viewer@staff.example.com", "password": PASSWORD, "csrf": "forged"}
    )
    assert response.status_code == 403 and "nurture_staff" not in response.headers.get("location", "")


def test_five_failures_lock_the_account_and_twenty_lock_the_ip(tokens, world) -> None:  # type: ignore[no-untyped-def]
    with make_client("192.0.2.1") as client:
        for _ in range(5):
            assert login(client, "editor@staff.example.com", "not the password").status_code == 401
        locked = login(client, "editor@staff.example.com")  # even the right password
        assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
    with make_client("192.0.2.2") as other:
        assert login(other, "editor@staff.example.com").status_code == 429  # per account, from anywhere
        assert login(other, "admin@staff.example.com").status_code == 303
    with make_client("192.0.2.3") as client:
        for i in range(20):
            assert login(client, f"guess{i}@staff.example.com", "nope nope nope").status_code == 401
        assert login(client, "viewer@staff.example.com").status_code == 429
    with transaction(world) as session:
        assert session.scalar(select(func.count()).select_from(LoginFailure)) == 25


def test_cross_site_and_tokenless_posts_are_refused(signed_in, world) -> None:  # type: ignore[no-untyped-def]
    client = signed_in("editor")
    token = csrf_of(client, "/admin/sequences/course")
    assert client.post("/admin/sequences/course/pause", data={}).status_code == 403
    assert client.post("/admin/sequences/course/pause", data={"csrf": "guess"}).status_code == 403
    evil = client.post(
        "/admin/sequences/course/pause", data={"csrf": token}, headers={"Origin": "https://evil.example"}
    )
    assert evil.status_code == 403
    cross = client.post(
        "/admin/sequences/course/pause", data={"csrf": token}, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert cross.status_code == 403
    with transaction(world) as session:
        assert session.scalar(select(Sequence.status)) == "active"
    ok = client.post(
        "/admin/sequences/course/pause", data={"csrf": token}, headers={"Origin": "https://nurture.test"}
    )
    assert ok.status_code == 303


@pytest.mark.parametrize("role", ["viewer", "editor", "admin"])
def test_role_matrix_in_the_ui(signed_in, world, role) -> None:  # type: ignore[no-untyped-def]
    client = signed_in(role)
    for path in (
        "/admin/sequences",
        "/admin/sequences/course",
        "/admin/sequences/course/steps/middle",
        "/admin/sequences/course/results",
        "/admin/subscribers?q=example",
    ):
        assert client.get(path).status_code == 200, path
    token = csrf_of(client, "/admin/sequences/course")
    pause = client.post("/admin/sequences/course/pause", data={"csrf": token})
    assert pause.status_code == (403 if role == "viewer" else 303)
    if role != "viewer":
        resume = client.post("/admin/sequences/course/resume", data={"csrf": token, "policy": "shift"})
        assert resume.status_code == 303
    assert client.get("/admin/audit").status_code == (200 if role == "admin" else 403)
    # Only editors and admins see the control forms.
    assert ("Pause sequence" in client.get("/admin/sequences/course").text) == (role != "viewer")


def test_pause_resume_schedule_through_forms_with_bad_input_rerendered(signed_in, world) -> None:  # type: ignore[no-untyped-def]
    client = signed_in("editor")
    token = csrf_of(client, "/admin/sequences/course")
    done = client.post("/admin/sequences/course/pause", data={"csrf": token})
    assert done.status_code == 303
    page = client.get(done.headers["location"])
    assert "Paused" in page.text and ">paused<" in page.text
    again = client.post("/admin/sequences/course/pause", data={"csrf": token})
    assert again.status_code == 409 and "already paused" in again.text
    missing = client.post("/admin/sequences/course/resume", data={"csrf": token})
    assert missing.status_code == 400 and "Choose how to resume" in missing.text
    assert (
        client.post("/admin/sequences/course/resume", data={"csrf": token, "policy": "send_due"}).status_code
        == 303
    )
    for value in ("", "not a date", "2001-01-01T09:00"):
        bad = client.post(
            "/admin/sequences/course/schedule", data={"csrf": token, "activate_at": value, "tz": "UTC"}
        )
        assert bad.status_code == 400, value
    bad_zone = client.post(
        "/admin/sequences/course/schedule",
        data={"csrf": token, "activate_at": "2099-01-01T09:00", "tz": "Mars/Base"},
    )
    assert bad_zone.status_code == 400
    ok = client.post(
        "/admin/sequences/course/schedule",
        data={"csrf": token, "activate_at": "2099-01-05T09:00", "tz": "America/New_York"},
    )
    assert ok.status_code == 303
    with transaction(world) as session:
        sequence = session.scalar(select(Sequence))
        assert sequence.status == "scheduled"
        assert sequence.activate_at == datetime(2099, 1, 5, 14, 0, tzinfo=UTC)
        actions = [a.action for a in session.scalars(select(AuditLog).order_by(AuditLog.id))]
    assert actions == ["sequence.pause", "sequence.resume", "sequence.schedule"]


def test_timeline_preview_test_send_results_and_subscriber_pages(signed_in, world) -> None:  # type: ignore[no-untyped-def]
    with clock.frozen(START), transaction(world) as session:
        add_subscriber(
            session, "ana@example.com", first_name="Ana", timezone="Europe/Berlin", sequence_slug="course"
        )
    client = signed_in("viewer")
    timeline = client.get("/admin/sequences/course?signup_at=2026-03-06T18:00&tz=America/Chicago")
    assert timeline.status_code == 200
    assert "Mon 2026-03-09 09:00 CDT" in timeline.text  # a Friday-evening signup waits for Monday's window
    assert "Cannot build the timeline" in client.get("/admin/sequences/course?tz=Nowhere/Else").text
    preview = client.get("/admin/sequences/course/steps/middle?subscriber=ana@example.com")
    assert preview.status_code == 200
    assert "Demo 2 of 3" in preview.text and "Hello Ana" in preview.text and "srcdoc=" in preview.text
    assert "Tue 2026-03-03 16:00 CET" in preview.text  # her own due time on her own clock
    assert client.get("/admin/sequences/course/steps/nope").status_code == 404
    token = csrf_of(client, "/admin/sequences/course/steps/hello")
    MEMORY_OUTBOX.outbox.clear()
    sent = client.post("/admin/sequences/course/steps/hello/test", data={"csrf": token})
    assert sent.status_code == 303
    [message] = [message_from_bytes(m.data) for m in MEMORY_OUTBOX.outbox]
    assert message["Subject"].startswith("[TEST] ") and message["To"] == "viewer@staff.example.com"
    with transaction(world) as session:
        assert (
            session.scalar(select(func.count()).select_from(Delivery).where(Delivery.status == "sent")) == 0
        )
    results = client.get("/admin/sequences/course/results")
    assert results.status_code == 200 and "<svg" in results.text and 'data-step="hello"' in results.text
    search = client.get("/admin/subscribers?q=ana")
    link = re.search(r'href="(/admin/subscribers/\d+)"', search.text)
    assert link, search.text
    detail = client.get(link.group(1))
    assert detail.status_code == 200 and "Explain log" in detail.text and "pending" in detail.text
    assert client.get("/admin/subscribers/99999").status_code == 404
    assert client.get("/admin/subscribers/x").status_code == 404
