"""The finished emails laid out by a real browser engine (Debian's chromium, driven by Playwright).

Email 8's call to action must read as one button on a phone: on a 390 px wide screen (an iPhone 12 to 15)
its label fits on one line, whatever the organisation is called, and nothing runs off the screen.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright import sync_api

from nurture.mail import templates
from tests.content.test_ketamine_render import BASE_CONTEXT, render
from tests.support.browser import CHROMIUM_FLAGS, chromium_path

PROJECT = Path(__file__).resolve().parents[2]
PHONE = {"width": 390, "height": 844}
# Long enough to prove the label does not depend on it: the button names no organisation.
LONG_NAME = "Northern Valley Counseling, Psychiatry & Wellness Associates of Springfield"

MEASURE = """() => {
  const button = document.querySelector('a.button');
  const style = getComputedStyle(button);
  const box = button.getBoundingClientRect();
  const inner = box.height - parseFloat(style.paddingTop) - parseFloat(style.paddingBottom);
  return {
    lines: Math.round(inner / parseFloat(style.lineHeight)),
    right: box.right,
    page: document.documentElement.scrollWidth,
    text: button.textContent,
  };
}"""


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            yield browser.new_context(viewport=PHONE, device_scale_factor=3).new_page()
        finally:
            browser.close()


@pytest.mark.parametrize("org_name", [BASE_CONTEXT["org_name"], LONG_NAME])
def test_contact_button_fits_on_one_line_on_a_phone(page: Any, org_name: str) -> None:
    engine = templates.EmailTemplates(PROJECT / "templates")
    email = render(engine, "contact-us", org_name=org_name)
    page.set_content(email.html)
    measured = page.evaluate(MEASURE)
    assert measured["text"] == "Contact us about an evaluation"
    assert measured["lines"] == 1, measured
    assert measured["right"] <= PHONE["width"], measured
    assert measured["page"] <= PHONE["width"], f"the email scrolls sideways at 390 px: {measured}"
