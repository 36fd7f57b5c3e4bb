"""Unknown send outcomes: what staff see (results, subscriber page, API, /metrics, CLI) and what they can do
with one held for a person (mark sent, send again), each audited (issue: the send path, requirement 2)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email import message_from_bytes

from sqlalchemy import select

from nurture.core import clock
from nurture.core.db import transaction
from nurture.mail.transports import AmbiguousFailure, BeforeData, MemoryTransport, Then
from nurture.models import AuditLog, Delivery, Event
from tests.sequences.test_versions import cli
from tests.support.helpers import dispatch_inline, make_sender, subscribe
from tests.support.staff import csrf_of

START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)  # a Monday, inside the course's window


class DropsAfterData(MemoryTransport):
    """The connection breaks after the data went out: the server may have the message or not."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.times = times

    def send(
        self,
        envelope_from: str,
        recipient: str,
        data: bytes,
        before_data: BeforeData = None,
        then: Then = None,
    ) -> None:
        if self.times:
            self.times -= 1
            super().send(envelope_from, recipient, data, before_data)  # it did arrive, as far as anyone knows
            raise AmbiguousFailure("connection lost after DATA")
        super().send(envelope_from, recipient, data, before_data)


def first_deliveries(world, transport, *emails: str) -> dict[str, int]:  # type: ignore[no-untyped-def]
    ids = {email: subscribe(world, email, "course") for email in emails}
    dispatch_inline(world, make_sender(world, transport))
    with transaction(world) as session:
        return {
            email: session.scalar(
                select(Delivery.id).where(Delivery.subscriber_id == sid).order_by(Delivery.id).limit(1)
            )
            for email, sid in ids.items()
        }


def metric(client, name: str) -> float:  # type: ignore[no-untyped-def]
    """One sample of /metrics by its full name with labels, e.g. 'x_total{kind="a"}'."""
    for line in client.get("/metrics").text.splitlines():
        if line.split(" ")[0] == name:
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def test_held_outcomes_are_shown_and_resolved_from_ui_api_and_cli(world, set_env, signed_in, api) -> None:  # type: ignore[no-untyped-def]
    set_env(ambiguous_policy="hold")
    transport = DropsAfterData(times=3)
    with clock.frozen(START):
        held = first_deliveries(world, transport, "ann@example.com", "bob@example.com", "cy@example.com")
    clock.set_now(START + timedelta(seconds=30))  # staff act half a minute later (reset after each test)
    viewer = signed_in("viewer")
    assert metric(viewer, 'nurture_unknown_outcomes_total{resolution="held"}') == 3
    assert metric(viewer, "nurture_unknown_outcomes_held") == 3

    # API: listed with how they were resolved; a viewer may look but not act.
    listed = api("viewer", "GET", "/api/v1/deliveries/unknown?held=true").json()["unknown_outcomes"]
    assert sorted(u["delivery_id"] for u in listed) == sorted(held.values())
    assert {u["resolution"] for u in listed} == {"held"} and {u["status"] for u in listed} == {"ambiguous"}
    ann = held["ann@example.com"]
    assert api("viewer", "POST", f"/api/v1/deliveries/{ann}/mark-sent").status_code == 403
    done = api("editor", "POST", f"/api/v1/deliveries/{ann}/mark-sent")
    assert done.status_code == 200 and done.json()["status"] == "sent"
    again = api("editor", "POST", f"/api/v1/deliveries/{ann}/mark-sent")
    assert again.status_code == 409 and again.json()["error"]["code"] == "not_held"
    assert api("editor", "POST", "/api/v1/deliveries/%C2%B2/mark-sent").status_code == 404

    # The subscriber page shows Bob's, with the two buttons; an editor sends it again from there.
    bob = held["bob@example.com"]
    with transaction(world) as session:
        bob_subscriber = session.get(Delivery, bob).subscriber_id  # type: ignore[union-attr]
    editor = signed_in("editor")
    page = editor.get(f"/admin/subscribers/{bob_subscriber}").text
    assert "Unknown send outcomes" in page and f"/admin/deliveries/{bob}/send-again" in page
    token = csrf_of(editor, f"/admin/subscribers/{bob_subscriber}")
    assert editor.post(f"/admin/deliveries/{bob}/send-again", data={"csrf": "wrong"}).status_code == 403
    answer = editor.post(f"/admin/deliveries/{bob}/send-again", data={"csrf": token})
    assert answer.status_code == 303
    assert answer.headers["location"].startswith(f"/admin/subscribers/{bob_subscriber}?done=Delivery")

    # The CLI for the third, and what it refuses.
    cy = held["cy@example.com"]
    code, output = cli("deliveries", "unknown", "--held")
    assert code == 0 and f"delivery {cy}" in output and f"delivery {ann} " not in output
    assert cli("deliveries", "send-again", str(cy))[0] == 0
    code, output = cli("deliveries", "mark-sent", str(cy))
    assert code == 1 and "not held" in output

    # Sent again, once each, with the Message-ID of the first attempt.
    with clock.frozen(START + timedelta(minutes=1)):
        dispatch_inline(world, make_sender(world, transport))
    by_recipient: dict[str, list[str]] = {}
    for message in transport.outbox:
        by_recipient.setdefault(message.recipient, []).append(message_from_bytes(message.data)["Message-ID"])
    for email in ("bob@example.com", "cy@example.com"):
        assert len(by_recipient[email]) == 2 and len(set(by_recipient[email])) == 1
    assert len(by_recipient["ann@example.com"]) == 1
    with transaction(world) as session:
        statuses = {d: session.get(Delivery, d).status for d in held.values()}  # type: ignore[union-attr]
        audits = sorted(session.scalars(select(AuditLog.action).where(AuditLog.action.like("delivery.%"))))
        resolutions = sorted(
            e.detail["action"]
            for e in session.scalars(select(Event).where(Event.kind == "ambiguous-resolved"))
        )
    assert set(statuses.values()) == {"sent"}
    assert audits == ["delivery.mark-sent", "delivery.send-again", "delivery.send-again"]
    assert resolutions == ["mark-sent", "send-again", "send-again"]
    assert metric(viewer, "nurture_unknown_outcomes_held") == 0
    assert metric(viewer, 'nurture_unknown_outcomes_resolved_total{action="send-again"}') == 2

    # The results page counts them per step, with their resolutions.
    results = viewer.get("/admin/sequences/course/results").text
    assert "held 3" in results and "mark-sent 1" in results and "send-again 2" in results


def test_by_default_an_unknown_outcome_is_resent_and_counted_as_such(world, signed_in) -> None:  # type: ignore[no-untyped-def]
    transport = DropsAfterData(times=1)
    with clock.frozen(START):
        first_deliveries(world, transport, "dee@example.com")
        dispatch_inline(world, make_sender(world, transport))
    assert [m.recipient for m in transport.outbox] == ["dee@example.com", "dee@example.com"]
    viewer = signed_in("viewer")
    assert metric(viewer, 'nurture_unknown_outcomes_total{resolution="resent"}') == 1
    assert metric(viewer, "nurture_unknown_outcomes_held") == 0
    with transaction(world) as session:
        assert session.scalar(select(Delivery.status).order_by(Delivery.id).limit(1)) == "sent"
