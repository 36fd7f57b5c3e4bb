"""`nurture sequences ...`: validation messages, versioned sync, timeline and preview."""

from __future__ import annotations

from email import message_from_string
from pathlib import Path

import pytest
from click.testing import CliRunner

from nurture.cli import main
from tests.conftest import THREE_STEP


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


GOOD_STEP = "  - {key: hello, delay: 0, template: demo/hello}\n"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "slug: broken\nname: B\nsteps:\n  - {key: hello, delay: 0, template: demo/nope}\n",
            "broken.yaml: step #1 ('hello'): unknown template 'demo/nope': "
            "missing subject.txt, body.txt, body.html",
        ),
        (
            "slug: broken\nname: B\nsteps:\n"
            + GOOD_STEP
            + "  - {key: later, delay: 3x, template: demo/hello}\n",
            "broken.yaml: step #2 ('later'): bad delay:",
        ),
        (
            "slug: broken\nname: B\nsteps:\n" + GOOD_STEP + GOOD_STEP,
            "broken.yaml: step #2 ('hello'): duplicate key 'hello'",
        ),
        (
            "slug: broken\nname: B\ntimezone: Mars/Olympus\nsteps:\n" + GOOD_STEP,
            "broken.yaml: bad time zone: unknown time zone 'Mars/Olympus'",
        ),
        (
            "slug: broken\nname: B\nwindow: {days: mon-fri, start: '11:00', end: '09:00'}\nsteps:\n"
            + GOOD_STEP,
            "broken.yaml: window never opens or is malformed:",
        ),
        (
            "slug: broken\nname: B\nwindow: {days: funday, start: '09:00', end: '11:00'}\nsteps:\n"
            + GOOD_STEP,
            "broken.yaml: window never opens or is malformed:",
        ),
        ("slug: other\nname: B\nsteps:\n" + GOOD_STEP, "broken.yaml: slug 'other' must match the file name"),
        ("slug: broken\nname: B\nsteps: []\n", "broken.yaml: steps must be a non-empty list"),
        ("slug: broken\nname: B\nstepz: []\n", "broken.yaml: unknown field 'stepz'"),
        ("slug: [unclosed\n", "broken.yaml: not valid YAML"),
    ],
)
def test_each_problem_names_file_step_and_cause_and_exits_1(
    sequences_dir: Path, body: str, message: str
) -> None:
    (sequences_dir / "broken.yaml").write_text(body)
    code, output = run("sequences", "validate")
    assert code == 1
    assert message in output


def test_all_problems_of_a_file_are_listed_together(sequences_dir: Path) -> None:
    (sequences_dir / "broken.yaml").write_text(
        "slug: broken\nname: B\ntimezone: Nowhere/City\nsteps:\n"
        "  - {key: a, delay: soon, template: demo/hello}\n  - {key: a, delay: 0, template: x/y}\n"
    )
    code, output = run("sequences", "validate")
    assert code == 1
    assert "bad time zone" in output and "bad delay" in output
    assert "duplicate key 'a'" in output and "unknown template 'x/y'" in output


def test_shipped_sequences_validate() -> None:
    code, output = run("sequences", "validate")
    assert code == 0, output
    assert "ok: demo.yaml" in output and "ok: ketamine-therapy.yaml (ketamine-therapy, 8 steps)" in output


def test_sync_makes_a_new_version_only_when_the_definition_changes(three_step, factory) -> None:  # type: ignore[no-untyped-def]
    assert run("sequences", "sync") == (0, "three-step: created (version 1)\n")
    assert run("sequences", "sync") == (0, "three-step: unchanged (version 1)\n")
    three_step.write_text(
        THREE_STEP.replace("delay: 1s, template: demo/goodbye", "delay: 2s, template: demo/goodbye")
    )
    assert run("sequences", "sync") == (0, "three-step: new version (version 2)\n")
    code, output = run("sequences", "list")
    assert code == 0 and "three-step" in output and "v2" in output and "3 steps" in output


def test_timeline_prints_each_step_in_utc_and_local_time() -> None:
    code, output = run(
        "sequences",
        "timeline",
        "ketamine-therapy",
        "--signup-at",
        "2026-12-04T22:30:00",
        "--tz",
        "America/Chicago",
    )
    assert code == 0, output
    lines = [line for line in output.splitlines() if line[:3].strip().rstrip(".").isdigit()]
    assert len(lines) == 8
    times = [line.split("   [")[0].split() for line in lines]  # without the note on what moved it
    # The welcome skips the send window: it goes at once, on Friday night, and the line says why.
    assert times[0][-5:] == ["UTC", "Fri", "2026-12-04", "22:30", "CST"]
    assert lines[0].endswith("[sent at its due time: this step skips the send window]")
    assert times[1][-5:] == ["UTC", "Mon", "2026-12-07", "09:00", "CST"]
    assert all(time[-4] in {"Mon", "Tue", "Wed", "Thu", "Fri"} for time in times)
    # Email 7 would land on Christmas Day (a Friday): US holidays close the window, so it waits for Monday.
    assert times[6][-5:] == ["UTC", "Mon", "2026-12-28", "09:00", "CST"]
    assert lines[6].endswith("[moved past Christmas Day on Fri 2026-12-25]")
    # The default cap (12 h across sequences) is named under the steps: one timeline cannot show its moves.
    assert output.splitlines()[-1].startswith(
        "Frequency cap: for someone also in another sequence, an email due"
    )


def test_timeline_rejects_an_unknown_zone() -> None:
    code, output = run(
        "sequences", "timeline", "demo", "--signup-at", "2026-12-04T10:00", "--tz", "Nowhere/X"
    )
    assert code == 2 and "unknown time zone" in output


@pytest.mark.parametrize("step", ["hello", "1"])
def test_preview_prints_the_full_message_by_key_or_position(step: str) -> None:
    code, output = run("sequences", "preview", "demo", step, "--name", "Ana")
    assert code == 0
    message = message_from_string(output)
    assert message["Subject"] == "Demo 1 of 3: your first nurture email"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text, html = (part.get_payload(decode=True).decode() for part in message.get_payload())
    assert "Hello Ana," in text and "<h1" in html


def test_preview_formats_and_unknown_step() -> None:
    code, html = run("sequences", "preview", "demo", "goodbye", "--format", "html")
    assert code == 0 and html.lstrip().lower().startswith("<!doctype html>")
    code, text = run("sequences", "preview", "demo", "2", "--format", "text")
    assert code == 0 and text.startswith("Subject: Demo 2 of 3")
    code, output = run("sequences", "preview", "demo", "9")
    assert code == 2 and "has no step '9'" in output


def test_subscribers_add_enrolls_and_rejects_bad_input(three_step, factory) -> None:  # type: ignore[no-untyped-def]
    assert run("sequences", "sync")[0] == 0
    code, output = run(
        "subscribers", "add", "Zoe@Example.com", "--sequence", "three-step", "--tz", "Europe/London"
    )
    assert code == 0, output
    assert "subscriber zoe@example.com is active" in output and "3 emails" in output
    assert run("subscribers", "add", "not-an-address")[0] == 1
    code, output = run("subscribers", "add", "a@example.com", "--tz", "Mars/Base")
    assert code == 1 and "unknown time zone" in output
    code, output = run("subscribers", "add", "b@example.com", "--sequence", "nope")
    assert code == 1 and "no sequence 'nope'" in output
