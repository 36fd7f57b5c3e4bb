"""POST /subscribe and the pages around it: validation at the edge, no enumeration, honeypot, no partial
writes, the confirmation email queued (never sent) by the request."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from nurture.core.db import transaction
from nurture.mail.transports import MEMORY_OUTBOX
from nurture.models import ConsentRecord, OutboxMessage, Subscriber, Suppression
from nurture.subscribers import consent
from tests.support.public import CLIENT_IP
from tests.support.web import confirm_url, drain, path_of, row_counts, snapshot

GOOD = {"email": "ana@example.com", "first_name": "Ana", "timezone": "Europe/Berlin", "consent": "yes"}
FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}


def post_form(client: TestClient, fields: dict[str, str], **kwargs):  # type: ignore[no-untyped-def]
    return client.post("/subscribe", data=fields, follow_redirects=False, **kwargs)


def post_json(client: TestClient, fields: dict[str, object], **kwargs):  # type: ignore[no-untyped-def]
    return client.post("/subscribe", json=fields, follow_redirects=False, **kwargs)


# --- the happy path -------------------------------------------------------------------------------------


def test_hosted_form_has_every_field_and_works_without_javascript(client: TestClient, app_factory) -> None:  # type: ignore[no-untyped-def]
    before = snapshot(app_factory)
    page = client.get("/subscribe")
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    html = page.text
    for needle in (
        'name="email"',
        'name="first_name"',
        'name="timezone"',
        'type="checkbox"',
        'name="website"',
        f'name="consent_version" value="{consent.CURRENT}"',
        'method="post" action="/subscribe"',
        "resolvedOptions().timeZone",
        "Two steps",  # the default course's name
    ):
        assert needle in html, needle
    assert "checked" not in html.split('id="consent"')[1].split(">")[0]  # the consent box starts unticked
    assert consent.text_of(consent.CURRENT, "Example Counseling Centre") in html
    assert snapshot(app_factory) == before


def test_form_signup_redirects_to_check_inbox_and_queues_without_sending(
    client: TestClient, app_factory
) -> None:  # type: ignore[no-untyped-def]
    MEMORY_OUTBOX.outbox.clear()
    answer = post_form(
        client, GOOD, headers={"User-Agent": "Browser/1.0", "Referer": "https://clinic.test/course"}
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/subscribe/check-your-inbox"
    assert "check your inbox" in client.get(answer.headers["location"]).text.lower()
    assert MEMORY_OUTBOX.outbox == []  # queued for the worker, never sent inside the request
    with transaction(app_factory) as session:
        subscriber = session.scalar(select(Subscriber))
        record = session.scalar(select(ConsentRecord))
        message = session.scalar(select(OutboxMessage))
        # The signup's choices wait on the consent record until the address owner confirms.
        assert (subscriber.email, subscriber.status, subscriber.first_name) == (
            "ana@example.com",
            "pending",
            None,
        )
        assert (record.ip, record.user_agent, record.form_url) == (
            CLIENT_IP,
            "Browser/1.0",
            "https://clinic.test/course",
        )
        assert record.source == "hosted-form" and record.consent_version == consent.CURRENT
        assert record.consent_text == consent.text_of(consent.CURRENT, "Example Counseling Centre")
        assert (record.first_name, record.timezone, record.sequence_slug) == (
            "Ana",
            "Europe/Berlin",
            "two-step",
        )
        assert record.confirmed_at is None and record.created_at is not None
        assert (message.kind, message.status, message.consent_id) == ("confirm", "pending", record.id)


def test_json_signup_answers_202(client: TestClient, app_factory) -> None:  # type: ignore[no-untyped-def]
    answer = post_json(client, {**GOOD, "consent": True, "sequence": "other"})
    assert answer.status_code == 202 and answer.json()["status"] == "accepted"
    with transaction(app_factory) as session:
        record = session.scalar(select(ConsentRecord))
        assert (record.source, record.sequence_slug) == ("api", "other")


def test_email_is_normalised_and_one_subscriber_per_address(client: TestClient, app_factory) -> None:  # type: ignore[no-untyped-def]
    post_form(client, {**GOOD, "email": "  Ana@Example.COM "})
    post_form(client, GOOD)
    counts = row_counts(app_factory)
    # One subscriber; and the second signup, a moment later, repeats the first: nothing new is queued.
    assert (counts["subscribers"], counts["consent_records"], counts["outbox_messages"]) == (1, 1, 1)


# --- no enumeration ---------------------------------------------------------------------------------------


def _make_states(client: TestClient, app_factory) -> None:  # type: ignore[no-untyped-def]
    """pending@ signed up; active@ confirmed; left@ confirmed then unsubscribed; bounced@ is suppressed."""
    for email in ("pending", "active", "left"):
        post_json(client, {"email": f"{email}@example.com", "consent": True})
    _, sent = drain(app_factory)
    for message in sent:
        if message["To"].startswith(("active", "left")):
            assert client.post(path_of(confirm_url(message))).status_code == 200
    from nurture.core import tokens

    with transaction(app_factory) as session:
        left = session.scalar(select(Subscriber).where(Subscriber.email == "left@example.com"))
        unsubscribe_path = f"/unsubscribe/{tokens.make_token(tokens.Purpose.unsubscribe, left.public_id)}"
        session.add(Suppression(email="bounced@example.com", reason="hard-bounce"))
    assert client.post(unsubscribe_path).status_code == 200
    with transaction(app_factory) as session:
        states = {
            email: status for email, status in session.execute(select(Subscriber.email, Subscriber.status))
        }
    assert states == {
        "pending@example.com": "pending",
        "active@example.com": "active",
        "left@example.com": "unsubscribed",
    }


@pytest.mark.parametrize("kind", ["form", "json"])
def test_same_answer_for_new_pending_active_unsubscribed_and_suppressed(
    client: TestClient, app_factory, kind: str
) -> None:  # type: ignore[no-untyped-def]
    _make_states(client, app_factory)
    answers = []
    for email in ("new", "pending", "active", "left", "bounced"):
        fields = {**GOOD, "email": f"{email}@example.com"}
        answer = post_form(client, fields) if kind == "form" else post_json(client, fields)
        answers.append((answer.status_code, answer.headers.get("location"), answer.content))
    assert len(set(answers)) == 1, answers
    assert answers[0][0] == (303 if kind == "form" else 202)


def test_honeypot_gets_the_same_answer_and_nothing_is_stored(client: TestClient, app_factory) -> None:  # type: ignore[no-untyped-def]
    real_form = post_form(client, {**GOOD, "email": "real@example.com"})
    real_json = post_json(client, {**GOOD, "email": "real2@example.com"})
    before = snapshot(app_factory)
    bot_form = post_form(client, {**GOOD, "website": "https://spam.example.com"})
    bot_json = post_json(client, {**GOOD, "website": "spam"})
    assert (bot_form.status_code, bot_form.headers["location"], bot_form.content) == (
        real_form.status_code,
        real_form.headers["location"],
        real_form.content,
    )
    assert (bot_json.status_code, bot_json.content) == (real_json.status_code, real_json.content)
    assert snapshot(app_factory) == before
    _, sent = drain(app_factory)
    assert sorted(m["To"] for m in sent) == ["real2@example.com", "real@example.com"]


# --- validation at the edge -----------------------------------------------------------------------------

INVALID = [
    ("email", {"email": "a@b.com\r\nBcc: x@y.com"}),
    ("email", {"email": "a@b.com\nBcc: x@y.com"}),
    ("email", {"email": "a@b.com\x00"}),
    ("email", {"email": "not-an-address"}),
    ("email", {"email": ""}),
    ("email", {"email": "ü@example.com"}),
    ("email", {"email": "x" * 10_000 + "@example.com"}),
    ("first_name", {"first_name": "Ana\r\nBcc: x@y.com"}),
    ("first_name", {"first_name": "Ana\u2028Bcc: x@y.com"}),
    ("first_name", {"first_name": "Ana\x85Bcc"}),
    ("first_name", {"first_name": "=?utf-8?q?Ana=0D=0ABcc:_x@y.com?="}),
    ("first_name", {"first_name": "evil\u202etxt.exe"}),
    ("first_name", {"first_name": "A" * 10_000}),
    ("timezone", {"timezone": "Mars/Olympus_Mons"}),
    ("timezone", {"timezone": "../../../etc/passwd"}),
    ("timezone", {"timezone": "localtime"}),
    ("timezone", {"timezone": "Europe/Berlin\r\n"}),
    ("timezone", {"timezone": "T" * 10_000}),
    ("consent", {"consent": ""}),
    ("consent", {"consent": "no"}),
    ("sequence", {"sequence": "no-such-course"}),
    ("sequence", {"sequence": "Bad Slug!"}),
    ("consent_version", {"consent_version": "1999-v0"}),
    ("source", {"source": "s" * 10_000}),
]


def test_invalid_form_input_is_refused_next_to_the_field_and_nothing_is_written(
    client: TestClient, app_factory
) -> None:  # type: ignore[no-untyped-def]
    before = snapshot(app_factory)
    for field, change in INVALID:
        answer = post_form(client, {**GOOD, **change})
        assert answer.status_code == 422, change
        assert f'<a href="#{field}">' in answer.text, change  # the summary links to the field
        if field in {"email", "first_name", "timezone", "consent"}:
            assert f'id="{field}-error"' in answer.text and 'aria-invalid="true"' in answer.text, change
    assert snapshot(app_factory) == before


def test_invalid_json_input_answers_422_with_field_errors_and_nothing_is_written(
    client: TestClient, app_factory
) -> None:  # type: ignore[no-untyped-def]
    before = snapshot(app_factory)
    for field, change in INVALID:
        answer = post_json(client, {**GOOD, **change})
        assert answer.status_code == 422 and field in answer.json()["errors"], change
    wrong_types: list[dict[str, object]] = [
        {"email": ["a@example.com"]},
        {"email": 42},
        {"first_name": {"x": 1}},
        {"timezone": True},
        {"consent": False},
        {"consent": None},
        {"sequence": 7},
    ]
    for change in wrong_types:
        answer = post_json(client, {**GOOD, **change})
        assert answer.status_code == 422 and set(answer.json()["errors"]) == set(change), change
    assert snapshot(app_factory) == before


def test_lone_surrogates_in_json_are_refused(client: TestClient, app_factory) -> None:  # type: ignore[no-untyped-def]
    before = snapshot(app_factory)
    body = '{"email": "a@example.com", "first_name": "\\ud800", "consent": true}'
    answer = client.post("/subscribe", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422 and "first_name" in answer.json()["errors"]
    assert snapshot(app_factory) == before


def test_errors_re_render_the_form_with_the_values_escaped(client: TestClient) -> None:
    answer = post_form(client, {**GOOD, "email": "nope", "first_name": '<script>alert("x")</script>'})
    assert answer.status_code == 422
    assert "<script>alert" not in answer.text and "&lt;script&gt;alert" in answer.text
    assert 'value="nope"' in answer.text


UNREADABLE = [
    (b"email=\xff\xfe%40example.com&consent=yes", "application/x-www-form-urlencoded", 400),
    (b"email=a%FF%40example.com&consent=yes", "application/x-www-form-urlencoded", 400),
    (b"email=a%40example.com&first_name=%C3%28&consent=yes", "application/x-www-form-urlencoded", 400),
    ('{"email": "caf\xe9@example.com", "consent": true}'.encode("latin-1"), "application/json", 400),
    (b"email=a%40example.com&consent=yes", "application/x-www-form-urlencoded; charset=latin-1", 415),
    (b"email=a%40example.com&consent=yes", "text/plain", 415),
    (
        b"--x\r\nContent-Disposition: form-data; name=email\r\n\r\na@example.com\r\n--x--",
        "multipart/form-data; boundary=x",
        415,
    ),
    (b"{not json", "application/json", 400),
    (b'["a@example.com"]', "application/json", 400),
    (
        b"email=a%40example.com&consent=yes&first_name=" + b"A" * 40_000,
        "application/x-www-form-urlencoded",
        413,
    ),
    (b"&".join(b"f%d=x" % n for n in range(200)), "application/x-www-form-urlencoded", 400),
]


def test_bodies_that_cannot_be_read_are_4xx_and_write_nothing(client: TestClient, app_factory) -> None:  # type: ignore[no-untyped-def]
    before = snapshot(app_factory)
    for body, content_type, status in UNREADABLE:
        answer = client.post("/subscribe", content=body, headers={"Content-Type": content_type})
        assert answer.status_code == status, (body[:60], content_type)
    assert snapshot(app_factory) == before


def test_json_error_bodies_are_json(client: TestClient) -> None:
    answer = client.post("/subscribe", content=b"\xff", headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and "error" in json.loads(answer.content)


# --- courses and the embed snippet ----------------------------------------------------------------------


def test_a_course_link_names_the_course_and_an_unknown_one_is_a_friendly_404(client: TestClient) -> None:
    page = client.get("/subscribe", params={"sequence": "other"})
    assert page.status_code == 200 and "Another course" in page.text
    assert 'name="sequence" value="other"' in page.text
    for bad in ("nope", "Bad Slug", "x" * 500, "a\x00b"):
        missing = client.get("/subscribe", params={"sequence": bad})
        assert missing.status_code == 404 and "could not find that course" in missing.text


def test_embed_page_shows_a_pasteable_form_posting_here(client: TestClient, app_factory) -> None:  # type: ignore[no-untyped-def]
    before = snapshot(app_factory)
    page = client.get("/subscribe/embed", params={"sequence": "other"})
    assert page.status_code == 200
    # The snippet is shown as text, escaped, with everything the endpoint needs.
    for needle in (
        "&lt;form method=&#34;post&#34; action=&#34;https://nurture.test/subscribe&#34;",
        "name=&#34;website&#34;",
        f"name=&#34;consent_version&#34; value=&#34;{consent.CURRENT}&#34;",
        "name=&#34;sequence&#34; value=&#34;other&#34;",
        "resolvedOptions().timeZone",
    ):
        assert needle in page.text, needle
    assert '<form method="post" action="https://nurture.test/subscribe"' not in page.text
    assert snapshot(app_factory) == before


def test_the_embed_snippet_posts_a_valid_signup(client: TestClient, app_factory) -> None:  # type: ignore[no-untyped-def]
    answer = post_form(
        client,
        {
            "email": "embed@example.com",
            "first_name": "",
            "timezone": "",
            "consent": "yes",
            "consent_version": consent.CURRENT,
            "source": "embed",
            "website": "",
        },
        headers={"Referer": "https://partner.example.org/page"},
    )
    assert answer.status_code == 303
    with transaction(app_factory) as session:
        record = session.scalar(select(ConsentRecord))
        assert (record.source, record.form_url) == ("embed", "https://partner.example.org/page")


def test_openapi_describes_the_signup_body(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/subscribe"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "application/x-www-form-urlencoded"}
    assert {"email", "consent"} <= set(body["application/json"]["schema"]["required"])
