"""A step's plan writes, for any reader, the very bytes the full render writes (nurture.mail.plans)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nurture.core import tokens
from nurture.core.config import get_settings
from nurture.mail.context import Recipient, step_message
from nurture.mail.links import LinkRewriter
from nurture.mail.plans import StepPlans, StepSpec
from nurture.mail.templates import EmailTemplates

ROOT = Path(__file__).resolve().parents[2]
KETAMINE = [
    "welcome",
    "how-it-works",
    "what-to-expect",
    "who-it-may-help",
    "benefits",
    "risks-and-costs",
    "is-it-right-for-you",
    "contact-us",
]
DATE = datetime(2026, 12, 7, 15, 0, 9, 123456, tzinfo=UTC)

names = st.one_of(
    st.none(),
    st.just(""),
    st.text(min_size=1, max_size=30),  # anything at all: runs of spaces, line breaks, control characters
    st.text(alphabet=st.sampled_from("Zoë &<>\"'Ann-Marie O’Neil https://evil.example é漢"), max_size=25),
)
addresses = st.builds(
    lambda local, domain: f"{local}@{domain}",
    st.text(alphabet=st.sampled_from("abc.+-_&'="), min_size=1, max_size=12),
    st.sampled_from(["example.com", "xn--bcher-kva.example"]),  # addresses are ASCII once validated
)


def full_render(
    templates: EmailTemplates, spec: StepSpec, reader: Recipient, delivery_id: int, boundary: str
) -> tuple[bytes, str, list]:
    links = LinkRewriter(get_settings(), delivery_id, clicks=spec.clicks, opens=spec.opens)
    _rendered, data, message_id = step_message(
        get_settings(),
        templates,
        reader,
        template=spec.template,
        sequence_name=spec.sequence_name,
        step_number=spec.step_number,
        step_count=spec.step_count,
        delivery_id=delivery_id,
        date=DATE,
        subject=spec.subject,
        reviewed_by=spec.reviewed_by,
        reviewed_on=spec.reviewed_on,
        links=links,
        boundary=boundary,
    )
    return data, message_id, list(links.rows.values())


def same_as_full_render(
    plans: StepPlans, templates: EmailTemplates, spec: StepSpec, reader: Recipient
) -> bool:
    """True when the plan wrote the email (and it matched the full render); False when it declined."""
    with tokens.signed_in_one_second():  # the signed links carry the second they were made in
        planned = plans.message(spec, reader, 77, DATE)
        if planned is None:
            return False
        plan = plans._plans[(spec, bool(reader.first_name))]
        assert plan is not None
        assert planned == full_render(templates, spec, reader, 77, plan.boundary)
    return True


@pytest.fixture
def templates() -> EmailTemplates:
    return EmailTemplates(get_settings().templates_dir)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    step=st.sampled_from(KETAMINE),
    subject=st.sampled_from(
        [None, "Part {{ step_number }}, {{ first_name or 'friend' }}", "Hi {{ first_name }}"]
    ),
    clicks=st.booleans(),
    opens=st.booleans(),
    first_name=names,
    email=addresses,
    review=st.sampled_from([(None, None), ("Dr. Ann O'Neil & <team>", "December 1, 2026")]),
)
def test_every_plan_writes_what_the_full_render_writes(
    templates: EmailTemplates,
    step: str,
    subject: str | None,
    clicks: bool,
    opens: bool,
    first_name: str | None,
    email: str,
    review: tuple[str | None, str | None],
) -> None:
    plans = StepPlans(get_settings(), templates)
    spec = StepSpec(
        f"ketamine-therapy/{step}", subject, "What is ketamine therapy?", 3, 8, clicks, opens, *review
    )
    reader = Recipient(email, first_name, "pub-0123456789")
    same_as_full_render(plans, templates, spec, reader)


def test_the_course_is_written_from_plans_for_plain_readers(templates: EmailTemplates) -> None:
    plans = StepPlans(get_settings(), templates)
    for number, step in enumerate(KETAMINE, start=1):
        for first_name in ("Ann", "Zoë O'Neil & <Co>", None):
            spec = StepSpec(f"ketamine-therapy/{step}", None, "Ketamine", number, 8, True, number % 2 == 0)
            assert same_as_full_render(plans, templates, spec, Recipient("a@example.com", first_name, "p1"))


def test_readers_whose_values_the_render_would_tidy_are_rendered_in_full(templates: EmailTemplates) -> None:
    plans = StepPlans(get_settings(), templates)
    spec = StepSpec("ketamine-therapy/welcome", "Hi {{ first_name }}", "Ketamine", 1, 8, True, False)
    for first_name in (
        "Two  spaces",
        " leading",
        "line\nbreak",
        "tab\there",
        "nul\x00",
        "\ue000first_name\ue001",
    ):
        assert plans.message(spec, Recipient("a@example.com", first_name, "p1"), 1, DATE) is None


@pytest.mark.parametrize(
    ("subject", "plannable"),
    [
        ("Hello {{ first_name }}", True),
        ("Hello{{ (' ' ~ first_name) if first_name else '' }}", True),
        ("{% if first_name %}Hi {{ first_name }}{% else %}Hi{% endif %}", True),
        ("Hello {{ first_name|upper }}", False),  # a filter changes the value: no placeholder can stand in
        ("Hello {{ first_name or 'friend' }}", False),
        ("{% if first_name == 'Ann' %}Ann!{% endif %}", False),
        ("{% set name = first_name %}Hi {{ name }}", False),
        ("Mail {{ email[:3] }}", False),
        ("Part {{ step_number }}", True),
    ],
)
def test_templates_that_do_more_than_write_a_value_are_rendered_in_full(
    templates: EmailTemplates, subject: str, plannable: bool
) -> None:
    assert templates.writes_verbatim(
        "ketamine-therapy/welcome", subject, frozenset({"first_name", "email"})
    ) is (plannable)
    plans = StepPlans(get_settings(), templates)
    spec = StepSpec("ketamine-therapy/welcome", subject, "Ketamine", 1, 8, True, False)
    reader = Recipient("ann@example.com", "Ann", "p1")
    assert same_as_full_render(plans, templates, spec, reader) is plannable
    if not plannable:  # and the full render is what the sender then sends
        assert full_render(templates, spec, reader, 77, "b")[0]


def test_a_base_template_that_filters_a_value_keeps_every_step_rendered_in_full(tmp_path: Path) -> None:
    email = tmp_path / "email"
    (email / "_base").mkdir(parents=True)
    (email / "step").mkdir()
    (email / "_base" / "subject.txt").write_text("{% block subject %}{% endblock %}")
    (email / "_base" / "body.txt").write_text("{% block content %}{% endblock %}\n{{ email|lower }}\n")
    (email / "_base" / "body.html").write_text("<html><body>{% block content %}{% endblock %}</body></html>")
    (email / "step" / "subject.txt").write_text(
        '{% extends "_base/subject.txt" %}{% block subject %}S{% endblock %}'
    )
    (email / "step" / "body.txt").write_text(
        '{% extends "_base/body.txt" %}{% block content %}T{% endblock %}'
    )
    (email / "step" / "body.html").write_text(
        '{% extends "_base/body.html" %}{% block content %}H{% endblock %}'
    )
    templates = EmailTemplates(tmp_path)
    assert not templates.writes_verbatim("step", None, frozenset({"email"}))
    plans = StepPlans(get_settings(), templates)
    spec = StepSpec("step", None, "Seq", 1, 1, True, False)
    assert plans.message(spec, Recipient("Ann@Example.com", None, "p1"), 1, DATE) is None
