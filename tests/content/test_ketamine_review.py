"""The patient-information reviewer's points on the second edition of the ketamine course (issue 17), each
checked on the templates as written or as rendered, so a later edit cannot quietly undo one."""

from __future__ import annotations

import re
from typing import Any

import pytest

from nurture.mail import templates
from tests.content.test_ketamine_content import PROJECT, SEQUENCE_DIR, STEPS, block, read, subject_text, words
from tests.content.test_ketamine_render import CRISIS, render
from tests.content.textcheck import reading_grade

NOT_MONITORED = "Replies to these emails are not monitored for emergencies."
DRUG = re.compile(r"ketamine|esketamine|spravato", re.IGNORECASE)
MAX_GRADE = 9.0  # Flesch-Kincaid, headings and list items as sentences (tests/content/textcheck.py)


@pytest.fixture(scope="module")
def engine() -> Any:
    return templates.EmailTemplates(PROJECT / "templates")


def content(step: str, part: str = "body.txt") -> str:
    """The step's own words (its content block), normalised."""
    return words(block(read(SEQUENCE_DIR / step / part), "content"))


# --- discretion: what lock screens and shared inboxes show -----------------------------------------------


@pytest.mark.parametrize("step", STEPS)
def test_subject_preheader_and_title_do_not_name_the_drug(step: str) -> None:
    html = read(SEQUENCE_DIR / step / "body.html")
    for shown in (subject_text(step), block(html, "preheader"), block(html, "title")):
        assert not DRUG.search(shown), f"{step}: {shown!r}"


def test_subjects_use_the_courses_own_framing_in_order() -> None:
    for number, step in enumerate(STEPS, start=1):
        assert subject_text(step).startswith(f"Your course, part {number}: "), step


# --- safety lines ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", STEPS)
def test_every_email_says_replies_are_not_read_for_emergencies_next_to_the_crisis_line(
    engine: Any, step: str
) -> None:
    email = render(engine, step)
    text = " ".join(email.text.split())
    assert f"{CRISIS} {NOT_MONITORED}" in text
    html = " ".join(email.html.split())
    assert re.search(re.escape(CRISIS) + r"</strong> " + re.escape(NOT_MONITORED) + "</p>", html)


@pytest.mark.parametrize("part", ["body.txt", "body.html"])
def test_benefits_email_has_the_crisis_line_in_its_own_body(part: str) -> None:
    own = content("benefits", part)
    assert words(CRISIS) in own
    assert words("replies are not monitored for emergencies") in own


# --- wording -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("part", ["body.txt", "body.html"])
def test_benefits_informs_rather_than_persuades(part: str) -> None:
    own = content("benefits", part)
    for phrase in ("lifeline", "hope", "hopeless", "a sense of"):
        assert words(phrase) not in own, phrase
    assert words("risks and costs") in own  # points to the other half of the picture


@pytest.mark.parametrize("step", STEPS)
def test_relief_is_something_some_people_notice_not_many(step: str) -> None:
    for part in ("body.txt", "body.html"):
        assert words("many people notice") not in content(step, part), f"{step}/{part}"
        assert words("many people say") not in content(step, part), f"{step}/{part}"


@pytest.mark.parametrize("part", ["body.txt", "body.html"])
def test_who_it_may_help_is_careful_about_evidence_evaluation_and_the_list(part: str) -> None:
    own = content("who-it-may-help", part)
    assert words("report real relief") not in own
    assert re.search(r" bipolar .* evidence here is more limited ", own)
    assert words("a clinician should carry out a thorough evaluation") in own
    assert words("clinician carries out") not in own
    assert words("this is not a complete list") in own


@pytest.mark.parametrize("part", ["body.txt", "body.html"])
def test_risks_email_covers_the_unknowns_and_sends_the_reader_to_a_clinician(part: str) -> None:
    own = content("risks-and-costs", part)
    assert words("long-term effects of ketamine therapy are still being studied") in own
    assert words("this is not a complete list") in own
    assert words("talk with a clinician about your own risks") in own


@pytest.mark.parametrize("part", ["body.txt", "body.html"])
def test_the_two_article_shaped_sentences_are_recast(part: str) -> None:
    assert words("respond very well") not in content("is-it-right-for-you", part)
    own = content("risks-and-costs", part)
    assert words("most people need several sessions") not in own
    assert words("often recommended as") not in own


@pytest.mark.parametrize("part", ["body.txt", "body.html"])
def test_welcome_previews_every_later_email_in_course_order(part: str) -> None:
    own = content("welcome", part)
    # One phrase per later email, steps 2..8, in the order they arrive.
    previews = [
        "how ketamine may work in the brain",
        "what happens during a session",
        "who it may help",
        "possible benefits",
        "risks costs and limits",
        "how to decide whether it is right for you",
        "talk it through with us",
    ]
    positions = [own.find(words(phrase)) for phrase in previews]
    assert all(position >= 0 for position in positions), dict(zip(previews, positions, strict=True))
    assert positions == sorted(positions)


def test_what_to_expect_preheader_promises_only_what_the_body_gives() -> None:
    html = read(SEQUENCE_DIR / "what-to-expect" / "body.html")
    preheader = block(html, "preheader")
    assert "visit takes" not in preheader and "how long a session usually lasts" in preheader
    assert words("between 40 and 60 minutes") in content("what-to-expect", "body.html")


# --- readability -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", STEPS)
def test_reading_grade_stays_at_plain_language_level(step: str) -> None:
    grade = reading_grade(read(SEQUENCE_DIR / step / "body.html"))
    assert grade <= MAX_GRADE, f"{step} reads at grade {grade}"


def test_reading_grade_ranks_plain_text_below_dense_text() -> None:
    plain = "<p>We go one step at a time. You can ask us at any point.</p>"
    dense = (
        "<p>Pharmacological intervention necessitates comprehensive psychiatric evaluation, "
        "considering contraindications, comorbidities and concomitant medications.</p>"
    )
    assert reading_grade(plain) < 3 < 15 < reading_grade(dense)
