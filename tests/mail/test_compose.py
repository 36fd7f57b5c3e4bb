"""The byte-level message builder: what it writes must parse back, with every header and part intact."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy

import pytest

from nurture.mail.compose import Envelope, HeaderInjection, compose, message_id_for
from nurture.mail.templates import RenderedEmail

TEXT = "Hello Zoë,\n\nLine one = two.\n.A line that starts with a dot\n" + "long " * 60 + "\nEnd.\n"
HTML = (
    '<!doctype html><html lang="en"><body><p style="color: #1f2933">Grüße &amp; more</p>'
    + "x" * 300
    + "</body></html>"
)


def envelope(**overrides: object) -> Envelope:
    values: dict[str, object] = {
        "from_address": "Clinic Team <hello@clinic.test>",
        "to_address": "zoe@example.com",
        "to_name": "Zoë Ünïcode",
        "message_id": message_id_for(42, "secret", "clinic.test"),
        "date": datetime(2026, 12, 7, 15, 0, tzinfo=UTC),
        "unsubscribe_url": "https://nurture.test/unsubscribe/abc",
        "unsubscribe_mailto": "unsubscribe@clinic.test",
        "reply_to": "care@clinic.test",
    }
    values.update(overrides)
    return Envelope(**values)  # type: ignore[arg-type]


def test_the_message_parses_back_with_headers_and_both_parts() -> None:
    raw = compose(RenderedEmail("Bienvenue — what to expect", TEXT, HTML), envelope())
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only: strict servers refuse bare LF
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    message = message_from_bytes(raw, policy=policy.default)
    assert message["Subject"] == "Bienvenue — what to expect"
    assert message["To"].addresses[0].display_name == "Zoë Ünïcode"
    assert message["From"].addresses[0].addr_spec == "hello@clinic.test"
    assert message["Message-ID"] == message_id_for(42, "secret", "clinic.test")
    assert (
        message["List-Unsubscribe"]
        == "<https://nurture.test/unsubscribe/abc>, <mailto:unsubscribe@clinic.test?subject=unsubscribe>"
    )
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["Reply-To"] == "care@clinic.test"
    assert message.get_content_type() == "multipart/alternative" and not message.defects
    text, html = message.iter_parts()
    assert text.get_content_type() == "text/plain" and text.get_content().replace("\r\n", "\n") == TEXT
    assert html.get_content_type() == "text/html" and html.get_content().replace("\r\n", "\n") == HTML


def test_message_ids_are_stable_per_delivery_and_distinct_between_deliveries() -> None:
    assert message_id_for(7, "s", "d.test") == message_id_for(7, "s", "d.test")
    assert message_id_for(7, "s", "d.test") != message_id_for(8, "s", "d.test")
    assert message_id_for(7, "s", "d.test") != message_id_for(7, "other-secret", "d.test")


def test_line_breaks_in_names_and_subjects_cannot_start_a_header() -> None:
    raw = compose(
        RenderedEmail("Hi\r\nBcc: victim@example.net", TEXT, HTML),
        envelope(to_name="Eve\r\nBcc: victim@example.net"),
    )
    message = message_from_bytes(raw, policy=policy.default)
    assert message["Bcc"] is None
    assert "victim@example.net" in message["Subject"]  # kept as harmless text on the same line


@pytest.mark.parametrize("address", ["a@b.com\r\nBcc: x@y.com", "a@b.com\nX: y", "no-at-sign", ""])
def test_an_address_with_control_characters_is_refused(address: str) -> None:
    with pytest.raises(HeaderInjection):
        compose(RenderedEmail("s", TEXT, HTML), envelope(to_address=address))


def test_no_list_headers_without_an_unsubscribe_url() -> None:
    message = message_from_bytes(compose(RenderedEmail("s", "t", "<p>h</p>"), envelope(unsubscribe_url=None)))
    assert message["List-Unsubscribe"] is None and message["List-Unsubscribe-Post"] is None


def test_quoted_printable_line_by_line_decodes_like_the_whole_body_and_keeps_lines_short() -> None:
    """compose encodes a body a line at a time (each distinct line once per process): the result must
    decode to exactly what encoding the whole body at once gives, never carry a line over 76 characters
    (RFC 2045; b2a_qp over a whole body writes 78 before a line end that follows a space), and never a
    bare CR."""
    import binascii
    import random

    from nurture.mail.compose import _quoted_printable

    pieces = [
        "a",
        " ",
        "\t",
        "\n",
        "\r\n",
        "=",
        "é",
        "€",
        "😀",
        ".",
        "x" * 90,
        "  \n",
        "From ",
        "y" * 75,
        " " * 80,
    ]
    rng = random.Random(7)
    for _ in range(5000):
        body = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        encoded = _quoted_printable(body)
        whole = binascii.b2a_qp(body.replace("\r\n", "\n").encode(), quotetabs=False, istext=True)
        assert binascii.a2b_qp(encoded) == binascii.a2b_qp(whole.replace(b"\n", b"\r\n"))
        assert all(len(line) <= 76 for line in encoded.split(b"\r\n"))
        assert b"\r" not in encoded.replace(b"\r\n", b"")
    assert _quoted_printable("one\rtwo") == b"one\r\ntwo"  # a bare CR ends its line
