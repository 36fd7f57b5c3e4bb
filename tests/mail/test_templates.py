"""Templates staff and files can change are untrusted code: sandboxed, and refused at save time when they
reach beyond the documented context (issue: security, item 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from nurture.core.config import get_settings
from nurture.core.db import transaction
from nurture.mail.context import Recipient, template_context
from nurture.mail.templates import CONTEXT_VARIABLES, EmailTemplates, SecurityError, UnsafeTemplateError
from nurture.models import SequenceVersion, Step
from tests.support.staff import csrf_of
from tests.web.admin.test_editor import EDIT, edit_form

MARKER_COMMAND = "touch {marker}"
# Each reaches for something outside the documented variables: the first ran a shell command before.
ATTACKS = [
    "{{ cycler.__init__.__globals__.os.popen('%s').read() }}",
    "{{ first_name.__class__.__mro__[1].__subclasses__() }}",
    "{{ first_name|attr('__class__') }}",
    "{{ first_name['__class__'] }}",
    "{{ lipsum.__globals__ }}",
    "{{ range(10)|list }}",
    "{{ namespace() }}",
    "{{ config }}",
    "{% include '../../../etc/passwd' %}",
]


def attack(template: str, marker: Path) -> str:
    return template % MARKER_COMMAND.format(marker=marker) if "%s" in template else template


def draft_body(subject: str) -> dict[str, Any]:
    return {
        "name": "The course",
        "timezone": "America/New_York",
        "window": {"days": "mon-fri", "start": "09:00", "end": "17:00"},
        "steps": [
            {"key": "hello", "delay": 0, "template": "demo/hello"},
            {"key": "goodbye", "delay": "3d", "template": "demo/goodbye", "subject": subject},
        ],
    }


def version_count(world) -> int:  # type: ignore[no-untyped-def]
    with transaction(world) as session:
        return session.scalar(select(func.count()).select_from(SequenceVersion)) or 0


@pytest.mark.parametrize("template", ATTACKS)
def test_api_refuses_a_subject_that_reaches_beyond_the_context(api, world, tmp_path, template) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "ran"
    refused = api(
        "editor", "PUT", "/api/v1/sequences/course/draft", json=draft_body(attack(template, marker))
    )
    assert refused.status_code == 400, refused.text
    message = refused.json()["error"]["message"]
    assert "goodbye" in message and "subject" in message
    assert version_count(world) == 1
    assert not marker.exists()


def test_editor_form_refuses_the_subject_naming_the_step(signed_in, world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "ran"
    editor = signed_in("editor")
    token = csrf_of(editor, EDIT)
    response = editor.post(EDIT, data=edit_form(token, **{"steps-3-subject": attack(ATTACKS[0], marker)}))
    assert response.status_code == 400
    assert "goodbye" in response.text and "subject is refused" in response.text
    assert "cycler" in response.text
    assert version_count(world) == 1
    assert not marker.exists()


def test_a_documented_subject_is_accepted(api, world) -> None:  # type: ignore[no-untyped-def]
    subject = "{{ first_name or 'Hello' }}, part {{ step_number }} of {{ step_count }} from {{ org_name }}"
    saved = api("editor", "PUT", "/api/v1/sequences/course/draft", json=draft_body(subject))
    assert saved.status_code == 200, saved.text


def test_a_subject_stored_before_the_fix_runs_nothing_in_preview_or_send(signed_in, world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A malicious subject already in the database (saved by an older release) cannot run either."""
    marker = tmp_path / "ran"
    with transaction(world) as session:
        session.execute(update(Step).where(Step.key == "goodbye").values(subject=attack(ATTACKS[0], marker)))
    viewer = signed_in("viewer")
    response = viewer.get("/admin/sequences/course/steps/goodbye")
    assert response.status_code == 400
    assert "cannot be rendered" in response.text
    assert not marker.exists()


@pytest.mark.parametrize("template", ATTACKS)
def test_rendering_is_sandboxed_even_without_the_save_time_check(tmp_path, template) -> None:  # type: ignore[no-untyped-def]
    """Defence in depth: the environments themselves refuse, whatever reached them."""
    marker = tmp_path / "ran"
    templates = EmailTemplates(get_settings().templates_dir)
    settings = get_settings()
    context = template_context(
        settings, Recipient("a@example.com", "Ann", "p1"), sequence_name="S", step_number=1, step_count=1
    )
    compiled = templates._text.from_string(attack(template, marker))  # the raw environment, no verify
    with pytest.raises(Exception) as raised:
        compiled.render(context)
    assert isinstance(raised.value, SecurityError | LookupError) or "undefined" in str(raised.value)
    assert not marker.exists()


def test_a_template_file_that_reaches_beyond_the_context_fails_validation(tmp_path, set_env) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "templates"
    source = Path(get_settings().templates_dir) / "email"
    (root / "email").mkdir(parents=True)
    for part in ("_base", "demo"):
        (root / "email" / part).symlink_to(source / part)
    bad = root / "email" / "bad"
    bad.mkdir()
    for part in ("subject.txt", "body.txt", "body.html"):
        (bad / part).write_text((source / "demo" / "hello" / part).read_text())
    (bad / "body.txt").write_text("{{ self.__init__.__globals__ }}\n")
    templates = EmailTemplates(root)
    with pytest.raises(UnsafeTemplateError, match=r"__init__|__globals__"):
        templates.check("bad")
    templates.check("demo/hello")


def test_every_context_variable_is_documented() -> None:
    settings = get_settings()
    context = template_context(
        settings, Recipient("a@example.com", None, "p1"), sequence_name="S", step_number=1, step_count=2
    )
    assert set(context) | {"confirm_url"} == set(CONTEXT_VARIABLES)


def test_a_subject_stored_before_the_fix_runs_nothing_when_sent(world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from nurture.core import clock
    from tests.support.helpers import dispatch_inline, make_sender, statuses, subscribe

    marker = tmp_path / "ran"
    with transaction(world) as session:
        session.execute(update(Step).values(subject=attack(ATTACKS[0], marker)))
    subscribe(world, "prospect@example.com", "course")
    clock.set_now(clock.now() + timedelta(days=30))
    dispatch_inline(world, make_sender(world))
    assert not marker.exists()
    assert set(statuses(world)) == {"failed"}
