"""CSV import and export and enrolling existing subscribers, from the web UI and the JSON API: the per-row
report, consent source required, nothing re-added that must not be, who may do it."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from nurture.core import clock
from nurture.core.db import transaction
from nurture.models import AuditLog, Delivery, Enrollment, Subscriber, Suppression
from nurture.subscribers.enrollment import add_subscriber, unsubscribe
from tests.support.helpers import subscribe
from tests.support.staff import csrf_of

NOW = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
CSV_ROWS = "\r\n".join(
    [
        "email,first_name,timezone,company",
        "ana@example.com,Ana,Europe/Berlin,Acme",
        "not-an-email,Zed,,",
        "ana@example.com,Again,,",
        "bounced@example.com,B,,",
        "known@example.com,Kay,,",
        "cy@example.com,Cy,Mars/Olympus,",
        "",
    ]
)
UPLOAD = "\ufeff" + CSV_ROWS


@pytest.fixture(autouse=True)
def _frozen() -> None:
    clock.set_now(NOW)


@pytest.fixture
def people(world):  # type: ignore[no-untyped-def]
    with transaction(world) as session:
        add_subscriber(session, "known@example.com", first_name="Kay")
        session.add(Suppression(email="bounced@example.com", reason="hard-bounce"))
    return world


def count(factory, model, *where) -> int:  # type: ignore[no-untyped-def]
    with transaction(factory) as session:
        return session.scalar(select(func.count()).select_from(model).where(*where))


def test_import_page_uploads_a_csv_and_reports_each_bad_row(signed_in, people) -> None:  # type: ignore[no-untyped-def]
    editor = signed_in("editor")
    page = editor.get("/admin/import")
    assert page.status_code == 200 and 'enctype="multipart/form-data"' in page.text
    token = csrf_of(editor, "/admin/import")
    files = {"file": ("people.csv", UPLOAD.encode(), "text/csv")}
    no_source = editor.post(
        "/admin/import", data={"csrf": token, "sequence": "course", "consent_source": " "}, files=files
    )
    assert no_source.status_code == 400 and "consent source" in no_source.text
    no_file = editor.post(
        "/admin/import", data={"csrf": token, "sequence": "course", "consent_source": "webinar"}
    )
    assert no_file.status_code == 400 and "Choose a CSV file" in no_file.text
    forged = editor.post(
        "/admin/import", data={"csrf": "forged", "sequence": "course", "consent_source": "w"}, files=files
    )
    assert forged.status_code == 403
    bad_file = editor.post(
        "/admin/import",
        data={"csrf": token, "sequence": "course", "consent_source": "w"},
        files={"file": ("x.csv", b"name\nAna\n", "text/csv")},
    )
    assert bad_file.status_code == 400 and "needs an &#39;email&#39; column" in bad_file.text
    assert count(people, Subscriber) == 1
    done = editor.post(
        "/admin/import",
        data={"csrf": token, "sequence": "course", "consent_source": "webinar 2026-02"},
        files=files,
    )
    assert done.status_code == 200, done.text
    text = done.text
    assert "Imported (new, enrolled): <strong>1</strong>" in text
    assert "Already subscribed, now enrolled: 1" in text and "Skipped (suppressed): 1" in text
    assert "Rows refused: 3" in text
    assert (
        "<td>3</td><td>not-an-email</td>" in text and "duplicate of line 2" in text and "Mars/Olympus" in text
    )
    assert count(people, Delivery) == 8  # ana and known, four steps each
    with transaction(people) as session:
        [entry] = session.scalars(select(AuditLog).where(AuditLog.action == "subscribers.import")).all()
    assert (
        entry.actor == "editor@staff.example.com"
        and entry.after["imported"] == 1
        and entry.after["errors"] == 3
    )


def test_import_and_export_through_the_api(api, people) -> None:  # type: ignore[no-untyped-def]
    path = "/api/v1/subscribers/import?sequence=course&consent_source=webinar"
    body = UPLOAD.encode()
    csv_type = {"Content-Type": "text/csv"}
    assert api(None, "POST", path, content=body, headers=csv_type).status_code == 401
    assert api("viewer", "POST", path, content=body, headers=csv_type).status_code == 403
    assert api("editor", "POST", path, content=body).status_code == 415
    missing = api(
        "editor", "POST", "/api/v1/subscribers/import?sequence=course", content=body, headers=csv_type
    )
    assert missing.status_code == 400 and "consent-source" in missing.json()["error"]["message"]
    unknown = api(
        "editor",
        "POST",
        "/api/v1/subscribers/import?sequence=nope&consent_source=w",
        content=body,
        headers=csv_type,
    )
    assert unknown.status_code == 400 and "no sequence" in unknown.json()["error"]["message"]
    assert count(people, Subscriber) == 1  # refused files wrote nothing
    done = api("editor", "POST", path, content=body, headers=csv_type)
    assert done.status_code == 200, done.text
    report = done.json()
    assert (report["imported"], report["enrolled_existing"], report["skipped"]) == (1, 1, {"suppressed": 1})
    assert [(e["line"], e["email"]) for e in report["errors"]] == [
        (3, "not-an-email"), (4, "ana@example.com"), (7, "cy@example.com"),
    ]  # fmt: skip
    assert api("viewer", "GET", "/api/v1/subscribers.csv").status_code == 403
    export = api("editor", "GET", "/api/v1/subscribers.csv")
    assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert [r["email"] for r in rows] == ["known@example.com", "ana@example.com"]
    assert '"company": "Acme"' in rows[1]["attributes"]


def test_ui_export_is_a_csv_download_for_editors(signed_in, people) -> None:  # type: ignore[no-untyped-def]
    assert signed_in("viewer").get("/admin/subscribers.csv").status_code == 403
    download = signed_in("admin").get("/admin/subscribers.csv")
    assert download.status_code == 200 and "attachment" in download.headers["content-disposition"]
    assert download.text.splitlines()[1].startswith("known@example.com,Kay,")


def test_enroll_existing_from_the_sequence_page(signed_in, people, three_step) -> None:  # type: ignore[no-untyped-def]
    from tests.support.helpers import sync_sequences

    sync_sequences(people)
    subscribe(people, "in@example.com", "three-step")
    with transaction(people) as session:
        add_subscriber(session, "left@example.com")
        unsubscribe(
            session, session.scalar(select(Subscriber).where(Subscriber.email == "left@example.com")), "t"
        )
    viewer = signed_in("viewer")
    assert viewer.get("/admin/sequences/three-step/enroll").status_code == 403
    editor = signed_in("editor")
    assert "Enroll existing subscribers" in editor.get("/admin/sequences/three-step").text
    token = csrf_of(editor, "/admin/sequences/three-step/enroll")
    assert (
        editor.post(
            "/admin/sequences/three-step/enroll", data={"csrf": token, "who": "list", "emails": ""}
        ).status_code
        == 400
    )
    past = editor.post(
        "/admin/sequences/three-step/enroll",
        data={"csrf": token, "who": "all", "when": "later", "start_at": "2026-03-01T09:00", "tz": "UTC"},
    )
    assert past.status_code == 400 and "must not be in the past" in past.text
    listed = editor.post(
        "/admin/sequences/three-step/enroll",
        data={
            "csrf": token,
            "who": "list",
            "emails": "known@example.com\nleft@example.com\nin@example.com\nnope\nghost@example.com",
        },
    )
    assert listed.status_code == 200
    for line in (
        "Enrolled: <strong>1</strong>",
        "Already enrolled: 1",
        "Unsubscribed: 1",
        "Not found: 1",
        "Not an email address: 1",
    ):
        assert line in listed.text, line
    later = editor.post(
        "/admin/sequences/three-step/enroll",
        data={
            "csrf": token,
            "who": "list",
            "when": "later",
            "start_at": "2026-03-09T09:00",
            "tz": "America/Chicago",
        },
        files={"file": ("list.csv", b"email\r\nbounced@example.com\r\n", "text/csv")},
    )
    assert later.status_code == 200 and "Not found: 1" in later.text  # never a subscriber
    subscribe(people, "new@example.com", "course")
    everyone = editor.post(
        "/admin/sequences/three-step/enroll",
        data={
            "csrf": token,
            "who": "all",
            "when": "later",
            "start_at": "2026-03-09T09:00",
            "tz": "America/Chicago",
        },
    )
    assert everyone.status_code == 200 and "Enrolled: <strong>1</strong>" in everyone.text
    with transaction(people) as session:
        started = session.scalar(
            select(Enrollment.enrolled_at)
            .join(Subscriber)
            .where(Subscriber.email == "new@example.com", Enrollment.sequence_id != 1)
        )
        actions = list(session.scalars(select(AuditLog.action).order_by(AuditLog.id)))
    assert started == datetime(2026, 3, 9, 14, 0, tzinfo=UTC)  # 09:00 CDT
    assert actions == ["sequence.enroll"] * 3


def test_long_pasted_lists_are_read_and_oversized_forms_get_413(signed_in, people, three_step) -> None:  # type: ignore[no-untyped-def]
    from tests.support.helpers import sync_sequences

    sync_sequences(people)
    editor = signed_in("editor")
    token = csrf_of(editor, "/admin/sequences/three-step/enroll")
    # 5,000 addresses (about 120 KB): well past the public forms' 32 KB limit, still a staff form.
    pasted = "\n".join(f"person{i}@example.com" for i in range(5000))
    listed = editor.post(
        "/admin/sequences/three-step/enroll", data={"csrf": token, "who": "list", "emails": pasted}
    )
    assert listed.status_code == 200 and "Not found: 5000" in listed.text
    huge = editor.post(
        "/admin/sequences/three-step/enroll",
        data={"csrf": token, "who": "list", "emails": "x" * (3 * 1024 * 1024)},
    )
    assert huge.status_code == 413 and "at most" in huge.text
    broken = editor.post(
        "/admin/sequences/three-step/enroll",
        content=b"--nope\r\nnot multipart at all",
        headers={"content-type": "multipart/form-data; boundary=zzz"},
    )
    assert broken.status_code in (400, 403) and "Internal" not in broken.text
    assert count(people, Enrollment) == 0
