"""Email templates: ``subject.txt``, ``body.txt`` and ``body.html`` per step, extending ``_base/``.

Staff and files change these templates (a step's subject override is saved from the editor and the API), so
they are untrusted code: they compile in :class:`ImmutableSandboxedEnvironment`, with none of Jinja's default
globals, and :meth:`EmailTemplates.check` (a step's parts) and :meth:`EmailTemplates.compile_subject` (a
subject override) refuse at save time a template that names anything but the documented
:data:`CONTEXT_VARIABLES` or reaches for an attribute the sandbox forbids (docs/security.md).

CSS from ``email/_base/email.css`` is inlined into the HTML templates once, when each template is loaded, not
for every email: the inliner sees the template source with every Jinja construct swapped for an opaque
placeholder, so it never mangles template syntax, and the compiled template is cached by Jinja.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import css_inline
from jinja2 import (
    BaseLoader,
    Environment,
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateError,
    TemplateNotFound,
    TemplateSyntaxError,
    meta,
    nodes,
)
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

EMAIL_DIR = "email"
PARTS = ("subject.txt", "body.txt", "body.html")
_JINJA_CONSTRUCT = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
_PLACEHOLDER = re.compile(r"NURTUREJINJA(\d+)X")

# What an email template may use: the names ``mail.context.template_context`` fills (and ``confirm_url`` in
# the confirmation email). A template naming anything else is refused when it is saved.
CONTEXT_VARIABLES: dict[str, str] = {
    "first_name": "the subscriber's first name, or nothing",
    "email": "the subscriber's address",
    "org_name": "NURTURE_ORG_NAME",
    "postal_address": "NURTURE_POSTAL_ADDRESS",
    "contact_url": "NURTURE_CONTACT_URL",
    "base_url": "NURTURE_BASE_URL",
    "logo_url": "NURTURE_LOGO_URL, or nothing",
    "brand_color": "NURTURE_BRAND_COLOR",
    "unsubscribe_url": "this subscriber's one-click unsubscribe page",
    "preferences_url": "this subscriber's preferences page",
    "sequence_name": "the sequence's name",
    "step_number": "this step's position, from 1",
    "step_count": "how many steps the sequence has",
    "reviewed_by": "who reviewed the course (the sequence file's reviewed_by), or nothing",
    "reviewed_on": "when, as text such as 'December 1, 2026' (reviewed_on), or nothing",
    "confirm_url": "the double opt-in link (confirmation emails only)",
}
# Filled in for the trial render that check and compile_subject make of every template.
_SAMPLE_CONTEXT: dict[str, Any] = {
    name: "https://example.invalid/sample" if name.endswith("_url") else "Sample"
    for name in CONTEXT_VARIABLES
} | {"step_number": 1, "step_count": 1, "brand_color": "#0b5394", "email": "sample@example.invalid"}


class UnsafeTemplateError(TemplateError):
    """A template that reaches beyond the documented context: refused before it is stored."""


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
        self._html = _sandbox(loader, autoescape=True)
        self._text = _sandbox(loader, autoescape=False, keep_trailing_newline=True)
        self._subjects: dict[str, Template] = {}
        self._samples: dict[tuple[Any, ...], RenderedEmail] = {}

    def exists(self, template_dir: str) -> list[str]:
        """The parts missing from ``template_dir`` (empty when the step's templates are complete)."""
        folder = self.root / template_dir
        return [part for part in PARTS if not (folder / part).is_file()]

    def check(self, template_dir: str) -> None:
        """Compile and verify every part (and the ``_base`` parts they extend), raising
        :class:`TemplateError` on a missing file, a syntax error or an unsafe template."""
        for part in PARTS:
            env = self._html if part.endswith(".html") else self._text
            names = [f"{template_dir}/{part}", f"_base/{part}"]
            for name in names:
                self._verify_source(env, env.loader.get_source(env, name)[0], name)  # type: ignore[union-attr]
            env.get_template(names[0]).render(_SAMPLE_CONTEXT)

    def compile_subject(self, source: str) -> Template:
        """A step's subject override (Jinja, rendered like ``subject.txt``), verified and compiled once per
        text; :class:`TemplateError` when it does not compile or is unsafe."""
        compiled = self._subjects.get(source)
        if compiled is None:
            self._verify_source(self._text, source, "subject")
            compiled = self._text.from_string(source)
            compiled.render(_SAMPLE_CONTEXT)
            self._subjects[source] = compiled
        return compiled

    def _verify_source(self, env: Environment, source: str, name: str) -> None:
        """Refuse what the sandbox would only stop at render time, and only on the branch that ran: a name
        outside :data:`CONTEXT_VARIABLES`, an underscore attribute, the ``attr`` filter, templates other
        than the ``_base`` parts."""
        tree = env.parse(source, name=name)
        unknown = sorted(meta.find_undeclared_variables(tree) - CONTEXT_VARIABLES.keys())
        if unknown:
            known = ", ".join(CONTEXT_VARIABLES)
            raise UnsafeTemplateError(
                f"uses {', '.join(unknown)}, which is not a template variable ({known})"
            )
        for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
            if isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
                raise UnsafeTemplateError(f"reads the attribute {node.attr!r}, which templates may not use")
            if isinstance(node, nodes.Getitem) and _underscore_constant(node.arg):
                raise UnsafeTemplateError("reads an underscore item, which templates may not use")
            if isinstance(node, nodes.Filter) and node.name == "attr":
                raise UnsafeTemplateError("uses the attr filter, which templates may not use")
        for referenced in meta.find_referenced_templates(tree):
            if referenced is None or not referenced.startswith("_base/"):
                raise UnsafeTemplateError(
                    f"includes {referenced or 'a computed template'}: only _base/ parts"
                )

    def writes_verbatim(self, template_dir: str, subject: str | None, names: frozenset[str]) -> bool:
        """Whether the step's templates (the parts and every template they extend or include) use each of
        ``names`` only as written: output as is (``{{ name }}``, also inside ``~`` and the branches of an
        inline if) or tested for truth (``{% if name %}``, ``... if name else ...``). Then a render with a
        placeholder for the value, the placeholder later replaced by the (escaped) value, is the render
        with the value (nurture.mail.plans); a filter, a comparison or a call on the value is not."""
        sources: list[tuple[Environment, str, str]] = []
        if subject:
            sources.append((self._text, subject, "subject"))
        for part in PARTS if not subject else PARTS[1:]:
            env = self._html if part.endswith(".html") else self._text
            sources.append((env, self._source(env, f"{template_dir}/{part}"), f"{template_dir}/{part}"))
        seen: set[tuple[Environment, str]] = set()
        while sources:
            env, source, name = sources.pop()
            tree = env.parse(source, name=name)
            if not _verbatim(tree, names, "statement"):
                return False
            for referenced in meta.find_referenced_templates(tree):
                if referenced is None:
                    return False
                if (env, referenced) not in seen:
                    seen.add((env, referenced))
                    sources.append((env, self._source(env, referenced), referenced))
        return True

    @staticmethod
    def _source(env: Environment, name: str) -> str:
        return env.loader.get_source(env, name)[0]  # type: ignore[union-attr]

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

    def render_sample(
        self,
        template_dir: str,
        subject: str | None,
        key: Hashable,
        context_of: Callable[[], Mapping[str, Any]],
    ) -> RenderedEmail:
        """:meth:`render` with the context ``context_of()`` builds, remembered under ``key``: for a context
        that carries no subscriber's data (the same for every email of a step), so comparing against it
        costs one render per step and process."""
        cache_key = (template_dir, subject, key)
        sample = self._samples.get(cache_key)
        if sample is None:
            if len(self._samples) > 1024:  # steps x sequences is small; this only bounds a leak
                self._samples.clear()
            sample = self._samples[cache_key] = self.render(template_dir, context_of(), subject)
        return sample


def _sandbox(loader: BaseLoader, **options: Any) -> Environment:
    env = ImmutableSandboxedEnvironment(
        loader=loader, undefined=StrictUndefined, auto_reload=False, **options
    )
    # range, dict, cycler, joiner, lipsum and namespace are not documented variables, and cycler's globals
    # were the way to the os module before the sandbox.
    env.globals.clear()
    return env


def _verbatim(node: nodes.Node, names: frozenset[str], mode: str) -> bool:
    """EmailTemplates.writes_verbatim's walk. ``mode`` says where ``node`` stands: "output" (its value is
    written out as is), "test" (only its truth counts), "statement", or "other" (any other expression)."""
    if isinstance(node, nodes.Name) and node.name in names:
        return mode in ("output", "test") and node.ctx == "load"
    if isinstance(node, nodes.Output):
        return all(_verbatim(child, names, "output") for child in node.nodes)
    if isinstance(node, nodes.Concat):
        return all(_verbatim(child, names, "output" if mode == "output" else "other") for child in node.nodes)
    if isinstance(node, nodes.CondExpr):
        branches = [branch for branch in (node.expr1, node.expr2) if branch is not None]
        return _verbatim(node.test, names, "test") and all(_verbatim(b, names, mode) for b in branches)
    if isinstance(node, nodes.If):
        body = [*node.body, *node.elif_, *node.else_]
        return _verbatim(node.test, names, "test") and all(_verbatim(c, names, "statement") for c in body)
    child_mode = "other" if isinstance(node, nodes.Expr) else "statement"
    return all(_verbatim(child, names, child_mode) for child in node.iter_child_nodes())


def _underscore_constant(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Const) and isinstance(node.value, str) and node.value.startswith("_")


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


__all__ = [
    "CONTEXT_VARIABLES",
    "EmailTemplates",
    "RenderedEmail",
    "SecurityError",
    "TemplateNotFound",
    "TemplateSyntaxError",
    "UnsafeTemplateError",
]
