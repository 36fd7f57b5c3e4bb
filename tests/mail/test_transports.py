"""The SMTP transport's dot-stuffing writes exactly what smtplib's own does, for any message."""

from __future__ import annotations

import smtplib

from hypothesis import given, settings
from hypothesis import strategies as st

from nurture.mail.transports import dot_stuffed

# Lines made of dots, line ends and a little text, so that leading dots, dots after bare LFs and CRLFs,
# and runs of dots all come up often.
PIECES = st.sampled_from([b".", b"..", b"\r\n", b"\n", b"\r", b"a", b" .x", b".css {", b"=\r\n."])


@settings(max_examples=2000, deadline=None)
@given(st.lists(PIECES, max_size=40).map(b"".join))
def test_dot_stuffing_is_smtplibs(data: bytes) -> None:
    assert dot_stuffed(data) == smtplib._quote_periods(data)


def test_a_message_without_leading_dots_is_unchanged() -> None:
    data = b"Subject: hi\r\n\r\nno line here starts with a dot.\r\n"
    assert dot_stuffed(data) == data
    assert dot_stuffed(b".\r\n.x\n..y") == b"..\r\n..x\n...y"
