"""Every ketamine-therapy email, as the sender builds it, scored by SpamAssassin's local rules.

Health topics trip spam filters easily (drug names, "relief", urgency); the course must stay far below the
5.0 that marks mail as spam. ``-L`` keeps it offline (no DNS or network tests), so the score is the content's.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, datetime

import pytest

from nurture.core.config import get_settings
from nurture.mail.context import Recipient, step_message
from nurture.mail.templates import EmailTemplates
from tests.conftest import service_missing
from tests.content.test_ketamine_content import STEPS

CEILING = 2.0  # well under SpamAssassin's 5.0: a rule or two more must still not make it spam
REPORT = re.compile(r"Content analysis details:\s+\((-?[\d.]+) points, ([\d.]+) required\)")


def spamassassin() -> str:
    path = shutil.which("spamassassin")
    if path is None:
        service_missing("spamassassin", FileNotFoundError("install Debian's spamassassin (make services)"))
    assert path is not None
    return path


def course_mbox() -> bytes:
    settings = get_settings()
    templates = EmailTemplates(settings.templates_dir)
    messages = []
    for number, step in enumerate(STEPS, start=1):
        _rendered, data, _ = step_message(
            settings,
            templates,
            Recipient("ana@example.com", "Ana", "pub-ana"),
            template=f"ketamine-therapy/{step}",
            sequence_name="Understanding ketamine therapy",
            step_number=number,
            step_count=len(STEPS),
            delivery_id=number,
            date=datetime(2026, 12, 7, 14, 0, tzinfo=UTC),
            reviewed_by="Dr Jane Doe, MD",
            reviewed_on="December 1, 2026",
        )
        # mbox: a "From " separator line before each message, and none of its own lines starting so.
        body = data.replace(b"\r\n", b"\n").replace(b"\nFrom ", b"\n>From ")
        messages.append(b"From nurture@example.com Mon Dec  7 14:00:00 2026\n" + body + b"\n")
    return b"".join(messages)


def test_every_email_scores_far_below_the_spam_threshold() -> None:
    result = subprocess.run(
        [spamassassin(), "-L", "-t", "--mbox"],
        input=course_mbox(),
        capture_output=True,
        timeout=180,
        check=True,
    )
    output = result.stdout.decode("utf-8", "replace")
    scores = [(float(points), float(required)) for points, required in REPORT.findall(output)]
    assert len(scores) == len(STEPS), output[-2000:]
    for step, (points, required) in zip(STEPS, scores, strict=True):
        assert required == pytest.approx(5.0)
        assert points < CEILING, f"{step} scores {points}:\n{output}"
