"""Staff actions on one subscriber (pause, resume, unsubscribe, resubscribe, remove, erase, data export)
in the JSON API, the web UI and the CLI: what each changes, its audit row and explain-log event, who may."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from nurture.cli import main
from nurture.core import clock
from nurture.core.db import transaction
from nurture.delivery.sender import Sender
from nurture.models import AuditLog, ConsentRecord, Delivery, Enrollment, Event, Subscriber, Suppression
from tests.support.helpers import dispatch_inline, make_sender, subscribe
from tests.support.staff import csrf_of

NOW = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)  # a Monday, inside the course's window
UNTIL = "2026-03-20T12:00:00+00:00"


@pytest.fixture(autouse=True)
def _frozen() -> None:
    clock.set_now(NOW)


def state(factory, email: str) -> tuple[str, list[tuple[str, str | None]]]:  # type: ignore[no-untyped-def]
    """(subscriber status, [(delivery status, skip reason)...]) in step order."""
    with transaction(factory) as session:
        subscriber = session.scalar(select(Subscriber).where(Subscriber.email == email))
        rows = session.execute(
            select(Delivery.status, Delivery.skip_reason)
            .where(Delivery.subscriber_id == subscriber.id)
            .order_by(Delivery.enrollment_id, Delivery.due_at)
        ).all()
        return subscriber.status, [tuple(r) for r in rows]


def audit_actions(factory) -> list[tuple[str, str, dict | None, dict | None]]:  # type: ignore[no-untyped-def]
    with transaction(factory) as session:
        return [
            (a.action, a.actor, a.before, a.after)
            for a in session.scalars(select(AuditLog).order_by(AuditLog.id))
        ]


def events_of(factory, subscriber_id: int) -> list[str]:  # type: ignore[no-untyped-def]
    with transaction(factory) as session:
        return list(
            session.scalars(select(Event.kind).where(Event.subscriber_id == subscriber_id).order_by(Event.id))
        )


# --- API ------------------------------------------------------------------------------------------------


def test_pause_and_resume_move_unsent_mail_without_skipping_and_are_audited(api, world) -> None:  # type: ignore[no-untyped-def]
    sid = subscribe(world, "ana@example.com", "course")
    # One sent already: a pause must leave it alone and move only what has not gone.
    sender: Sender = make_sender(world)
    dispatch_inline(world, sender)
    assert api("viewer", "POST", f"/api/v1/subscribers/{sid}/pause", json={"until": UNTIL}).status_code == 403
    for until in (None, "soon", "2026-03-20T12:00", "2026-03-01T00:00:00Z", "2031-01-01T00:00:00Z"):
        response = api("editor", "POST", f"/api/v1/subscribers/{sid}/pause", json={"until": until})
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid", until
    paused = api("editor", "POST", f"/api/v1/subscribers/{sid}/pause", json={"until": UNTIL})
    assert paused.status_code == 200, paused.text
    assert paused.json()["moved"] == 3
    with transaction(world) as session:
        due = session.scalars(
            select(Delivery.due_at).where(Delivery.status == "pending").order_by(Delivery.due_at)
        ).all()
    assert len(due) == 3 and due[0] >= datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
    assert all(later > earlier for earlier, later in itertools.pairwise(due))  # order kept
    resumed = api("admin", "POST", f"/api/v1/subscribers/{sid}/resume")
    assert resumed.status_code == 200 and resumed.json()["moved"] == 3
    assert api("editor", "POST", f"/api/v1/subscribers/{sid}/resume").status_code == 409
    [(pause_action, who, before, after), (resume_action, *_rest)] = audit_actions(world)
    assert (pause_action, who, resume_action) == (
        "subscriber.pause",
        "editor@staff.example.com",
        "subscriber.resume",
    )
    assert before["paused_until"] is None and after["paused_until"] == UNTIL
    assert events_of(world, sid)[-2:] == ["paused", "resumed"]


def test_unsubscribe_then_resubscribe_only_with_fresh_consent(api, world) -> None:  # type: ignore[no-untyped-def]
    sid = subscribe(world, "ana@example.com", "course")
    done = api("editor", "POST", f"/api/v1/subscribers/{sid}/unsubscribe")
    assert done.status_code == 200 and done.json()["cancelled"] == 4
    assert state(world, "ana@example.com") == ("unsubscribed", [("cancelled", "unsubscribed")] * 4)
    assert api("editor", "POST", f"/api/v1/subscribers/{sid}/unsubscribe").status_code == 409
    for body in ({}, {"consent_source": "   "}, {"consent_source": "x" * 101}):
        refused = api("editor", "POST", f"/api/v1/subscribers/{sid}/resubscribe", json=body)
        assert refused.status_code == 400 and "consent_source" in refused.json()["error"]["message"]
    assert state(world, "ana@example.com")[0] == "unsubscribed"  # nothing half-done
    ok = api(
        "editor",
        "POST",
        f"/api/v1/subscribers/{sid}/resubscribe",
        json={"consent_source": "phone call 2026-03-02", "note": "asked to hear more"},
    )
    assert ok.status_code == 200, ok.text
    assert state(world, "ana@example.com") == ("active", [("pending", None)] * 4)
    with transaction(world) as session:
        consent = session.scalar(select(ConsentRecord).where(ConsentRecord.subscriber_id == sid))
    assert consent.source == "staff-resubscribe" and "phone call 2026-03-02" in consent.consent_text
    assert "editor@staff.example.com" in consent.consent_text and consent.confirmed_at is not None
    assert "staff-resubscribed" in events_of(world, sid)
    assert [a[0] for a in audit_actions(world)] == ["subscriber.unsubscribe", "subscriber.resubscribe"]


def test_resubscribe_is_refused_for_a_suppressed_address(api, world) -> None:  # type: ignore[no-untyped-def]
    sid = subscribe(world, "bo@example.com", "course")
    assert api("editor", "POST", f"/api/v1/subscribers/{sid}/unsubscribe").status_code == 200
    with transaction(world) as session:
        session.add(Suppression(email="bo@example.com", reason="complaint"))
    refused = api("editor", "POST", f"/api/v1/subscribers/{sid}/resubscribe", json={"consent_source": "x"})
    assert refused.status_code == 409 and "suppressed" in refused.json()["error"]["message"]
    assert state(world, "bo@example.com")[0] == "unsubscribed"


def test_remove_from_one_sequence_leaves_the_other(api, three_step, world) -> None:  # type: ignore[no-untyped-def]
    from tests.support.helpers import sync_sequences

    sync_sequences(world)
    sid = subscribe(world, "ana@example.com", "course")
    with transaction(world) as session:
        from nurture.models import Sequence
        from nurture.subscribers.enrollment import enroll

        enroll(
            session,
            session.get(Subscriber, sid),
            session.scalar(select(Sequence).where(Sequence.slug == "three-step")),
        )
    assert api("editor", "POST", f"/api/v1/subscribers/{sid}/remove", json={}).status_code == 400
    assert (
        api("editor", "POST", f"/api/v1/subscribers/{sid}/remove", json={"sequence": "nope"}).status_code
        == 404
    )
    done = api("editor", "POST", f"/api/v1/subscribers/{sid}/remove", json={"sequence": "course"})
    assert done.status_code == 200 and done.json()["cancelled"] == 4
    assert (
        api("editor", "POST", f"/api/v1/subscribers/{sid}/remove", json={"sequence": "course"}).status_code
        == 409
    )
    with transaction(world) as session:
        by_sequence = dict(
            session.execute(
                select(Enrollment.sequence_id, Enrollment.status).where(Enrollment.subscriber_id == sid)
            ).all()
        )
        open_rows = session.scalar(
            select(func.count()).select_from(Delivery).where(Delivery.status == "pending")
        )
    assert sorted(by_sequence.values()) == ["active", "cancelled"] and open_rows == 3
    detail = api("viewer", "GET", f"/api/v1/subscribers/{sid}").json()
    assert "removed-from-sequence" in [e["kind"] for e in detail["events"]]
    assert {
        d["skip_reason"] for e in detail["enrollments"] if e["sequence"] == "course" for d in e["deliveries"]
    } == {"removed-by-staff"}


def test_export_holds_everything_about_them_and_nothing_about_anyone_else(api, world) -> None:  # type: ignore[no-untyped-def]
    sid = subscribe(world, "ana@example.com", "course", first_name="Ana")
    other = subscribe(world, "bo@example.com", "course", first_name="Bo")
    dispatch_inline(world, make_sender(world))
    api("editor", "POST", f"/api/v1/subscribers/{sid}/pause", json={"until": UNTIL})
    assert api("viewer", "GET", f"/api/v1/subscribers/{sid}/export").status_code == 403
    response = api("editor", "GET", f"/api/v1/subscribers/{sid}/export")
    assert response.status_code == 200 and "attachment" in response.headers["content-disposition"]
    data = response.json()
    assert data["profile"]["email"] == "ana@example.com" and data["profile"]["first_name"] == "Ana"
    assert data["attributes"] == {"source": "staff"}
    [enrollment] = data["enrollments"]
    assert enrollment["sequence"] == "course" and len(enrollment["deliveries"]) == 4
    assert enrollment["deliveries"][0]["status"] == "sent" and enrollment["deliveries"][0]["message_id"]
    kinds = [e["kind"] for e in data["events"]]
    assert {"subscribed", "enrolled", "paused"} <= set(kinds) and any(
        e["delivery_id"] for e in data["events"]
    )
    text = json.dumps(data)
    assert "bo@example.com" not in text and '"Bo"' not in text
    with transaction(world) as session:
        theirs = set(session.scalars(select(Delivery.id).where(Delivery.subscriber_id == other)))
    assert not theirs & {d["id"] for d in enrollment["deliveries"]}
    assert not theirs & {e["delivery_id"] for e in data["events"]}
    assert api("editor", "GET", "/api/v1/subscribers/99999/export").status_code == 404
    assert audit_actions(world)[-1][0] == "subscriber.export"


def test_erase_through_the_api_keeps_only_a_hash(api, world) -> None:  # type: ignore[no-untyped-def]
    sid = subscribe(world, "ana@example.com", "course")
    assert api("viewer", "POST", f"/api/v1/subscribers/{sid}/erase").status_code == 403
    assert api("editor", "POST", f"/api/v1/subscribers/{sid}/erase").status_code == 200
    assert api("editor", "POST", f"/api/v1/subscribers/{sid}/erase").status_code == 404
    with transaction(world) as session:
        assert session.scalar(select(func.count()).select_from(Subscriber)) == 0
        [kept] = session.scalars(select(Suppression.email)).all()
    assert kept.startswith("sha256:")
    [(action, _who, before, after)] = audit_actions(world)
    assert action == "subscriber.erase" and after == {"erased": True}
    assert "ana" not in json.dumps([before, after])


ACTION_BODIES = {
    "pause": {"until": UNTIL},
    "resume": {},
    "unsubscribe": {},
    "resubscribe": {"consent_source": "webinar"},
    "remove": {"sequence": "course"},
    "erase": {},
}


@pytest.mark.parametrize("action", sorted(ACTION_BODIES))
def test_api_permission_matrix_for_subscriber_actions(api, world, action) -> None:  # type: ignore[no-untyped-def]
    sid = subscribe(world, "ana@example.com", "course")
    path = f"/api/v1/subscribers/{sid}/{action}"
    assert api(None, "POST", path, json=ACTION_BODIES[action]).status_code == 401
    assert api("viewer", "POST", path, json=ACTION_BODIES[action]).status_code == 403
    if action == "resume":
        api("editor", "POST", f"/api/v1/subscribers/{sid}/pause", json={"until": UNTIL})
    if action == "resubscribe":
        api("editor", "POST", f"/api/v1/subscribers/{sid}/unsubscribe")
    for role in ("editor", "admin"):
        response = api(role, "POST", path, json=ACTION_BODIES[action])
        # The first allowed call succeeds; repeating it is a conflict (or 404 once erased), never a 403.
        assert response.status_code in ((200,) if role == "editor" else (200, 404, 409)), response.text


# --- web UI ---------------------------------------------------------------------------------------------


UI_FIELDS = {
    "pause": {"until": "2026-03-20T08:00", "tz": "America/New_York"},
    "resume": {},
    "unsubscribe": {},
    "resubscribe": {"consent_source": "webinar"},
    "remove": {"sequence": "course"},
    "erase": {"confirm": "ana@example.com"},
}


@pytest.mark.parametrize("action", sorted(UI_FIELDS))
def test_ui_permission_matrix_and_csrf_for_subscriber_actions(signed_in, client, world, action) -> None:  # type: ignore[no-untyped-def]
    sid = subscribe(world, "ana@example.com", "course")
    path = f"/admin/subscribers/{sid}/{action}"
    anonymous = client.post(path, data={"csrf": "x", **UI_FIELDS[action]})
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/admin/login")
    viewer = signed_in("viewer")
    token = csrf_of(viewer, f"/admin/subscribers/{sid}")
    assert viewer.post(path, data={"csrf": token, **UI_FIELDS[action]}).status_code == 403
    editor = signed_in("editor")
    token = csrf_of(editor, f"/admin/subscribers/{sid}")
    assert editor.post(path, data={"csrf": "forged", **UI_FIELDS[action]}).status_code == 403
    cross = editor.post(
        path, data={"csrf": token, **UI_FIELDS[action]}, headers={"Origin": "https://evil.example"}
    )
    assert cross.status_code == 403
    assert audit_actions(world) == []  # nothing refused left a trace of a change
    if action == "resume":
        editor.post(f"/admin/subscribers/{sid}/pause", data={"csrf": token, **UI_FIELDS["pause"]})
    if action == "resubscribe":
        editor.post(f"/admin/subscribers/{sid}/unsubscribe", data={"csrf": token})
    done = editor.post(path, data={"csrf": token, **UI_FIELDS[action]})
    assert done.status_code == 303, done.text
    page = editor.get(done.headers["location"])
    assert page.status_code == 200 and 'role="status"' in page.text
    assert audit_actions(world)[-1][0] == f"subscriber.{action}"


def test_ui_pause_reads_local_time_and_shows_in_the_explain_log(signed_in, world) -> None:  # type: ignore[no-untyped-def]
    sid = subscribe(world, "ana@example.com", "course")
    editor = signed_in("editor")
    page = editor.get(f"/admin/subscribers/{sid}")
    assert "Pause" in page.text and "Unsubscribe" in page.text and "Erase this person" in page.text
    token = csrf_of(editor, f"/admin/subscribers/{sid}")
    bad = editor.post(f"/admin/subscribers/{sid}/pause", data={"csrf": token, "until": "someday"})
    assert bad.status_code == 400 and "Cannot read that date" in bad.text
    past = editor.post(f"/admin/subscribers/{sid}/pause", data={"csrf": token, "until": "2026-03-01T09:00"})
    assert past.status_code == 400 and "in the future" in past.text
    done = editor.post(
        f"/admin/subscribers/{sid}/pause",
        data={"csrf": token, "until": "2026-03-20T08:00", "tz": "America/New_York"},
    )
    assert done.status_code == 303
    detail = editor.get(done.headers["location"]).text
    assert "paused until 2026-03-20T12:00:00+00:00" in detail  # 08:00 EDT
    assert "Paused until" in detail and "paused" in detail and "editor@staff.example.com" in detail
    assert "End the pause" in detail
    # A viewer sees the log but no action forms.
    viewer_page = signed_in("viewer").get(f"/admin/subscribers/{sid}").text
    assert "Explain log" in viewer_page and "Unsubscribe" not in viewer_page


def test_ui_erase_needs_the_typed_address_and_export_downloads_json(signed_in, world) -> None:  # type: ignore[no-untyped-def]
    sid = subscribe(world, "ana@example.com", "course")
    editor = signed_in("editor")
    assert signed_in("viewer").get(f"/admin/subscribers/{sid}/export").status_code == 403
    download = editor.get(f"/admin/subscribers/{sid}/export")
    assert download.status_code == 200 and "attachment" in download.headers["content-disposition"]
    assert download.json()["profile"]["email"] == "ana@example.com"
    confirm = editor.get(f"/admin/subscribers/{sid}/erase")
    assert confirm.status_code == 200 and "cannot be undone" in confirm.text
    token = csrf_of(editor, f"/admin/subscribers/{sid}/erase")
    wrong = editor.post(f"/admin/subscribers/{sid}/erase", data={"csrf": token, "confirm": "bo@example.com"})
    assert wrong.status_code == 400 and "type the subscriber" in wrong.text.lower()
    assert state(world, "ana@example.com")[0] == "active"
    done = editor.post(
        f"/admin/subscribers/{sid}/erase", data={"csrf": token, "confirm": " Ana@Example.com "}
    )
    assert done.status_code == 303 and "Erased" in editor.get(done.headers["location"]).text
    assert editor.get(f"/admin/subscribers/{sid}").status_code == 404


# --- CLI ------------------------------------------------------------------------------------------------


def run(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_cli_subscriber_actions_and_export_one(world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sid = subscribe(world, "ana@example.com", "course")
    subscribe(world, "bo@example.com", "course")
    assert (
        "paused until 2026-03-20T12:00:00+00:00"
        in run("subscribers", "pause", "ana@example.com", "--until", "2026-03-20T12:00Z").output
    )
    assert run("subscribers", "pause", "ana@example.com", "--until", "tomorrow").exit_code == 1
    assert run("subscribers", "resume", "ana@example.com").exit_code == 0
    assert run("subscribers", "remove", "bo@example.com", "--sequence", "course").exit_code == 0
    assert run("subscribers", "unsubscribe", "ana@example.com").exit_code == 0
    no_consent = CliRunner().invoke(main, ["subscribers", "resubscribe", "ana@example.com"])
    assert no_consent.exit_code == 2 and "--consent-source" in no_consent.output
    assert run("subscribers", "resubscribe", "ana@example.com", "--consent-source", "letter").exit_code == 0
    assert run("subscribers", "resume", "nobody@example.com").exit_code == 1
    out = tmp_path / "ana.json"
    assert run("subscribers", "export-one", "ana@example.com", "--out", str(out)).exit_code == 0
    data = json.loads(out.read_text())
    assert data["profile"]["id"] == sid and data["profile"]["status"] == "active"
    assert {"paused", "resumed", "unsubscribed", "staff-resubscribed"} <= {e["kind"] for e in data["events"]}
    assert "bo@example.com" not in out.read_text()
    assert (
        json.loads(run("subscribers", "export-one", "bo@example.com").output)["profile"]["email"]
        == "bo@example.com"
    )
    actions = [(a[0], a[1]) for a in audit_actions(world)]
    assert actions == [
        ("subscriber.pause", "cli"),
        ("subscriber.resume", "cli"),
        ("subscriber.remove", "cli"),
        ("subscriber.unsubscribe", "cli"),
        ("subscriber.resubscribe", "cli"),
        ("subscriber.export", "cli"),
        ("subscriber.export", "cli"),
    ]
