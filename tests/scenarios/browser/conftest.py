"""Real-browser checks shared by the newcomer walk: Debian's chromium through Playwright (never Playwright's
own browser download), axe-core for accessibility, screenshots kept as test artefacts.

Artefacts go to ``NURTURE_TEST_ARTIFACTS`` (default ``var/test-artifacts/`` in the repository, which git
ignores), one PNG per page and viewport, named ``<walk>-<width>-<nn>-<page>.png``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright import sync_api

from tests.support.browser import CHROMIUM_FLAGS, chromium_path

REPO = Path(__file__).resolve().parents[3]
AXE = Path(__file__).resolve().parent / "axe" / "axe.min.js"  # axe-core 4.14.1, vendored (axe/README.md)
ARTIFACTS = Path(os.environ.get("NURTURE_TEST_ARTIFACTS") or REPO / "var" / "test-artifacts")
BLOCKING = ("serious", "critical")


@pytest.fixture(scope="module")
def chromium() -> Iterator[sync_api.Browser]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Inspector:
    """Checks each page a walk reaches: axe (no serious or critical violation), no sideways scrolling, and
    a screenshot. ``seen`` lists the paths checked, so a test can say which pages it covered."""

    walk: str
    width: int
    count: int = 0
    seen: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Screenshots of an earlier run of this walk would mix with this run's under other numbers.
        for old in ARTIFACTS.glob(f"{self.walk}-{self.width}-*.png"):
            old.unlink()

    def check(self, page: sync_api.Page, name: str) -> None:
        page.wait_for_load_state("load")
        self.count += 1
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / f"{self.walk}-{self.width}-{self.count:02d}-{name}.png"
        page.screenshot(path=str(shot), full_page=True)
        wide = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert wide <= 0, f"{name} ({page.url}) scrolls sideways by {wide}px at {self.width}px: {shot}"
        page.add_script_tag(path=str(AXE))
        found = page.evaluate(
            """async () => {
                const result = await axe.run(document, {resultTypes: ["violations"]});
                return result.violations.map(v => ({
                    id: v.id, impact: v.impact, help: v.help,
                    nodes: v.nodes.slice(0, 5).map(n => n.target.join(" "))
                }));
            }"""
        )
        blocking = [v for v in found if v["impact"] in BLOCKING]
        assert not blocking, f"axe on {name} ({page.url}) at {self.width}px:\n" + json.dumps(
            blocking, indent=2
        )
        self.seen.append(page.url)
