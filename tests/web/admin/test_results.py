"""A/B tests seen by staff: the typed stats API per variant, the results page's comparison, and ending a test
from that page (a draft whose plan is shown before anything changes), on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from nurture.core import clock
from nurture.core.db import transaction
from nurture.mail.transports import MemoryTransport
from nurture.models import Delivery, Sequence, SequenceVersion, Subscriber
from tests.support.helpers import dispatch_inline, make_sender, subscribe, sync_sequences

START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)  # a Monday, 10:00 in New York: inside the window
AB = """
slug: ab
name: AB course
steps:
  - key: welcome
    delay: 0
    template: demo/hello
    variants:
      - {key: a}
      - {key: b, subject: "Variant B: your course begins"}
  - {key: next, delay: 1d, template: demo/middle}
"""
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def ab_sent(world, sequences_dir: Path):  # type: ignore[no-untyped-def]
    (sequences_dir / "ab.yaml").write_text(AB)
    sync_sequences(world)
    with clock.frozen(START):
        for number in range(12):
            subscribe(world, f"v{number:02}@example.com", "ab")
        dispatch_inline(world, make_sender(world, MemoryTransport()))
    return world


def test_the_stats_api_gives_figures_and_a_comparison_per_variant(api, ab_sent) -> None:  # type: ignore[no-untyped-def]
    response = api("viewer", "GET", "/api/v1/sequences/ab/stats")
    assert response.status_code == 200, response.text
    welcome, following = response.json()["steps"]
    assert [v["key"] for v in welcome["variants"]] == ["a", "b"]
    assert sum(v["sent"] for v in welcome["variants"]) == 12
    assert set(welcome["variants"][0]) == {
        "key",
        "sent",
        "clicks",
        "unique_clickers",
        "unsubscribes",
        "goals",
    }
    comparison = welcome["comparison"]
    assert comparison["metric"] == "unique_clickers / sent"
    # Nobody clicked: the test is undefined and says so.
    assert comparison["against"][0]["p_value"] is None
    assert comparison["against"][0]["verdict"] == "not yet significant"
    assert welcome["winner"] is None
    assert following["variants"] is None and following["comparison"] is None


def test_ending_a_test_from_the_results_page_drafts_a_version_and_shows_its_plan(signed_in, ab_sent) -> None:  # type: ignore[no-untyped-def]
    viewer = signed_in("viewer")
    page = viewer.get("/admin/sequences/ab/results")
    assert page.status_code == 200
    assert "A/B test on welcome" in page.text and "not yet significant" in page.text
    assert "Draft it and show the plan" not in page.text  # viewers see results, editors end tests

    editor = signed_in("editor")
    page = editor.get("/admin/sequences/ab/results")
    token = CSRF.search(page.text).group(1)  # type: ignore[union-attr]
    answer = editor.post(
        "/admin/sequences/ab/tests/welcome/winner",
        data={"csrf": token, "variant": "b"},
        follow_redirects=False,
    )
    assert answer.status_code == 303 and answer.headers["location"].startswith("/admin/sequences/ab/plan")
    plan = editor.get(answer.headers["location"])
    assert "everyone gets" in plan.text
    with transaction(ab_sent) as session:
        sequence = session.scalar(select(Sequence).where(Sequence.slug == "ab"))
        draft = session.scalar(
            select(SequenceVersion).where(
                SequenceVersion.sequence_id == sequence.id, SequenceVersion.published_at.is_(None)
            )
        )
        assert draft is not None and draft.definition["steps"][0]["winner"] == "b"
        assert sequence.current_version.definition["steps"][0].get("winner") is None  # nothing live changed
    again = editor.post(
        "/admin/sequences/ab/tests/welcome/winner",
        data={"csrf": token, "variant": "zz"},
        follow_redirects=False,
    )
    assert "step%20%27welcome%27%20has%20no%20variant%20%27zz%27" in again.headers["location"]


def test_the_staff_preview_and_test_send_take_a_variant(signed_in, ab_sent) -> None:  # type: ignore[no-untyped-def]
    from email import message_from_bytes

    from nurture.mail.transports import MEMORY_OUTBOX

    viewer = signed_in("viewer")
    shown = viewer.get("/admin/sequences/ab/steps/welcome?variant=b")
    assert shown.status_code == 200
    assert "Variant B: your course begins" in shown.text and 'id="preview-variant">b<' in shown.text
    assert viewer.get("/admin/sequences/ab/steps/welcome?variant=zz").status_code == 400
    assert viewer.get("/admin/sequences/ab/steps/next?variant=b").status_code == 400  # no test on that step
    # As a real subscriber: the variant recorded for them by the send.
    with transaction(ab_sent) as session:
        email, variant = session.execute(
            select(Subscriber.email, Delivery.variant)
            .join(Delivery, Delivery.subscriber_id == Subscriber.id)
            .where(Delivery.variant.is_not(None))
            .limit(1)
        ).one()
    theirs = viewer.get(f"/admin/sequences/ab/steps/welcome?subscriber={email}")
    assert f'id="preview-variant">{variant}<' in theirs.text
    token = CSRF.search(shown.text).group(1)  # type: ignore[union-attr]
    MEMORY_OUTBOX.outbox.clear()
    sent = viewer.post("/admin/sequences/ab/steps/welcome/test", data={"csrf": token, "variant": "b"})
    assert sent.status_code == 303
    [message] = [message_from_bytes(m.data) for m in MEMORY_OUTBOX.outbox]
    assert message["Subject"] == "[TEST] Variant B: your course begins"
