"""Each step written once per process, with slots for what differs from one reader to the next.

Rendering a step for one person (Jinja, link rewriting, quoted-printable over some 150 lines) was the largest
share of a worker's CPU per email (bench/analysis.md), yet nearly all of it is the same for every reader of
the step: only the first name, the address, the two signed links and the tracked links' tokens differ. A
:class:`StepPlan` is the step made by the very same code as any email (``mail.context``'s render,
``tracking.LinkRewriter``, ``mail.compose``'s encoding) with a placeholder for each of those values. An email
is then the plan's pieces joined with the person's values, under a header block from ``mail.compose``.

Filling in a plan gives the bytes a full render gives, because a plan is only used when nothing between the
value and the bytes can change it:

* the templates use the values only as written (``{{ first_name }}``, inside ``~`` and inline if/else, or as
  an if test), checked on their syntax trees (``EmailTemplates.writes_verbatim``); a name present and a name
  absent are two plans, for the tests;
* the values are plain: no line break, control character or run of spaces, which the subject's and text
  part's tidying would change (``_plain``); the HTML part gets them escaped, as autoescape writes them;
* every plan is checked once, when made, against a full render for a stand-in reader.

Anything else is rendered in full (``StepPlans.message`` answers None). tests/mail/test_plans.py compares the
two over random readers and steps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from markupsafe import escape

from nurture.core import tokens
from nurture.core.config import Settings
from nurture.mail.compose import assemble, body_lines, encode_line, message_head, message_id_for, new_boundary
from nurture.mail.context import Recipient, envelope_for, samples_of_step, step_message, template_context
from nurture.mail.links import LinkRewriter, LinkRow, link_token
from nurture.mail.templates import EmailTemplates

# Private-use characters: nothing a template, a setting or an escape writes, and a plain value never holds.
_OPEN, _CLOSE = "\ue000", "\ue001"
_SLOT = re.compile(f"{_OPEN}(\\w+){_CLOSE}")
PERSONAL = frozenset({"first_name", "email", "unsubscribe_url", "preferences_url"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f\ue000\ue001]")
_PLANS_KEPT = 1024  # steps x sequences x (name, no name) is small; this only bounds a leak


def _slot(name: str) -> str:
    return f"{_OPEN}{name}{_CLOSE}"


def _plain(value: str) -> bool:
    """A value that goes through the renders' tidying (subject on one line, text lines trimmed, blank runs
    folded) unchanged wherever it stands."""
    return value == " ".join(value.split()) and not _CONTROL.search(value)


@dataclass(frozen=True)
class StepSpec:
    """What a step's email is made of, apart from its reader (the sender's ``Prepared`` carries it)."""

    template: str
    subject: str | None
    sequence_name: str
    step_number: int
    step_count: int
    clicks: bool
    opens: bool
    # Who reviewed the course and when, as the footer shows them (nurture.sequences.review); None: no line.
    reviewed_by: str | None = None
    reviewed_on: str | None = None


class _Filled:
    """A text with slots, cut once into literal pieces (even positions) and slot names (odd)."""

    __slots__ = ("pieces",)

    def __init__(self, text: str) -> None:
        self.pieces = _SLOT.split(text)

    def fill(self, values: dict[str, str]) -> str:
        pieces = self.pieces.copy()
        for index in range(1, len(pieces), 2):
            pieces[index] = values[pieces[index]]
        return "".join(pieces)


class _EncodedBody:
    """A part's body in quoted-printable: the lines without a slot encoded once, the others when filled."""

    def __init__(self, body: str) -> None:
        pieces: list[bytes | _Filled] = []
        for index, line in enumerate(body_lines(body)):
            if index:
                pieces.append(b"\r\n")
            pieces.append(_Filled(line) if _OPEN in line else encode_line(line))
        merged: list[bytes | _Filled] = []
        for piece in pieces:
            if isinstance(piece, bytes) and merged and isinstance(merged[-1], bytes):
                merged[-1] += piece
            else:
                merged.append(piece)
        self.pieces = merged

    def encode(self, values: dict[str, str]) -> bytes:
        return b"".join(
            [piece if isinstance(piece, bytes) else encode_line(piece.fill(values)) for piece in self.pieces]
        )


@dataclass(frozen=True)
class _Link:
    slot: str
    kind: str
    url: str | None
    goal: str | None


