"""The confirmation email must not claim the reader confirmed: it overrides the base footer reason."""

from __future__ import annotations

from nurture.core.config import get_settings
from nurture.mail.context import Recipient, template_context
from nurture.mail.templates import EmailTemplates


def test_the_confirmation_footer_explains_the_single_message_and_sequence_emails_keep_theirs() -> None:
    settings = get_settings()
    templates = EmailTemplates(settings.templates_dir)
    context = template_context(
        settings, Recipient("a@example.com", None, "pid"), sequence_name="Course", step_number=1, step_count=1
    )
    confirm = templates.render(
        "transactional/confirm", {**context, "confirm_url": "https://nurture.test/c/x"}
    )
    for part in (confirm.text, confirm.html):
        assert "confirmed your address" not in part and "If it was not you, ignore it" in part
    welcome = templates.render("ketamine-therapy/welcome", context)
    assert all("confirmed your address" in part for part in (welcome.text, welcome.html))
