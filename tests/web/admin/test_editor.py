"""Versions in the staff UI and the JSON API: edit → draft → plan → publish, roles, CSRF, bad input."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from nurture.core import clock
from nurture.core.db import transaction
from nurture.models import AuditLog, Enrollment, Sequence, SequenceVersion
from nurture.sequences import versions
from nurture.subscribers.enrollment import add_subscriber
from tests.sequences.test_versions import START, cli
from tests.support.staff import csrf_of

EDIT = "/admin/sequences/course/edit"


def edit_form(token: str, **changes: str) -> dict[str, Any]:
    """The edit form as the page fills it for the course, with ``changes`` applied."""
    form = {
        "csrf": token,
        "name": "The course",
        "timezone": "America/New_York",
        "window_days": "mon,tue,wed,thu,fri",
        "window_start": "09:00",
        "window_end": "17:00",
        "step_count": "4",
    }
    steps = [("hello", "0", "demo/hello"), ("middle", "1d", "demo/middle"), ("later", "2d", "demo/middle"),
             ("goodbye", "1d", "demo/goodbye")]  # fmt: skip
    for i, (key, delay, template) in enumerate(steps):
        form |= {f"steps-{i}-key": key, f"steps-{i}-order": str(i + 1), f"steps-{i}-delay": delay,
                 f"steps-{i}-template": template, f"steps-{i}-subject": ""}  # fmt: skip
    return form | changes


def version_count(world) -> int:  # type: ignore[no-untyped-def]
    with transaction(world) as session:
        return session.scalar(select(func.count()).select_from(SequenceVersion)) or 0


def test_edit_saves_a_draft_shows_the_plan_and_publish_moves(signed_in, world) -> None:  # type: ignore[no-untyped-def]
    with clock.frozen(START):
        with transaction(world) as session:
            for i in range(3):
                add_subscriber(session, f"s{i}@example.com", sequence_slug="course")
        client = signed_in("editor")
        page = client.get(EDIT)
        assert page.status_code == 200 and 'name="steps-3-key" value="goodbye"' in page.text
        assert "demo/goodbye" in page.text  # the template list offers what exists
        token = csrf_of(client, EDIT)
        saved = client.post(
            EDIT,
            data=edit_form(
                token,
                **{
                    "steps-2-remove": "on",
                    "steps-1-delay": "2d",
                    "steps-1-subject": "Halfway, {{ first_name }}",
                    "new-0-key": "extra",
                    "new-0-order": "3",
                    "new-0-delay": "1d",
                    "new-0-template": "demo/hello",
                },
            ),
        )
        assert saved.status_code == 303, saved.text
        assert saved.headers["location"].startswith("/admin/sequences/course/plan")
        with transaction(world) as session:
            sequence = session.scalar(select(Sequence))
            draft = versions.pending_draft(session, sequence)
            assert sequence.current_version.number == 1, "saving is not publishing"
            assert [s.key for s in draft.steps] == ["hello", "middle", "extra", "goodbye"]
            assert (draft.origin, draft.author) == ("ui", "editor@staff.example.com")
            assert draft.steps[1].subject == "Halfway, {{ first_name }}"
        plan = client.get(saved.headers["location"])
        assert plan.status_code == 200
        assert (
            "Removed step <strong>later</strong>" in plan.text
            and "Added step <strong>extra</strong>" in plan.text
        )
        assert '<th scope="row">hello</th><td>3</td>' in plan.text  # all three wait for their first email
        assert 'id="count-move">3<' in plan.text
        token = csrf_of(client, "/admin/sequences/course/plan")
        missing = client.post("/admin/sequences/course/publish", data={"csrf": token})
        assert missing.status_code == 400 and "stay or move" in missing.text
        done = client.post("/admin/sequences/course/publish", data={"csrf": token, "migrate": "move"})
        assert done.status_code == 303
        assert "3 moved" in client.get(done.headers["location"]).text
        with transaction(world) as session:
            assert session.scalar(select(Sequence)).current_version.number == 2
            assert {e.version.number for e in session.scalars(select(Enrollment))} == {2}
            actions = session.scalars(select(AuditLog.action).order_by(AuditLog.id)).all()
        assert actions == ["sequence.draft", "sequence.publish"]


def test_viewer_cannot_edit_or_publish_in_the_ui(signed_in, world) -> None:  # type: ignore[no-untyped-def]
    viewer = signed_in("viewer")
    assert viewer.get(EDIT).status_code == 403
    assert viewer.get("/admin/sequences/course/plan").status_code == 200  # reading the plan is fine
    assert 'id="edit-link"' not in viewer.get("/admin/sequences/course").text
    token = csrf_of(viewer, "/admin/sequences/course")
    refused = viewer.post(EDIT, data=edit_form(token, **{"steps-1-delay": "3d"}))
    assert refused.status_code == 403 and "editor role" in refused.text
    for action in ("publish", "archive", "discard"):
        response = viewer.post(f"/admin/sequences/course/{action}", data={"csrf": token, "migrate": "stay"})
        assert response.status_code == 403, action
    assert version_count(world) == 1


def test_new_forms_need_the_csrf_token_and_same_site(signed_in, world) -> None:  # type: ignore[no-untyped-def]
    editor = signed_in("editor")
    token = csrf_of(editor, EDIT)
    assert editor.post(EDIT, data=edit_form("wrong", **{"steps-1-delay": "3d"})).status_code == 403
    cross = editor.post(
        EDIT, data=edit_form(token, **{"steps-1-delay": "3d"}), headers={"Origin": "https://evil.example"}
    )
    assert cross.status_code == 403
    for action in ("publish", "archive", "discard"):
        assert editor.post(f"/admin/sequences/course/{action}", data={"migrate": "stay"}).status_code == 403
    assert version_count(world) == 1
    with transaction(world) as session:
        assert session.scalar(select(Sequence.status)) == "active"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"steps-1-delay": "-1d"}, "delays cannot be negative"),
        ({"new-0-key": "more", "new-0-delay": "1d", "new-0-template": "demo/nope"}, "unknown template"),
        ({"steps-1-key": "hello"}, "duplicate key &#39;hello&#39;"),
        ({"window_start": "17:00", "window_end": "09:00"}, "end must be after start"),
        ({"steps-1-order": "soon"}, "order must be a whole number"),
        ({"steps-1-subject": "{{ unclosed"}, "subject does not compile"),
    ],
)
def test_bad_input_is_a_clear_error_and_nothing_is_written(signed_in, world, changes, message) -> None:  # type: ignore[no-untyped-def]
    editor = signed_in("editor")
    token = csrf_of(editor, EDIT)
    response = editor.post(EDIT, data=edit_form(token, **changes))
    assert response.status_code == 400
    assert message in response.text, response.text
    assert 'id="form-error"' in response.text
    assert version_count(world) == 1
    with transaction(world) as session:
        assert session.scalar(select(func.count()).select_from(AuditLog)) == 0


def test_unchanged_edit_is_refused(signed_in, world) -> None:  # type: ignore[no-untyped-def]
    editor = signed_in("editor")
    response = editor.post(EDIT, data=edit_form(csrf_of(editor, EDIT)))
    assert response.status_code == 400 and "nothing changed" in response.text
    assert version_count(world) == 1


def _draft(world) -> None:  # type: ignore[no-untyped-def]
    from pathlib import Path

    from nurture.core.config import get_settings
    from nurture.mail.templates import EmailTemplates
    from nurture.sequences.loader import definition_from

    with transaction(world) as session:
        sequence = session.scalar(select(Sequence))
        raw = versions.as_file_data(sequence.current_version)
        raw["steps"] = [s for s in raw["steps"] if s["key"] != "later"]
        definition = definition_from(raw, Path("course.yaml"), EmailTemplates(get_settings().templates_dir))
        versions.save_draft(session, sequence, definition, origin="ui", author="someone@staff.example.com")


def test_api_plan_publish_archive(api, world) -> None:  # type: ignore[no-untyped-def]
    with clock.frozen(START):
        with transaction(world) as session:
            add_subscriber(session, "a@example.com", sequence_slug="course")
        none = api("viewer", "GET", "/api/v1/sequences/course/plan")
        assert none.status_code == 404 and none.json()["error"]["code"] == "no_draft"
        _draft(world)
        assert api(None, "GET", "/api/v1/sequences/course/plan").status_code == 401
        plan = api("viewer", "GET", "/api/v1/sequences/course/plan")
        assert plan.status_code == 200, plan.text
        body = plan.json()
        assert body["changes"]["removed"] == ["later"] and body["outcomes"]["move"] == 1
        assert {row["key"]: row["waiting"] for row in body["by_key"]}["hello"] == 1
        forbidden = api("viewer", "POST", "/api/v1/sequences/course/publish", json={"migrate": "move"})
        assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "forbidden"
        bad = api("editor", "POST", "/api/v1/sequences/course/publish", json={"migrate": "sideways"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid"
        assert api("editor", "POST", "/api/v1/sequences/nope/publish", json={}).status_code == 404
        done = api("editor", "POST", "/api/v1/sequences/course/publish", json={"migrate": "stay"})
        assert done.status_code == 200, done.text
        assert done.json()["version"] == 2 and done.json()["outcomes"]["stay"] == 1
        again = api("editor", "POST", "/api/v1/sequences/course/publish", json={"migrate": "stay"})
        assert again.status_code == 404 and again.json()["error"]["code"] == "no_draft"
        bad_stop = api("editor", "POST", "/api/v1/sequences/course/archive", json={"stop": "yes"})
        assert bad_stop.status_code == 400
        assert api("viewer", "POST", "/api/v1/sequences/course/archive", json={}).status_code == 403
        archived = api("editor", "POST", "/api/v1/sequences/course/archive", json={"stop": False})
        assert archived.status_code == 200 and archived.json()["status"] == "archived"
        conflict = api("editor", "POST", "/api/v1/sequences/course/archive", json={})
        assert conflict.status_code == 409
        # Archived: nobody new joins through the public form either.
        refused = api(None, "POST", "/subscribe", json={"email": "b@example.com", "consent": True,
                                                        "sequence": "course"})  # fmt: skip
        assert refused.status_code == 422 and "sequence" in refused.json()["errors"]
        paths = api(None, "GET", "/openapi.json").json()["paths"]
        for path in ("/api/v1/sequences/{slug}/plan", "/api/v1/sequences/{slug}/publish",
                     "/api/v1/sequences/{slug}/archive"):  # fmt: skip
            assert path in paths


def test_draft_sequence_is_not_offered_to_signups(api, world, sequences_dir) -> None:  # type: ignore[no-untyped-def]
    (sequences_dir / "fresh.yaml").write_text(
        "slug: fresh\nname: Fresh\nstatus: draft\nsteps:\n  - {key: hello, delay: 0, template: demo/hello}\n"
    )
    assert cli("sequences", "sync")[0] == 0
    refused = api(None, "POST", "/subscribe", json={"email": "b@example.com", "consent": True,
                                                    "sequence": "fresh"})  # fmt: skip
    assert refused.status_code == 422 and "sequence" in refused.json()["errors"]
    assert api("editor", "POST", "/api/v1/sequences/fresh/pause", json={}).status_code == 409
    assert api("editor", "POST", "/api/v1/sequences/fresh/publish", json={}).status_code == 200
    accepted = api(None, "POST", "/subscribe", json={"email": "b@example.com", "consent": True,
                                                     "sequence": "fresh"})  # fmt: skip
    assert accepted.status_code == 202


def test_counts_per_step_follow_the_key_across_versions(api, world) -> None:  # type: ignore[no-untyped-def]
    """After a publish with "stay", people on the old version are counted at the step with their key."""
    from pathlib import Path

    from nurture.core.config import get_settings
    from nurture.mail.templates import EmailTemplates
    from nurture.sequences.loader import definition_from

    with clock.frozen(START):
        with transaction(world) as session:
            for i in range(2):
                add_subscriber(session, f"s{i}@example.com", sequence_slug="course")
            sequence = session.scalar(select(Sequence))
            raw = versions.as_file_data(sequence.current_version)
            raw["steps"].insert(0, {"key": "intro", "delay": "0", "template": "demo/hello"})
            templates = EmailTemplates(get_settings().templates_dir)
            draft = definition_from(raw, Path("course.yaml"), templates)
            versions.save_draft(session, sequence, draft, origin="ui", author=None)
        assert api("editor", "POST", "/api/v1/sequences/course/publish", json={}).status_code == 200
        standing = api("viewer", "GET", "/api/v1/sequences").json()["sequences"][0]["standing"]
    assert standing == {"intro": 0, "hello": 2, "middle": 0, "later": 0, "goodbye": 0}


def test_api_saves_a_draft_validated_like_a_file_and_audited(api, world) -> None:  # type: ignore[no-untyped-def]
    definition = {
        "name": "The course",
        "timezone": "America/New_York",
        "window": {"days": "mon-fri", "start": "09:00", "end": "17:00"},
        "steps": [
            {"key": "hello", "delay": 0, "template": "demo/hello"},
            {"key": "goodbye", "delay": "3d", "template": "demo/goodbye", "subject": "Last one"},
        ],
    }
    path = "/api/v1/sequences/course/draft"
    assert api(None, "PUT", path, json=definition).status_code == 401
    assert api("viewer", "PUT", path, json=definition).status_code == 403
    broken = {**definition, "steps": [{"key": "hello", "delay": "-1d", "template": "demo/nope"}]}
    refused = api("editor", "PUT", path, json=broken)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid"
    assert "hello" in refused.json()["error"]["message"]
    other = api("editor", "PUT", path, json={**definition, "slug": "another"})
    assert other.status_code == 400
    assert api("editor", "PUT", "/api/v1/sequences/nope/draft", json=definition).status_code == 404
    with transaction(world) as session:
        assert session.scalar(select(func.count()).select_from(SequenceVersion)) == 1  # nothing written
    saved = api("editor", "PUT", path, json=definition)
    assert saved.status_code == 200, saved.text
    assert saved.json()["draft"] == 2
    plan = api("viewer", "GET", "/api/v1/sequences/course/plan").json()
    assert sorted(plan["changes"]["removed"]) == ["later", "middle"]
    with transaction(world) as session:
        sequence = session.scalar(select(Sequence))
        assert sequence.current_version.number == 1  # a draft changes nothing until published
        audit = session.scalars(select(AuditLog).where(AuditLog.action == "sequence.draft")).one()
        assert audit.after["draft"] == 2
