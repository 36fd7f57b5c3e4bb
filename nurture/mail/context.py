"""What every email template can use, and the message a subscriber gets for a step."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from nurture.core import tokens
from nurture.core.config import Settings
from nurture.mail.compose import Envelope, compose, message_id_for
from nurture.mail.templates import EmailTemplates, RenderedEmail

if TYPE_CHECKING:
    from nurture.mail.links import LinkRewriter


@dataclass(frozen=True)
class Recipient:
    email: str
    first_name: str | None
    public_id: str


# Stand-ins for a subscriber when only the templates' own output is wanted
# (nurture.subscribers.clicks.links_written):
# with and without a name, so a link inside ``{% if first_name %}`` counts as written by the template.
_NOBODY = (
    Recipient("subscriber@example.invalid", None, "nobody"),
    Recipient("subscriber@example.invalid", "Name", "nobody"),
)


def template_context(
    settings: Settings,
    recipient: Recipient,
    *,
    sequence_name: str,
    step_number: int,
    step_count: int,
    reviewed_by: str | None = None,
    reviewed_on: str | None = None,
) -> dict[str, Any]:
    return {
        "first_name": recipient.first_name or None,
        "email": recipient.email,
        "org_name": settings.org_name,
        "postal_address": settings.postal_address,
        "contact_url": settings.contact_url,
        "base_url": settings.web.base_url,
        "logo_url": settings.logo_url or None,
        "brand_color": settings.brand_color,
        "unsubscribe_url": tokens.link(tokens.Purpose.unsubscribe, recipient.public_id, settings),
        "preferences_url": tokens.link(tokens.Purpose.preferences, recipient.public_id, settings),
        "sequence_name": sequence_name,
        "step_number": step_number,
        "step_count": step_count,
        # Who reviewed the course and when (the sequence file's reviewed_by / reviewed_on), for the footer.
        "reviewed_by": reviewed_by,
        "reviewed_on": reviewed_on,
    }


def render_step(
    settings: Settings,
    templates: EmailTemplates,
    recipient: Recipient,
    *,
    template: str,
    sequence_name: str,
    step_number: int,
    step_count: int,
    subject: str | None = None,
    reviewed_by: str | None = None,
    reviewed_on: str | None = None,
) -> tuple[RenderedEmail, dict[str, Any]]:
    """The one rendering of a step for one reader: (rendered parts, the context they saw). Sending, the
    staff preview, the CLI preview and both test sends all come through here."""
    context = template_context(
        settings,
        recipient,
        sequence_name=sequence_name,
        step_number=step_number,
        step_count=step_count,
        reviewed_by=reviewed_by,
        reviewed_on=reviewed_on,
    )
    # A step's subject override (nurture.sequences.versions) replaces the template's own subject.txt.
    if subject:
        return templates.render(template, context, subject), context
    return templates.render(template, context), context


def step_message(
    settings: Settings,
    templates: EmailTemplates,
    recipient: Recipient,
    *,
    template: str,
    sequence_name: str,
    step_number: int,
    step_count: int,
    delivery_id: int,
    date: datetime,
    subject: str | None = None,
    links: LinkRewriter | None = None,
    boundary: str | None = None,
    reviewed_by: str | None = None,
    reviewed_on: str | None = None,
) -> tuple[RenderedEmail, bytes, str]:
    """Render and compose one step for one subscriber: (rendered parts, RFC 5322 bytes, Message-ID).

    With ``links``, the rendered parts' links are rewritten for click/open tracking before composing; the
    caller stores ``links.rows`` before sending."""
    rendered, context = render_step(
        settings,
        templates,
        recipient,
        template=template,
        sequence_name=sequence_name,
        step_number=step_number,
        step_count=step_count,
        subject=subject,
        reviewed_by=reviewed_by,
        reviewed_on=reviewed_on,
    )
    if links is not None:
        samples = samples_of_step(
            settings, templates, template, subject, sequence_name, step_number, step_count
        )
        rendered = links.rewrite(rendered, written_by=samples)
    message_id = message_id_for(delivery_id, settings.secret_key, settings.mail.from_domain)
    envelope = envelope_for(settings, recipient, message_id, date, context["unsubscribe_url"])
    return rendered, compose(rendered, envelope, boundary), message_id


def envelope_for(
    settings: Settings, recipient: Recipient, message_id: str, date: datetime, unsubscribe_url: str
) -> Envelope:
    """The headers of a step's email to ``recipient`` (also what nurture.mail.plans writes under)."""
    return Envelope(
        from_address=settings.mail.from_address,
        to_address=recipient.email,
        to_name=recipient.first_name,
        message_id=message_id,
        date=date,
        unsubscribe_url=unsubscribe_url,
        unsubscribe_mailto=settings.mail.resolved_unsubscribe_mailto,
        reply_to=settings.mail.reply_to or None,
    )


def samples_of_step(
    settings: Settings,
    templates: EmailTemplates,
    template: str,
    subject: str | None,
    sequence_name: str,
    step_number: int,
    step_count: int,
) -> tuple[RenderedEmail, ...]:
    """The step rendered for nobody in particular (cached per step): what its templates write themselves."""

    def context_of(nobody: Recipient) -> dict[str, Any]:
        return template_context(
            settings, nobody, sequence_name=sequence_name, step_number=step_number, step_count=step_count
        )

    return tuple(
        templates.render_sample(
            template,
            subject,
            (nobody, sequence_name, step_number, step_count),
            lambda n=nobody: context_of(n),
        )
        for nobody in _NOBODY
    )
