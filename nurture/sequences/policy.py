"""The goal, exit, re-entry and tracking settings of a sequence file (top-level keys beside ``steps``).

Only keys actually written in the file are kept, so a sequence that sets none of them has the same canonical
definition (and digest) as before these settings existed; :class:`Policy` supplies the defaults.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from nurture.sequences.schedule import ScheduleError, format_delay, parse_delay

POLICY_KEYS = {"goals", "exit_events", "reentry", "reentry_cooldown", "on_resignup", "tracking"}
EVENT_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,47}$")  # fits "exit-event:<name>" in end_reason
REENTRY = ("once", "after", "always")
ON_RESIGNUP = ("ignore", "restart")
TRACKING_KEYS = {"clicks", "opens"}


@dataclass(frozen=True)
class Policy:
    goals: frozenset[str] = frozenset()
    exit_events: frozenset[str] = frozenset()
    reentry: str = "once"
    reentry_cooldown: timedelta | None = None
    on_resignup: str = "ignore"
    clicks: bool = True  # click tracking is on unless a sequence turns it off
    opens: bool = False  # opens are opt-in: Apple Mail Privacy Protection makes them unreliable

    @classmethod
    def of(cls, definition: Mapping[str, Any] | None) -> Policy:
        """The policy stored in a version's canonical definition (already validated)."""
        data = definition or {}
        tracking = data.get("tracking") or {}
        cooldown = data.get("reentry_cooldown")
        return cls(
            goals=frozenset(data.get("goals") or ()),
            exit_events=frozenset(data.get("exit_events") or ()),
            reentry=data.get("reentry") or "once",
            reentry_cooldown=parse_delay(cooldown) if cooldown is not None else None,
            on_resignup=data.get("on_resignup") or "ignore",
            clicks=bool(tracking.get("clicks", True)),
            opens=bool(tracking.get("opens", False)),
        )


def parse_policy(raw: Mapping[str, Any], problem: Callable[[str], None]) -> dict[str, Any]:
    """Validate the policy keys present in ``raw``; returns them in canonical form (only those present)."""
    result: dict[str, Any] = {}
    for key in ("goals", "exit_events"):
        if key in raw:
            names = _event_names(raw[key], key, problem)
            if names is not None:
                result[key] = names
    overlap = set(result.get("goals", ())) & set(result.get("exit_events", ()))
    if overlap:
        problem(f"{', '.join(sorted(overlap))} cannot be both a goal and an exit event")
    if "reentry" in raw:
        if raw["reentry"] in REENTRY:
            result["reentry"] = raw["reentry"]
        else:
            problem(f"reentry {raw['reentry']!r} must be one of {', '.join(REENTRY)}")
    if "reentry_cooldown" in raw:
        try:
            cooldown = parse_delay(raw["reentry_cooldown"])
        except ScheduleError as exc:
            problem(f"bad reentry_cooldown: {exc}")
        else:
            if cooldown <= timedelta(0):
                problem("reentry_cooldown must be longer than 0")
            result["reentry_cooldown"] = format_delay(cooldown)
    if raw.get("reentry") == "after" and "reentry_cooldown" not in raw:
        problem('reentry: after needs a reentry_cooldown (e.g. "30d")')
    if "reentry_cooldown" in raw and raw.get("reentry") != "after":
        problem("reentry_cooldown applies only with reentry: after")
    if "on_resignup" in raw:
        if raw["on_resignup"] in ON_RESIGNUP:
            result["on_resignup"] = raw["on_resignup"]
        else:
            problem(f"on_resignup {raw['on_resignup']!r} must be one of {', '.join(ON_RESIGNUP)}")
    if "tracking" in raw:
        tracking = raw["tracking"]
        if not isinstance(tracking, dict):
            problem("tracking must be a mapping like {clicks: true, opens: false}")
        else:
            for unknown in sorted(set(tracking) - TRACKING_KEYS):
                problem(f"tracking: unknown field {unknown!r} (allowed: clicks, opens)")
            clean = {}
            for key in sorted(TRACKING_KEYS & set(tracking)):
                if isinstance(tracking[key], bool):
                    clean[key] = tracking[key]
                else:
                    problem(f"tracking: {key} must be true or false")
            result["tracking"] = clean
    return result


def _event_names(value: Any, key: str, problem: Callable[[str], None]) -> list[str] | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problem(f"{key} must be a list of event names")
        return None
    bad = [v for v in value if not EVENT_NAME.match(v)]
    if bad:
        problem(f"{key}: {', '.join(map(repr, bad))} must be lower-case letters, digits, '_', '.' or '-'")
        return None
    return sorted(set(value))