class StepPlan:
    """One step for readers with (or without) a first name; :meth:`message` makes a reader's email."""

    def __init__(
        self, settings: Settings, spec: StepSpec, subject: str, text: str, html: str, links: list[_Link]
    ):
        self._settings = settings
        self._subject = _Filled(subject)
        self._text = _EncodedBody(text)
        self._html = _EncodedBody(html)
        self._links = links
        self._boundary = new_boundary()  # one per plan: it can never occur in quoted-printable (compose)

    def message(
        self, recipient: Recipient, delivery_id: int, date: datetime
    ) -> tuple[bytes, str, list[LinkRow]]:
        """(RFC 5322 bytes, Message-ID, tracked links to store): what mail.context.step_message and the
        link rewriter give for this reader, from the plan."""
        settings = self._settings
        unsubscribe_url = tokens.link(tokens.Purpose.unsubscribe, recipient.public_id, settings)
        values = {
            "email": recipient.email,
            "unsubscribe_url": unsubscribe_url,
            "preferences_url": tokens.link(tokens.Purpose.preferences, recipient.public_id, settings),
        }
        if recipient.first_name:
            values["first_name"] = recipient.first_name
        escaped = {name: str(escape(value)) for name, value in values.items()}
        rows: list[LinkRow] = []
        for link in self._links:
            token = link_token(settings.secret_key, delivery_id, link.kind, link.url)
            values[link.slot] = escaped[link.slot] = token
            rows.append(LinkRow(token, link.kind, link.url, link.goal))
        message_id = message_id_for(delivery_id, settings.secret_key, settings.mail.from_domain)
        envelope = envelope_for(settings, recipient, message_id, date, unsubscribe_url)
        head = message_head(self._subject.fill(values), envelope, self._boundary)
        data = assemble(head, self._boundary, self._text.encode(values), self._html.encode(escaped))
        return data, message_id, rows

    @property
    def boundary(self) -> str:
        return self._boundary


class StepPlans:
    """The plans of one process (a sender's): made on first use, one per step and kind of reader."""

    def __init__(self, settings: Settings, templates: EmailTemplates) -> None:
        self._settings = settings
        self._templates = templates
        self._plans: dict[tuple[StepSpec, bool], StepPlan | None] = {}

    def message(
        self, spec: StepSpec, recipient: Recipient, delivery_id: int, date: datetime
    ) -> tuple[bytes, str, list[LinkRow]] | None:
        """The reader's email from the step's plan, or None when it must be rendered in full."""
        if not (_plain(recipient.email) and (not recipient.first_name or _plain(recipient.first_name))):
            return None
        key = (spec, bool(recipient.first_name))
        if key not in self._plans:
            if len(self._plans) >= _PLANS_KEPT:
                self._plans.clear()
            self._plans[key] = self._plan(spec, named=key[1])
        plan = self._plans[key]
        return None if plan is None else plan.message(recipient, delivery_id, date)

    def _plan(self, spec: StepSpec, *, named: bool) -> StepPlan | None:
        if not self._templates.writes_verbatim(spec.template, spec.subject, PERSONAL):
            return None
        try:
            plan = self._written(spec, named=named)
            if not self._agrees(plan, spec, named=named):
                return None
        except Exception:  # a step that does not render is rendered in full, where its error is recorded
            return None
        return plan

    def _written(self, spec: StepSpec, *, named: bool) -> StepPlan:
        settings = self._settings
        stand_in = Recipient(_slot("email"), _slot("first_name") if named else None, "plan")
        context = template_context(
            settings,
            stand_in,
            sequence_name=spec.sequence_name,
            step_number=spec.step_number,
            step_count=spec.step_count,
            reviewed_by=spec.reviewed_by,
            reviewed_on=spec.reviewed_on,
        ) | {"unsubscribe_url": _slot("unsubscribe_url"), "preferences_url": _slot("preferences_url")}
        rendered = self._templates.render(spec.template, context, spec.subject)
        count = iter(range(1_000_000))
        rewriter = LinkRewriter(
            settings,
            0,
            clicks=spec.clicks,
            opens=spec.opens,
            token_for=lambda kind, url: _slot(f"link{next(count)}"),
        )
        samples = samples_of_step(
            settings,
            self._templates,
            spec.template,
            spec.subject,
            spec.sequence_name,
            spec.step_number,
            spec.step_count,
        )
        rendered = rewriter.rewrite(rendered, written_by=samples)
        links = [
            _Link(_SLOT.fullmatch(row.token).group(1), row.kind, row.url, row.goal)  # type: ignore[union-attr]
            for row in rewriter.rows.values()
        ]
        return StepPlan(settings, spec, rendered.subject, rendered.text, rendered.html, links)

    def _agrees(self, plan: StepPlan, spec: StepSpec, *, named: bool) -> bool:
        """The plan's email for a stand-in reader, byte for byte the full render's."""
        reader = Recipient(
            "plan.check+&'\"@example.invalid", 'Zoë & <Ann> "O\'Neil"' if named else None, "plancheck"
        )
        date = datetime.fromisoformat("2026-01-02T03:04:05+00:00")
        links = LinkRewriter(self._settings, 1, clicks=spec.clicks, opens=spec.opens)
        # The tokens carry their signing second: both renders must be signed in the same one.
        with tokens.signed_in_one_second():
            _rendered, full, _ = step_message(
                self._settings,
                self._templates,
                reader,
                template=spec.template,
                sequence_name=spec.sequence_name,
                step_number=spec.step_number,
                step_count=spec.step_count,
                reviewed_by=spec.reviewed_by,
                reviewed_on=spec.reviewed_on,
                delivery_id=1,
                date=date,
                subject=spec.subject,
                links=links,
                boundary=plan.boundary,
            )
            made, _, rows = plan.message(reader, 1, date)
        return made == full and rows == list(links.rows.values())


__all__ = ["PERSONAL", "StepPlan", "StepPlans", "StepSpec"]
