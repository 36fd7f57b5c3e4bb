"""Render every ketamine-therapy step through the real template engine and check the finished emails."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from nurture.mail import templates
from tests.content.test_ketamine_content import STEPS, subject_text

PROJECT = Path(__file__).resolve().parents[2]
HOSTILE_NAME = "<script>alert(1)</script>{{ 7*7 }}"
CRISIS = "If you are in crisis, call or text 988 in the US, or your local emergency number."
POSTAL = "1 Example Street, Suite 2, Springfield, MA 01101"
BASE_CONTEXT: dict[str, Any] = {
    "email": "ana@example.com",
    "org_name": "Example Counseling & Wellness",
    "postal_address": POSTAL,
    "contact_url": "https://counseling.example.com/contact",
    "base_url": "https://nurture.example.com",
    "logo_url": None,
    "brand_color": "#0b5394",
    "unsubscribe_url": "https://nurture.example.com/unsubscribe/tok-u",
    "preferences_url": "https://nurture.example.com/preferences/tok-p",
    "sequence_name": "Understanding ketamine therapy",
    "step_count": len(STEPS),
    "reviewed_by": None,
    "reviewed_on": None,
}


class Collector(HTMLParser):
    """Collects link targets, image sources and headings from rendered HTML."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[str] = []
        self.images: list[dict[str, str | None]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        found = dict(attrs)
        for name in ("href", "src"):
            if name in found:
                self.urls.append(found[name] or "")
        if tag == "img":
            self.images.append(found)


def parse(html: str) -> Collector:
    collector = Collector()
    collector.feed(html)
    collector.close()
    return collector


@pytest.fixture(scope="module")
def engine() -> Any:
    return templates.EmailTemplates(PROJECT / "templates")


def render(engine: Any, step: str, **overrides: Any) -> Any:
    context = {**BASE_CONTEXT, "first_name": "Ana", "step_number": STEPS.index(step) + 1, **overrides}
    return engine.render(f"ketamine-therapy/{step}", context)


@pytest.mark.parametrize("step", STEPS)
def test_step_renders_a_complete_email(engine: Any, step: str) -> None:
    email = render(engine, step)
    number = STEPS.index(step) + 1

    assert email.subject == subject_text(step)
    assert "\n" not in email.subject and 0 < len(email.subject) < 70

    assert len(email.html.encode("utf-8")) < 100_000
    assert email.html.lower().startswith("<!doctype html>")
    assert '<html lang="en"' in email.html
    page = parse(email.html)
    assert page.tags.count("h1") == 1
    assert page.urls, "expected at least the unsubscribe and preferences links"
    assert all(url.startswith("https://") for url in page.urls), page.urls
    assert "http://" not in email.html
    assert page.images == []  # no logo configured, no image needed

    for raw in (email.text, email.html):
        part = " ".join(raw.split())  # the text part wraps lines
        assert "Hello Ana," in part
        assert f"email {number} of {len(STEPS)}" in part
        assert "not medical advice" in part
        assert "licensed healthcare professional" in part
        assert CRISIS in part
        assert POSTAL in part
        assert "Understanding ketamine therapy" in part
        assert "{{" not in part and "{%" not in part and "NURTUREJINJA" not in part

    assert "Example Counseling & Wellness" in email.text
    assert "Example Counseling &amp; Wellness" in email.html
    assert "Example Counseling & Wellness" not in email.html
    assert f"Unsubscribe: {BASE_CONTEXT['unsubscribe_url']}" in email.text
    assert f"Preferences: {BASE_CONTEXT['preferences_url']}" in email.text
    assert f'href="{BASE_CONTEXT["unsubscribe_url"]}"' in email.html
    assert f'href="{BASE_CONTEXT["preferences_url"]}"' in email.html
    assert not re.search(r"<[a-z][^>]*>|&(amp|lt|gt|quot|nbsp);", email.text), "text part contains markup"
    assert re.search(r'<h1 style="[^"]*color:', email.html), (
        "stylesheet was not inlined into the step content"
    )


@pytest.mark.parametrize("step", STEPS)
def test_greeting_without_a_name(engine: Any, step: str) -> None:
    email = render(engine, step, first_name=None)
    for part in (email.text, email.html):
        assert "Hello," in part
        assert "None" not in part
        assert "Hello ," not in part


@pytest.mark.parametrize("step", STEPS)
def test_hostile_first_name_is_escaped_and_not_evaluated(engine: Any, step: str) -> None:
    email = render(engine, step, first_name=HOSTILE_NAME)
    assert "Hello &lt;script&gt;alert(1)&lt;/script&gt;{{ 7*7 }}," in email.html
    assert "<script>" not in email.html
    assert "Hello <script>alert(1)</script>{{ 7*7 }}," in email.text  # plain text: shown as typed
    assert "&lt;/script&gt;49" not in email.html and "</script>49" not in email.text


def test_contact_step_button_points_to_the_contact_page(engine: Any) -> None:
    email = render(engine, "contact-us")
    assert re.search(
        r'<a [^>]*href="https://counseling\.example\.com/contact"[^>]*>Contact us about an evaluation</a>',
        email.html,
    )
    assert "https://counseling.example.com/contact" in email.text


def test_logo_and_brand_color(engine: Any) -> None:
    email = render(engine, "welcome", logo_url="https://cdn.example.com/logo.png", brand_color="#7a1f5c")
    images = parse(email.html).images
    assert len(images) == 1
    assert images[0]["src"] == "https://cdn.example.com/logo.png"
    assert images[0]["alt"] == "Example Counseling & Wellness"
    assert "#7a1f5c" in email.html


def test_preheader_is_hidden_and_differs_from_subject(engine: Any) -> None:
    email = render(engine, "welcome")
    match = re.search(r'<span class="preheader" style="([^"]*)">([^<]*)</span>', email.html)
    assert match
    assert "display:none" in match.group(1).replace(" ", "")
    assert match.group(2).strip() and not match.group(2).startswith(email.subject)
