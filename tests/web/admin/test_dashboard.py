"""The staff pages that help decide: the dashboard (figures, trends, alerts), the subscriber list (filters,
sorting, pages, bulk actions behind a confirmation), results per day with their CSV, the timeline strip,
and long work as jobs with progress (import, export, enrolling)."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, date, datetime, timedelta
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from nurture.core import clock
from nurture.core.db import transaction
from nurture.mail.transports import MemoryTransport
from nurture.models import AuditLog, Delivery, Enrollment, Event, Job, Sequence, Subscriber, WebhookEndpoint
from nurture.sequences import figures_over_time
from nurture.sequences.schedule import SendWindow
from nurture.staff import jobs
from nurture.subscribers.enrollment import unsubscribe
from nurture.web.admin.timeline import day_strip
from tests.support.helpers import dispatch_inline, make_sender, subscribe
from tests.support.staff import csrf_of

START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)  # Monday 10:00 in New York: inside the course's window


@pytest.fixture
def sent_week(world):  # type: ignore[no-untyped-def]
    """Four signups on each of Wed, Thu and Fri (10:00 in New York), each day's mail sent, then Monday's;
    one of Wednesday's people unsubscribed. Sent: Wed 4, Thu 8, Fri 8, Mon 12 (Saturday's and Sunday's
    steps wait for the weekday window)."""
    sender = make_sender(world, MemoryTransport())
    for day, days_ago in enumerate((5, 4, 3)):
        clock.set_now(START - timedelta(days=days_ago))
        for n in range(4):
            subscribe(world, f"d{day}n{n}@example.com", "course", first_name=f"D{day}N{n}")
        dispatch_inline(world, sender)
    clock.set_now(START)
    dispatch_inline(world, sender)
    with transaction(world) as session:
        leaving = session.scalar(select(Subscriber).where(Subscriber.email == "d0n0@example.com"))
        unsubscribe(session, leaving, source="link")  # type: ignore[arg-type]
    return world


def _post_pairs(client, path: str, pairs: list[tuple[str, str]]):  # type: ignore[no-untyped-def]
    """A form with repeated fields (checkboxes), as a browser sends it."""
    return client.post(
        path, content=urlencode(pairs), headers={"Content-Type": "application/x-www-form-urlencoded"}
    )


def _count(factory, *where) -> int:  # type: ignore[no-untyped-def]
    with transaction(factory) as session:
        return session.scalar(select(func.count()).select_from(Delivery).where(*where)) or 0


def test_overview_counts_sends_per_local_day_and_rates_with_their_trend(sent_week) -> None:  # type: ignore[no-untyped-def]
    with transaction(sent_week) as session:
        view = figures_over_time.overview(session, ZoneInfo("America/New_York"), days=30)
    assert len(view.days) == 30 and view.days[-1] == date(2026, 3, 2)
    assert view.sent_per_day[-6:] == [4, 8, 8, 0, 0, 12]  # Wed .. Mon
    assert view.sent_7d == 32 == _count(sent_week, Delivery.status == "sent")
    assert view.unsubscribes.count == 1 and view.unsubscribes.value == pytest.approx(1 / 32)
    assert view.unsubscribes.trend == ""  # nothing sent the week before: no trend to show
    assert view.active_enrollments == 11 and view.held_unknown == 0 and view.paused_sequences == []


def test_a_rate_compares_with_the_week_before() -> None:
    worse = figures_over_time.Rate(count=3, sent=100, previous_count=1, previous_sent=100)
    assert worse.trend == "up" and worse.value == 0.03 and worse.previous == 0.01
    assert (
        figures_over_time.Rate(1, 100, 1, 100).trend == "flat"
        and figures_over_time.Rate(0, 0, 0, 0).value is None
    )


def test_dashboard_shows_the_week_and_alerts_that_need_a_person(signed_in, sent_week) -> None:  # type: ignore[no-untyped-def]
    viewer = signed_in("viewer")
    calm = viewer.get("/admin/")
    assert calm.status_code == 200 and "Nothing needs you right now" in calm.text
    assert re.search(r'id="sent-7d">(\d+)<', calm.text).group(1) == str(
        _count(sent_week, Delivery.status == "sent")
    )  # type: ignore[union-attr]
    assert "<svg" in calm.text and "emails sent" in calm.text
    with transaction(sent_week) as session:
        session.scalar(select(Sequence)).status = "paused"  # type: ignore[union-attr]
        session.scalars(select(Delivery).where(Delivery.status == "pending")).first().status = "ambiguous"  # type: ignore[union-attr]
        session.add(
            WebhookEndpoint(
                url="https://crm.example/hook", secret="x", enabled=False, disabled_reason="10 failures"
            )
        )
        # Hard bounces above the limit (NURTURE_ALERT_BOUNCE_RATE, 2%): three of the week's sends.
        for delivery_id in session.scalars(select(Delivery.id).where(Delivery.status == "sent").limit(3)):
            session.add(Event(kind="bounced", delivery_id=delivery_id))
    alerts = viewer.get("/admin/").text.split('id="alerts"')[1].split("</ul>")[0]
    assert "held with an unknown outcome" in alerts and 'href="/admin/subscribers?status=held"' in alerts
    assert "Sequence course is paused" in alerts
    assert "Webhook https://crm.example/hook is disabled (10 failures)" in alerts
    assert "Bounce rate" in alerts and "Gmail and Yahoo" in alerts
    assert viewer.get("/admin").headers["location"] == "/admin/"


def test_dashboard_needs_a_session(client) -> None:  # type: ignore[no-untyped-def]
    answer = client.get("/admin/")
    assert answer.status_code == 303 and answer.headers["location"] == "/admin/login?next=/admin/"


def test_subscriber_list_filters_sorts_pages_and_refuses_nonsense(signed_in, sent_week) -> None:  # type: ignore[no-untyped-def]
    viewer = signed_in("viewer")
    every = viewer.get("/admin/subscribers")
    assert every.status_code == 200 and "12 matches" in every.text
    left = viewer.get("/admin/subscribers?status=unsubscribed").text
    assert "1 match " in left and "d0n0@example.com" in left
    # Friday's people wait at "later"; Wednesday's and Thursday's at "goodbye".
    at_later = viewer.get("/admin/subscribers?sequence=course&step=later").text
    assert (
        "4 matches" in at_later and at_later.count("course: later") == 4 and "course: goodbye" not in at_later
    )
    assert "7 matches" in viewer.get("/admin/subscribers?sequence=course&step=goodbye").text
    with transaction(sent_week) as session:
        waiting = session.scalar(
            select(func.count(func.distinct(Delivery.subscriber_id)))
            .join(Enrollment, Enrollment.id == Delivery.enrollment_id)
            .where(Delivery.status == "pending", Enrollment.status == "active")
        )
    soonest = viewer.get("/admin/subscribers?sort=next&per=25").text
    times = re.findall(r'<time datetime="([^"]+)"', soonest)
    assert len(times) == waiting and times == sorted(times)
    first_page = viewer.get("/admin/subscribers?sort=email&per=25&page=1").text
    emails = re.findall(r'href="/admin/subscribers/\d+">([^<]+)</a>', first_page)
    assert emails == sorted(emails)
    assert "page 1 of 1" in first_page
    assert viewer.get("/admin/subscribers?page=999").status_code == 200  # past the end: the last page
    for bad in ("status=everything", "sort=password", "per=7", "page=x", "sequence=nope"):
        answer = viewer.get(f"/admin/subscribers?{bad}")
        assert answer.status_code == 400 and 'role="alert"' in answer.text, bad
    assert "4 matches" in viewer.get("/admin/subscribers?q=d1n").text


def test_bulk_actions_wait_for_a_confirmation_and_are_audited(signed_in, sent_week) -> None:  # type: ignore[no-untyped-def]
    editor = signed_in("editor")
    with transaction(sent_week) as session:
        ids = list(
            session.scalars(
                select(Subscriber.id).where(Subscriber.email.in_(["d1n0@example.com", "d1n1@example.com"]))
            )
        )
    token = csrf_of(editor, "/admin/subscribers")
    body = [("csrf", token), ("action", "unsubscribe"), ("ids", str(ids[0])), ("ids", str(ids[1]))]
    review = _post_pairs(editor, "/admin/subscribers/bulk", body)
    assert (
        review.status_code == 200 and "d1n0@example.com" in review.text and "d1n1@example.com" in review.text
    )
    with transaction(sent_week) as session:
        assert session.scalar(select(func.count()).where(Subscriber.status == "unsubscribed")) == 1  # not yet
    done = _post_pairs(editor, "/admin/subscribers/bulk", [*body, ("confirm", "yes")])
    assert done.status_code == 303 and "2%20unsubscribed" in done.headers["location"]
    with transaction(sent_week) as session:
        assert session.scalar(select(func.count()).where(Subscriber.status == "unsubscribed")) == 3
        assert session.scalar(select(func.count()).where(AuditLog.action == "subscriber.unsubscribe")) == 2
    nothing = editor.post("/admin/subscribers/bulk", data={"csrf": token, "action": "unsubscribe"})
    assert nothing.status_code == 303 and "Tick%20at%20least" in nothing.headers["location"]
    remove = _post_pairs(
        editor, "/admin/subscribers/bulk", [("csrf", token), ("action", "remove"), ("ids", str(ids[0]))]
    )
    assert "filter%20the%20list" in remove.headers["location"]
    viewer = signed_in("viewer")
    refused = _post_pairs(
        viewer, "/admin/subscribers/bulk", [("csrf", csrf_of(viewer, "/admin/")), *body[1:]]
    )
    assert refused.status_code == 403
    assert _post_pairs(editor, "/admin/subscribers/bulk", [("csrf", "forged"), *body[1:]]).status_code == 403


def test_results_show_charts_per_day_and_step_and_the_csv_has_the_same_figures(signed_in, sent_week) -> None:  # type: ignore[no-untyped-def]
    viewer = signed_in("viewer")
    page = viewer.get("/admin/sequences/course/results?days=7")
    assert page.status_code == 200 and page.text.count("<svg") >= 6  # three charts, each wide and narrow
    assert 'data-step="enrolled" data-count="12"' in page.text
    assert viewer.get("/admin/sequences/course/results?days=13").status_code == 200  # odd period: the default
    answer = viewer.get("/admin/sequences/course/results.csv?days=7")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    assert 'filename="course-results-7d.csv"' in answer.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert len(rows) == 7 * 4  # seven days, four steps
    assert sum(int(r["sent"]) for r in rows) == 32
    assert sum(int(r["unsubscribed"]) for r in rows) == 1
    welcome = {r["date"]: int(r["sent"]) for r in rows if r["step"] == "hello"}
    assert (welcome["2026-02-25"], welcome["2026-02-26"], welcome["2026-02-27"], welcome["2026-03-02"]) == (
        4,
        4,
        4,
        0,
    )
    assert viewer.get("/admin/sequences/nope/results.csv").status_code == 404


def test_timeline_strip_shades_shut_days_and_folds_quiet_stretches() -> None:
    window = SendWindow.parse("mon-fri", "09:00", "17:00")
    signup = datetime(2026, 3, 6, 10, 0)  # a Friday
    sends = [
        ("hello", datetime(2026, 3, 6, 10, 0), ""),
        ("later", datetime(2026, 3, 9, 9, 0), "moved into the send window"),
    ]
    cells = day_strip(signup, sends, window, None)
    assert [c.day.day for c in cells] == [6, 7, 8, 9]
    assert [c.closed for c in cells] == [False, True, True, False] and cells[0].signup
    far = day_strip(signup, [*sends, ("end", datetime(2026, 3, 30, 9, 0), "")], window, None)
    quiet = [c for c in far if c.quiet]
    assert len(quiet) == 1 and quiet[0].quiet == 18 and far[-1].sends[0][0] == "end"
    assert day_strip(signup, [], window, None) == []


def test_a_big_import_runs_as_a_job_whose_progress_the_page_follows(signed_in, world, set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(background_rows="3")
    editor = signed_in("editor")
    token = csrf_of(editor, "/admin/import")
    rows = "email,first_name\n" + "".join(f"bulk{n}@example.com,B{n}\n" for n in range(7)) + "broken,x\n"
    started = editor.post(
        "/admin/import",
        data={"csrf": token, "sequence": "course", "consent_source": "fair stand"},
        files={"file": ("people.csv", rows.encode(), "text/csv")},
    )
    assert started.status_code == 303 and re.fullmatch(r"/admin/jobs/\d+", started.headers["location"])
    job_id = int(started.headers["location"].rsplit("/", 1)[1])
    jobs.wait(job_id, timeout=60)
    status = editor.get(f"/admin/jobs/{job_id}/status").json()
    assert status == {"id": job_id, "state": "done", "done": 7, "total": 7, "percent": 100}
    page = editor.get(f"/admin/jobs/{job_id}")
    assert "Imported (new, enrolled): <strong>7</strong>" in page.text and "Rows refused: 1" in page.text
    with transaction(world) as session:
        assert session.scalar(select(func.count()).select_from(Subscriber)) == 7
        assert (
            session.scalar(select(AuditLog.after).where(AuditLog.action == "subscribers.import"))["imported"]
            == 7
        )  # type: ignore[index]
    # Only whoever started it (and admins) see a job.
    assert signed_in("viewer").get(f"/admin/jobs/{job_id}").status_code == 403
    assert signed_in("admin").get(f"/admin/jobs/{job_id}").status_code == 200
    other = signed_in("editor")
    assert other.get("/admin/jobs/99999").status_code == 404 and other.get("/admin/jobs/x").status_code == 404


def test_export_and_enrolling_thousands_run_as_jobs_too(signed_in, sent_week, set_env) -> None:  # type: ignore[no-untyped-def]
    set_env(background_rows="3")
    editor = signed_in("editor")
    token = csrf_of(editor, "/admin/subscribers")
    assert "Prepare the export with a progress bar" in editor.get("/admin/subscribers").text
    export = editor.post("/admin/exports", data={"csrf": token})
    job_id = int(export.headers["location"].rsplit("/", 1)[1])
    jobs.wait(job_id, timeout=60)
    page = editor.get(f"/admin/jobs/{job_id}")
    assert "12 subscribers exported" in page.text
    download = editor.get(f"/admin/jobs/{job_id}/download")
    assert download.status_code == 200 and len(list(csv.DictReader(io.StringIO(download.text)))) == 12
    emails = "\n".join(f"d{d}n{n}@example.com" for d in range(3) for n in range(4))
    enroll = editor.post(
        "/admin/sequences/course/enroll", data={"csrf": token, "who": "list", "emails": emails, "when": "now"}
    )
    assert enroll.status_code == 303
    enroll_job = int(enroll.headers["location"].rsplit("/", 1)[1])
    jobs.wait(enroll_job, timeout=60)
    result = editor.get(f"/admin/jobs/{enroll_job}").text
    assert "Already enrolled: 11" in result and "Unsubscribed: 1" in result
    with transaction(sent_week) as session:
        job = session.get(Job, enroll_job)
        assert job is not None and job.done == job.total == 12 and job.status == "done"


def test_a_job_that_stopped_moving_is_shown_as_stopped(world) -> None:  # type: ignore[no-untyped-def]
    with transaction(world) as session:
        job = Job(kind="import", label="Import", total=10, done=4)
        session.add(job)
        session.flush()
        job.heartbeat_at = clock.now() - timedelta(seconds=jobs.STALE_SECONDS + 1)
        assert jobs.state(job) == "stopped" and jobs.percent(job) == 40


def test_cli_enroll_and_export_report_what_they_did(world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from nurture.cli import main
    from nurture.subscribers.enrollment import add_subscriber

    with transaction(world) as session:
        for n in range(3):
            subscriber, _ = add_subscriber(session, f"c{n}@example.com")
            subscriber.status = "active"
    runner = CliRunner()
    enrolled = runner.invoke(main, ["sequences", "enroll", "course", "--all"])
    assert enrolled.exit_code == 0, enrolled.output
    assert enrolled.output.startswith("enrolled 3, already enrolled 0")
    listed = tmp_path / "people.txt"
    listed.write_text("c0@example.com\nnot-an-address\n")
    again = runner.invoke(main, ["sequences", "enroll", "course", "--file", str(listed)])
    assert "already enrolled 1" in again.output and "invalid 1" in again.output
    assert runner.invoke(main, ["sequences", "enroll", "course"]).exit_code == 2
    out = tmp_path / "all.csv"
    exported = runner.invoke(main, ["subscribers", "export", str(out)])
    assert exported.exit_code == 0 and "exported 3 subscribers" in exported.output


def test_days_are_local_days_of_the_report_zone(world) -> None:  # type: ignore[no-untyped-def]
    late = datetime(2026, 3, 3, 2, 30, tzinfo=UTC)  # 21:30 on 2 March in New York, 3 March in UTC
    with transaction(world) as session:
        session.add(Event(kind="sent", created_at=late))
        session.add(Event(kind="unsubscribed", created_at=late))
    with transaction(world) as session:
        new_york = figures_over_time.events_per_day(
            session, ["sent"], late - timedelta(days=2), ZoneInfo("America/New_York")
        )
        utc = figures_over_time.events_per_day(session, ["sent"], late - timedelta(days=2), ZoneInfo("UTC"))
        view = figures_over_time.overview(session, ZoneInfo("America/New_York"), days=7, now=late)
    assert new_york["sent"] == {date(2026, 3, 2): 1} and utc["sent"] == {date(2026, 3, 3): 1}
    assert view.days[-1] == date(2026, 3, 2) and view.sent_per_day[-1] == 1
    assert view.unsubscribes.value == 1.0
