"""Every setting is documented: each NURTURE_* variable the Settings class reads is named, in backticks, in
the README's settings table or in a table row of a page under docs/ (where a topic's own settings live)."""

from __future__ import annotations

import re
from pathlib import Path

from nurture.core.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def variable_names() -> set[str]:
    prefix = Settings.model_config.get("env_prefix", "")
    return {(field.alias or f"{prefix}{name}").upper() for name, field in Settings.model_fields.items()}


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
