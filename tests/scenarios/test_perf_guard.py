"""Regression guard for the per-email CPU cost of preparing a sequence email (issue 7).

The real path a worker runs for every delivery (render the step from cached, CSS-inlined templates, build
the List-Unsubscribe links, compose the MIME bytes) is timed against a fixed raw baseline in the same
process and run: the same number of messages of the same size turned into SMTP-ready bytes with plain
string work (``smtplib``'s line-end fix, UTF-8 encoding, dot-stuffing). Only the ratio is asserted, so a
slow or busy machine slows both sides alike; no absolute time appears anywhere.

Both sides use process CPU time (``time.process_time``: other processes on the machine do not count) and
the best of several rounds (a round that was preempted or hit a cache miss only ever looks slower).

REFERENCE_RATIO was measured on the 2-core AMD EPYC development machine on 2026-11-27 (load average 2-6,
five engineers working): ``.venv/bin/pytest -q -s tests/scenarios/test_perf_guard.py`` prints the ratio;
eleven runs gave 3.5-5.1, median 3.9 (``step_message`` 0.46-0.81 ms of CPU per email, the baseline 0.12-0.21
ms). The test fails when the ratio exceeds twice the reference: per-email CPU cost has doubled relative to the
fixed work. If a deliberate change makes emails costlier, re-measure and update the reference with the
date and numbers.
"""

from __future__ import annotations

import smtplib
import time
from collections.abc import Callable
from datetime import UTC, datetime

from nurture.core.config import get_settings
from nurture.mail.context import Recipient, step_message
from nurture.mail.templates import EmailTemplates

REFERENCE_RATIO = 4.0
EMAILS = 200
ROUNDS = 9


def best_cpu_seconds(*works: Callable[[], object], rounds: int = ROUNDS) -> list[float]:
    """Best CPU time of each piece of work; the pieces alternate within every round, so a busy spell of the
    machine (cache and frequency effects that process time does not filter out) hits both sides alike."""
    best = [float("inf")] * len(works)
    for _ in range(rounds):
        for index, work in enumerate(works):
            started = time.process_time()
            work()
            best[index] = min(best[index], time.process_time() - started)
    return best


def test_per_email_cpu_cost_has_not_doubled_against_the_raw_baseline() -> None:
    settings = get_settings()
    templates = EmailTemplates(settings.templates_dir)  # one per worker process, as in nurture.tasks
    recipients = [Recipient(f"reader{i}@example.com", "Reader", f"pub{i}") for i in range(EMAILS)]
    date = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)

    def prepare_and_compose() -> list[bytes]:
        return [
            step_message(
                settings, templates, recipient, template="ketamine-therapy/welcome",
                sequence_name="Understanding ketamine therapy", step_number=1, step_count=8,
                delivery_id=i + 1, date=date,
            )[1]
            for i, recipient in enumerate(recipients)
        ]  # fmt: skip

    sample = prepare_and_compose()[0]  # also warms the template cache, as the first email of a batch does
    assert b"List-Unsubscribe:" in sample and len(sample) > 4000
    text = sample.decode("utf-8").replace("\r\n", "\n")

    def raw_baseline() -> list[bytes]:
        # What any sender must do with a finished message of this size: fix line ends, encode, dot-stuff.
        out = []
        for i in range(EMAILS):
            data = smtplib._fix_eols(f"X-Seq: {i}\n" + text).encode("utf-8")
            out.append(data.replace(b"\r\n.", b"\r\n.."))
        return out

    real, raw = best_cpu_seconds(prepare_and_compose, raw_baseline)
    ratio = real / raw
    print(
        f"\nper email: prepare+compose {real / EMAILS * 1e3:.3f} ms CPU, raw baseline "
        f"{raw / EMAILS * 1e3:.3f} ms; ratio {ratio:.1f} (reference {REFERENCE_RATIO}, limit "
        f"{2 * REFERENCE_RATIO})"
    )
    assert ratio <= 2 * REFERENCE_RATIO, (
        f"preparing an email now costs {ratio:.1f}x the raw baseline, more than twice the recorded "
        f"{REFERENCE_RATIO}x: per-email CPU cost has doubled (see the module docstring to re-measure)"
    )
