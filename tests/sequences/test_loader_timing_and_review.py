"""The sequence-file fields of issue 17: a step's ``window: false``, ``holidays:``, and ``reviewed_by`` /
``reviewed_on``: validation messages, what is stored with a version, and the footer's review line."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from nurture.cli import main
from nurture.core import clock
from nurture.core.config import get_settings
from nurture.mail.context import Recipient, template_context
from nurture.mail.templates import EmailTemplates, RenderedEmail
from nurture.models import SequenceVersion
from nurture.sequences import version_plans, versions
from nurture.sequences.loader import SequenceDefinition, SequenceValidationError, definition_from, find
from nurture.sequences.review import Review

PROJECT = Path(__file__).resolve().parents[2]
HELLO = "  - {key: hello, delay: 0, template: demo/hello}\n"
GOOD = {
    "slug": "timed",
    "name": "Timed",
    "window": {"days": "mon-fri", "start": "09:00", "end": "11:30"},
    "steps": [
        {"key": "hello", "delay": 0, "template": "demo/hello", "window": False},
        {"key": "goodbye", "delay": "2d", "template": "demo/goodbye"},
    ],
}


def templates() -> EmailTemplates:
    return EmailTemplates(PROJECT / "templates")


def load(raw: dict) -> SequenceDefinition:
    return definition_from(raw, Path("timed.yaml"), templates())


def problems(raw: dict) -> list[str]:
    with pytest.raises(SequenceValidationError) as caught:
        load(raw)
    return [str(p) for p in caught.value.problems]


# --- validation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "slug: broken\nname: B\nsteps:\n"
            "  - {key: hello, delay: 0, template: demo/hello, window: never}\n",
            "broken.yaml: step #1 ('hello'): window 'never' must be true (the default: follow the sequence's "
            "send window) or false",
        ),
        ("slug: broken\nname: B\nholidays: XX\nsteps:\n" + HELLO, "broken.yaml: holidays 'XX': no holiday"),
        (
            "slug: broken\nname: B\nholidays: US-ZZ\nsteps:\n" + HELLO,
            "broken.yaml: holidays 'US-ZZ': US has no subdivision 'ZZ'",
        ),
        (
            "slug: broken\nname: B\nreviewed_by: Dr A\nsteps:\n" + HELLO,
            "broken.yaml: reviewed_by needs reviewed_on too",
        ),
        (
            "slug: broken\nname: B\nreviewed_by: Dr A\nreviewed_on: 1 Dec 2026\nsteps:\n" + HELLO,
            "broken.yaml: reviewed_on '1 Dec 2026' must be a date written YYYY-MM-DD",
        ),
        (
            "slug: broken\nname: B\nreviewed_by: '  '\nreviewed_on: 2026-01-05\nsteps:\n" + HELLO,
            "broken.yaml: reviewed_by must be the reviewer's name and role",
        ),
    ],
)
def test_each_new_field_names_file_step_and_problem(sequences_dir: Path, body: str, message: str) -> None:
    (sequences_dir / "broken.yaml").write_text(body)
    result = CliRunner().invoke(main, ["sequences", "validate"])
    assert result.exit_code == 1
    assert message in result.output


def test_review_date_must_be_a_date_and_not_in_the_future() -> None:
    with clock.frozen(clock.now().replace(year=2026, month=12, day=2)):
        future = problems({**GOOD, "reviewed_by": "Dr A", "reviewed_on": "2027-01-01"})
        assert future == [
            "timed.yaml: reviewed_on 2027-01-01 is in the future: use the date the review was done"
        ]
        stamped = problems({**GOOD, "reviewed_by": "Dr A", "reviewed_on": clock.now()})
        assert "must be a date (YYYY-MM-DD), not a date and time" in stamped[0]
        only_date = problems({**GOOD, "reviewed_on": "2026-11-30"})
        assert only_date == [
            "timed.yaml: reviewed_on needs reviewed_by too: the footer says who reviewed the course and when"
        ]


def test_yaml_dates_and_quoted_dates_mean_the_same_review() -> None:
    with clock.frozen(clock.now().replace(year=2026, month=12, day=2)):
        unquoted = yaml.safe_load("reviewed_on: 2026-11-30")["reviewed_on"]
        assert isinstance(unquoted, date)
        a = load({**GOOD, "reviewed_by": "Dr  Jane Doe,\n MD", "reviewed_on": unquoted})
        b = load({**GOOD, "reviewed_by": "Dr Jane Doe, MD", "reviewed_on": "2026-11-30"})
    assert a.review == b.review == Review("Dr Jane Doe, MD", date(2026, 11, 30))
    assert a.digest() == b.digest()
    assert a.review.on_text == "November 30, 2026"


# --- what a version stores ----------------------------------------------------------------------------------


def test_new_fields_are_stored_only_when_set_so_old_definitions_keep_their_digest() -> None:
    plain = load({**GOOD, "steps": [{"key": "hello", "delay": 0, "template": "demo/hello"}]})
    canonical = plain.canonical()
    assert not {"holidays", "reviewed_by", "reviewed_on"} & set(canonical)
    assert canonical["steps"] == [{"key": "hello", "delay": "0", "template": "demo/hello"}]
    explicit = load(
        {**GOOD, "steps": [{"key": "hello", "delay": 0, "template": "demo/hello", "window": True}]}
    )
    assert explicit.digest() == plain.digest()


def test_each_new_field_is_part_of_the_version() -> None:
    with clock.frozen(clock.now().replace(year=2026, month=12, day=2)):
        full = load({**GOOD, "holidays": "us", "reviewed_by": "Dr A", "reviewed_on": "2026-12-01"})
    canonical = full.canonical()
    assert canonical["holidays"] == "US"
    assert (canonical["reviewed_by"], canonical["reviewed_on"]) == ("Dr A", "2026-12-01")
    assert canonical["steps"][0]["window"] is False and "window" not in canonical["steps"][1]
    assert [s.use_window for s in full.steps] == [False, True]
    # The staff editor and `sequences export` go through as_file_data: the file reads back the same.
    stored = SequenceVersion(number=1, definition=canonical, origin="file")
    with clock.frozen(clock.now().replace(year=2026, month=12, day=2)):
        again = definition_from(versions.as_file_data(stored), Path("timed.yaml"), templates())
    assert again.digest() == full.digest()
    # A publish plan lists each change in words.
    before = version_plans.shape_of_definition(load(GOOD))
    after = version_plans.shape_of_definition(full)
    changes = version_plans.diff(before, after)
    assert changes.settings == [
        "holidays none → US",
        "reviewed (not stated) → by Dr A on 2026-12-01",
    ]
    turned = load({**GOOD, "steps": [{**GOOD["steps"][0], "window": True}, GOOD["steps"][1]]})
    assert version_plans.diff(before, version_plans.shape_of_definition(turned)).changed == {
        "hello": ["now follows the send window"]
    }


def test_the_shipped_course_welcome_skips_the_window_and_observes_us_holidays() -> None:
    settings = get_settings()
    course = find(settings.sequences_dir, "ketamine-therapy", EmailTemplates(settings.templates_dir))
    assert [s.key for s in course.steps if not s.use_window] == ["welcome"]
    assert course.holidays == "US"
    # Left unset on purpose (docs/content.md): only the clinic can name its reviewer.
    assert not course.review.is_set


# --- the footer ---------------------------------------------------------------------------------------------


def render_demo(**review: str | None) -> RenderedEmail:
    settings = get_settings()
    context = template_context(
        settings,
        Recipient("ana@example.com", "Ana", "pub"),
        sequence_name="Timed",
        step_number=1,
        step_count=2,
        **review,
    )
    return EmailTemplates(settings.templates_dir).render("demo/hello", context)


def test_the_footer_shows_who_reviewed_the_course_when_set() -> None:
    email = render_demo(reviewed_by="Dr Jane Doe, MD & partners", reviewed_on="December 1, 2026")
    assert "Content reviewed by Dr Jane Doe, MD & partners on December 1, 2026." in email.text
    assert (
        '<p class="footer-text" style="' in email.html
        and "Content reviewed by Dr Jane Doe, MD &amp; partners on December 1, 2026.</p>" in email.html
    )
    # In the footer: after the sender's address, before the unsubscribe link.
    text = email.text
    assert text.index("Sent by") < text.index("Content reviewed by") < text.index("Unsubscribe:")
    html = email.html
    assert html.index("Sent by") < html.index("Content reviewed by") < html.index("Unsubscribe from")


def test_the_footer_has_no_review_line_when_unset() -> None:
    email = render_demo()
    assert "reviewed" not in email.text.lower() and "reviewed" not in email.html.lower()
    # No blank line left where it would be.
    assert "\n\n\n" not in email.text


def test_review_context_reaches_the_templates_through_template_context() -> None:
    context = template_context(
        get_settings(), Recipient("a@example.com", None, "p"), sequence_name="S", step_number=1, step_count=1
    )
    assert context["reviewed_by"] is None and context["reviewed_on"] is None
