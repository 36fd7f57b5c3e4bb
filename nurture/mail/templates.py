"""Email templates: ``subject.txt``, ``body.txt`` and ``body.html`` per step, extending ``_base/``.

CSS from ``email/_base/email.css`` is inlined into the HTML templates once, when each template is loaded, not
for every email: the inliner sees the template source with every Jinja construct swapped for an opaque
placeholder, so it never mangles template syntax, and the compiled template is cached by Jinja.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import css_inline
from jinja2 import BaseLoader, Environment, FileSystemLoader, StrictUndefined, Template, TemplateNotFound

EMAIL_DIR = "email"
PARTS = ("subject.txt", "body.txt", "body.html")
_JINJA_CONSTRUCT = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
_PLACEHOLDER = re.compile(r"NURTUREJINJA(\d+)X")


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


class CssInliningLoader(BaseLoader):
    """Loads templates from disk and inlines the email stylesheet into ``.html`` sources."""

    def __init__(self, root: Path, stylesheet: str) -> None:
        self._files = FileSystemLoader(str(root))
        self._inliner = css_inline.CSSInliner(
            extra_css=stylesheet, keep_style_tags=True, load_remote_stylesheets=False
        )
        self._stylesheet = stylesheet

    def get_source(
        self, environment: Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool]]:
        source, filename, uptodate = self._files.get_source(environment, template)
        if template.endswith(".html"):
            source = self._inline(source)
        return source, filename, uptodate

    def _inline(self, source: str) -> str:
        constructs: list[str] = []

        def protect(match: re.Match[str]) -> str:
            constructs.append(match.group(0))
            return f"NURTUREJINJA{len(constructs) - 1}X"

        protected = _JINJA_CONSTRUCT.sub(protect, source)
        is_document = protected.lstrip()[:15].lower().startswith(("<!doctype", "<html"))
        if is_document:
            inlined = self._inliner.inline(protected)
        else:
            inlined = css_inline.inline_fragment(protected, self._stylesheet)
        # The HTML serialiser writes the placeholders back verbatim (they are plain word characters).
        return _PLACEHOLDER.sub(lambda m: constructs[int(m.group(1))], inlined)

    def list_templates(self) -> list[str]:
        return self._files.list_templates()


class EmailTemplates:
    """Renders a step's three templates into a subject line, a text body and an HTML body."""

    def __init__(self, templates_dir: Path) -> None:
        root = Path(templates_dir) / EMAIL_DIR
        stylesheet_path = root / "_base" / "email.css"
        stylesheet = stylesheet_path.read_text(encoding="utf-8") if stylesheet_path.exists() else ""
        self.root = root
        loader = CssInliningLoader(root, stylesheet)
        # Two environments: autoescape applies to HTML only, so text parts never show "&amp;".
        self._html = Environment(loader=loader, autoescape=True, undefined=StrictUndefined, auto_reload=False)
        self._text = Environment(
            loader=loader,
            autoescape=False,
            undefined=StrictUndefined,
            auto_reload=False,
            keep_trailing_newline=True,
        )
        self._subjects: dict[str, Template] = {}

    def exists(self, template_dir: str) -> list[str]:
        """The parts missing from ``template_dir`` (empty when the step's templates are complete)."""
        folder = self.root / template_dir
        return [part for part in PARTS if not (folder / part).is_file()]

    def check(self, template_dir: str) -> None:
        """Compile every part, raising on a missing file or a syntax error."""
        for part in PARTS:
            env = self._html if part.endswith(".html") else self._text
            env.get_template(f"{template_dir}/{part}")

    def compile_subject(self, source: str) -> Template:
        """A step's subject override (Jinja, rendered like ``subject.txt``); compiled once per text."""
        compiled = self._subjects.get(source)
        if compiled is None:
            compiled = self._subjects[source] = self._text.from_string(source)
        return compiled

    def render(
        self, template_dir: str, context: Mapping[str, Any], subject: str | None = None
    ) -> RenderedEmail:
        subject_template = (
            self.compile_subject(subject)
            if subject
            else self._text.get_template(f"{template_dir}/subject.txt")
        )
        subject = subject_template.render(context)
        text = self._text.get_template(f"{template_dir}/body.txt").render(context)
        html = self._html.get_template(f"{template_dir}/body.html").render(context)
        return RenderedEmail(subject=one_line(subject), text=tidy_text(text), html=html)


def one_line(value: str) -> str:
    """Subjects are a single line: folding whitespace here also keeps template newlines out of the header."""
    return " ".join(value.split())


def tidy_text(value: str) -> str:
    """Trim trailing spaces and runs of blank lines left by template blocks."""
    lines = [line.rstrip() for line in value.strip().splitlines()]
    tidy: list[str] = []
    for line in lines:
        if line or (tidy and tidy[-1]):
            tidy.append(line)
    return "\n".join(tidy) + "\n"


__all__ = ["EmailTemplates", "RenderedEmail", "TemplateNotFound"]
