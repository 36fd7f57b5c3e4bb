"""The admin timeline says when a step skips the send window and which holiday moved an email."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from nurture.core.db import transaction
from nurture.models import Sequence
from nurture.sequences import versions
from tests.support.staff import csrf_of

HOLIDAY_COURSE = """
slug: holiday-course
name: Holiday course
timezone: America/New_York
window: {days: mon-fri, start: "09:00", end: "17:00"}
holidays: US
steps:
  - {key: hello, delay: 0, template: demo/hello, window: false}
  - {key: middle, delay: 1d, template: demo/middle}
"""


@pytest.fixture
def holiday_course(sequences_dir: Path) -> Path:
    # Written before `signed_in` syncs the folder, so both sequences are in the database.
    path = sequences_dir / "holiday-course.yaml"
    path.write_text(HOLIDAY_COURSE)
    return path


def test_timeline_shows_the_window_opt_out_and_the_holiday_that_moved_an_email(
    holiday_course, signed_in
) -> None:  # type: ignore[no-untyped-def]
    client = signed_in("viewer")
    page = client.get("/admin/sequences/holiday-course?signup_at=2026-12-24T10:00&tz=America/New_York")
    assert page.status_code == 200
    html = page.text
    assert "closed on US public holidays" in html
    assert "(skips the send window)" in html  # the steps table
    rows = html.split('<td class="timeline-note">')[1:]
    assert len(rows) == 2
    assert rows[0].startswith("sent at its due time: this step skips the send window</td>")
    assert "Thu 2026-12-24 10:00 EST" in html  # the welcome, at once
    assert rows[1].startswith("moved past Christmas Day on Fri 2026-12-25</td>")
    assert "Mon 2026-12-28 09:00 EST" in html


def test_the_timeline_says_how_the_frequency_cap_may_move_an_email(
    holiday_course, signed_in, set_env
) -> None:  # type: ignore[no-untyped-def]
    url = "/admin/sequences/holiday-course?signup_at=2026-12-24T10:00&tz=America/New_York"
    set_env(frequency_cap_hours="12")
    assert "less than 12 h after that sequence&#39;s last email" in signed_in("viewer").get(url).text
    set_env(frequency_cap_hours="0")
    assert 'id="cap-notice"' not in signed_in("viewer").get(url).text


def test_the_editor_shows_and_saves_the_any_hour_choice(holiday_course, signed_in, world) -> None:  # type: ignore[no-untyped-def]
    client = signed_in("editor")
    edit = "/admin/sequences/holiday-course/edit"
    page = client.get(edit)
    assert 'name="steps-0-any_hour" checked' in page.text
    assert 'name="steps-1-any_hour">' in page.text
    form = {
        "csrf": csrf_of(client, edit),
        "name": "Holiday course",
        "timezone": "America/New_York",
        "window_days": "mon-fri",
        "window_start": "09:00",
        "window_end": "17:00",
        "step_count": "2",
    }
    for i, (key, delay, template) in enumerate(
        (("hello", "0", "demo/hello"), ("middle", "1d", "demo/middle"))
    ):
        form |= {f"steps-{i}-key": key, f"steps-{i}-order": str(i + 1), f"steps-{i}-delay": delay,
                 f"steps-{i}-template": template, f"steps-{i}-subject": ""}  # fmt: skip
    # Untick the welcome's box, tick the second step's: the draft swaps them; holidays are kept.
    saved = client.post(edit, data=form | {"steps-1-any_hour": "on"})
    assert saved.status_code == 303, saved.text
    with transaction(world) as session:
        sequence = session.scalar(select(Sequence).where(Sequence.slug == "holiday-course"))
        assert sequence is not None
        draft = versions.pending_draft(session, sequence)
        assert draft is not None
        assert [s.use_window for s in draft.steps] == [True, False]
        assert draft.holidays == "US"
    plan = client.get("/admin/sequences/holiday-course/plan").text
    assert "now follows the send window" in plan and "now skips the send window" in plan


def test_the_api_shows_the_holiday_calendar_and_which_steps_skip_the_window(holiday_course, api) -> None:  # type: ignore[no-untyped-def]
    detail = api("viewer", "GET", "/api/v1/sequences/holiday-course").json()
    assert detail["holidays"] == "US"
    assert [(s["key"], s["window"]) for s in detail["step_list"]] == [("hello", False), ("middle", True)]
