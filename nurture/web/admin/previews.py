"""A step's email as a subscriber would get it (a sample one, or a real subscriber by address), when it would
arrive on their clock, and a test send of it to the signed-in staff member."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import TemplateError
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from nurture.core import clock
from nurture.core.db import transaction
from nurture.models import Delivery, Enrollment, Sequence, Subscriber
from nurture.sequences import timetable
from nurture.sequences.review import Review
from nurture.sequences.variants import experiments_of
from nurture.web.admin.auth import BadRequest
from nurture.web.admin.common import NotFound, page, q, sequence_or_404, settings_of
from nurture.web.admin.deps import Viewer, ViewerForm

router = APIRouter(prefix="/admin", include_in_schema=False)


def _render_step(
    request: Request,
    session: Any,
    sequence: Sequence,
    key: str,
    subscriber: Subscriber | None,
    to: str,
    variant: str | None = None,
) -> dict[str, Any]:
    from nurture.mail.context import Recipient, render_step
    from nurture.mail.templates import EmailTemplates

    settings = settings_of(request)
    version = sequence.current_version
    step = next((s for s in (version.steps if version else []) if s.key == key), None)
    if version is None or step is None:
        raise NotFound(f"Sequence {sequence.slug!r} has no step {key!r}.")
    recipient = Recipient(
        subscriber.email if subscriber else to,
        subscriber.first_name if subscriber else "Sam",
        subscriber.public_id if subscriber else "preview",
    )
    templates = EmailTemplates(settings.templates_dir)
    # An A/B test: the variant asked for, else the one this subscriber (or the sample) gets.
    template, subject, shown = step.template, step.subject, None
    experiment = experiments_of(version.definition).get(step.key)
    if experiment is None and variant:
        raise BadRequest(400, f"Step {step.key!r} has no variants.")
    if experiment is not None:
        try:
            chosen = (
                experiment.variant(variant)
                if variant
                else experiment.choose(recipient.public_id, sequence.slug, step.key)
            )
        except KeyError as exc:
            raise BadRequest(400, str(exc.args[0])) from None
        template, shown = chosen.template or template, chosen.key
        subject = chosen.subject if chosen.subject is not None else subject
    # A step's subject override (nurture.sequences.versions) is what subscribers see, so the preview shows it
    # too: the very rendering the sender uses.
    try:
        rendered, _context = render_step(
            settings,
            templates,
            recipient,
            template=template,
            sequence_name=sequence.name,
            step_number=step.position,
            step_count=len(version.steps),
            subject=subject,
            reviewed_by=Review.of(version.definition).by,
            reviewed_on=Review.of(version.definition).on_text,
        )
    except TemplateError as exc:  # e.g. a subject stored before the sandbox refused it at save time
        raise BadRequest(400, f"Step {step.key!r} cannot be rendered: {exc}") from None
    # When would this subscriber (or a sample signing up now) get it, on their own clock?
    table = timetable.of_version(
        version,
        subscriber.timezone if subscriber else None,
        timetable.country_of(subscriber.attributes) if subscriber else None,
    )
    tz = table.tz
    due = None
    if subscriber is not None:
        due = session.scalar(
            select(Delivery.due_at)
            .join(Enrollment, Enrollment.id == Delivery.enrollment_id)
            .where(Delivery.subscriber_id == subscriber.id, Delivery.step_id == step.id)
        )
    if due is None:
        due = table.due_times(clock.now(), version.steps)[step.position - 1]
    return {
        "step": step,
        "rendered": rendered,
        "recipient": recipient,
        "due": due,
        "local": due.astimezone(tz),
        "variant": shown,
        "variants": [v.key for v in experiment.variants] if experiment is not None else [],
    }


@router.get("/sequences/{slug}/steps/{key}")
def preview_page(
    request: Request,
    slug: str,
    key: str,
    who: Viewer,
    subscriber: str | None = None,
    variant: str | None = None,
) -> HTMLResponse:
    with transaction() as session:
        sequence = sequence_or_404(session, slug)
        chosen = None
        error = None
        if subscriber:
            chosen = session.scalar(select(Subscriber).where(Subscriber.email == subscriber.strip().lower()))
            if chosen is None:
                error = f"No subscriber {subscriber!r}; showing the sample subscriber."
        preview = _render_step(request, session, sequence, key, chosen, who.actor.email, variant or None)
        return page(
            request,
            "preview.html",
            404 if error else 200,
            csrf=who.csrf,
            actor=who.actor,
            sequence=sequence,
            subscriber=subscriber or "",
            error=error,
            notice=request.query_params.get("done"),
            **preview,
        )


@router.post("/sequences/{slug}/steps/{key}/test")
async def send_test(request: Request, slug: str, key: str, form: ViewerForm) -> Response:
    from nurture.mail.compose import Envelope, compose, message_id_for
    from nurture.mail.factory import transport_from_url
    from nurture.mail.transports import SendFailure

    actor = form.actor
    settings = settings_of(request)

    def work() -> str:
        with transaction() as session:
            sequence = sequence_or_404(session, slug)
            variant = str(form.fields.get("variant") or "") or None
            preview = _render_step(request, session, sequence, key, None, actor.email, variant)
        rendered = dataclasses.replace(preview["rendered"], subject="[TEST] " + preview["rendered"].subject)
        envelope = Envelope(
            from_address=settings.mail.from_address,
            to_address=actor.email,
            to_name=None,
            message_id=message_id_for(
                0, settings.secret_key + clock.now().isoformat(), settings.mail.from_domain
            ),
            date=clock.now(),
            unsubscribe_url=None,
            reply_to=settings.mail.reply_to or None,
        )
        transport = transport_from_url(
            settings.resolved_smtp_url,
            timeout=settings.mail.smtp_timeout,
            local_hostname=settings.mail.from_domain,
        )
        try:
            transport.send(settings.mail.envelope_from, actor.email, compose(rendered, envelope))
        except SendFailure as exc:
            return f"The test was not sent: {exc}"
        finally:
            transport.close()
        return f"Test sent to {actor.email}."

    message = await run_in_threadpool(work)
    return RedirectResponse(f"/admin/sequences/{slug}/steps/{key}?done={q(message)}", status_code=303)
