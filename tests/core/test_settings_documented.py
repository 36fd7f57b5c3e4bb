"""Every setting is documented: each NURTURE_* variable the Settings class reads is named, in backticks, in
the README's settings table or in a table row of a page under docs/ (where a topic's own settings live)."""

from __future__ import annotations

import re
from pathlib import Path

from nurture.core.config import SECTIONS, Settings

ROOT = Path(__file__).resolve().parents[2]


def variable_names() -> set[str]:
    """Every variable of the general settings and of each section (a section itself is no variable)."""
    names = set()
    for model in (Settings, *SECTIONS.values()):
        prefix = model.model_config.get("env_prefix", "")
        names |= {
            (field.alias or f"{prefix}{name}").upper()
            for name, field in model.model_fields.items()
            if name not in SECTIONS
        }
    return names


def test_every_variable_is_read_by_exactly_one_model() -> None:
    counts: dict[str, int] = {}
    for model in (Settings, *SECTIONS.values()):
        for name in model.model_fields:
            if name not in SECTIONS:
                counts[name] = counts.get(name, 0) + 1
    assert len(counts) >= 70 and set(counts.values()) == {1}


def documented_names() -> set[str]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    rows = [
        line
        for page in pages
        for line in page.read_text(encoding="utf-8").splitlines()
        if line.startswith("|")
    ]
    return {name for row in rows for name in re.findall(r"`(NURTURE_[A-Z0-9_]+)`", row)}


def test_every_setting_is_in_a_documentation_table() -> None:
    assert sorted(variable_names() - documented_names()) == []
