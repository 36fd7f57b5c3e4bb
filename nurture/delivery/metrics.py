"""Prometheus metrics, served by the web app at ``GET /metrics``.

Workers run on other machines than the web app, and a worker's in-memory counters die with it, so the numbers
that matter are not kept in worker memory at all:

* **From the database, at scrape time.** Every outcome is already a row in the append-only ``events``
  table (sent, retry, failed, bounced, ambiguous, skipped with its reason, subscribed, unsubscribed...) and
  the schedule is the ``deliveries`` table. Totals are counted from the event log *incrementally*: each web
  process remembers a watermark (the highest event id it has folded in) and per scrape counts only newer
  rows, by primary-key range. Rows younger than :data:`SETTLE_SECONDS` are recounted on every scrape
  instead of being folded in, so an event whose transaction committed a little after a later id was seen
  is still counted. Backlog, lag and in-flight work are indexed aggregates over the partial indexes the
  dispatcher itself uses. Every web process, on any host, reports the same totals; a restarted one
  recounts once and carries on, so the counters never go backwards (Prometheus sees no reset).
* **In the processes that do the work, across processes.** Per-delivery send latency is measured where it
  happens, in the worker. With ``PROMETHEUS_MULTIPROC_DIR`` set (docker-compose shares one volume between the
  web and worker containers of a host; ``nurture run`` uses ``var/metrics``) every process writes its samples
  to files there and ``/metrics`` merges them, so prefork children and several worker containers add up.
  Without it, ``/metrics`` shows only the web process's own samples; the database-derived numbers are
  complete either way.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram, disable_created_metrics, values
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, sessionmaker

from nurture.core import clock

log = logging.getLogger(__name__)

SETTLE_SECONDS = 600  # events younger than this are recounted each scrape rather than folded into the totals

# Delivery outcomes as the event log names them (nurture/delivery/sender.py, nurture/delivery/dispatch.py).
OUTCOMES = ("sent", "retry", "failed", "bounced", "ambiguous", "skipped")
# Skip reasons the sender records (nurture.delivery.sender.reason_for); others that appear are reported as
# they are.
SKIP_REASONS = (
    "unsubscribed",
    "suppressed",
    "not-confirmed",
    "erased",
    "enrollment-ended",
    "sequence-archived",
    "condition",  # a step's only_if was false when it came due (nurture.sequences.conditions)
)
# Event kinds behind the other counters (nurture/subscribers/signup.py, enrollment.py, bounces.py).
SIGNUPS = {"form": "signup", "staff": "subscribed"}  # label -> kind: form signups wait for confirmation
BOUNCES = {"hard": "bounced", "soft": "soft_bounce"}
SEND_OUTCOME_LABELS = ("sent", "retry", "failed", "ambiguous", "skipped", "held", "not-claimed", "error")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_LABEL = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


# --- worker-side metrics (multiprocess mode when PROMETHEUS_MULTIPROC_DIR is set) ---------------------------


def multiprocess_dir() -> Path | None:
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(value) if value else None


def _process_identifier() -> str:
    # Several containers share one metrics folder and each numbers its processes from 1: the host name keeps
    # their files apart. Underscores are the file-name separator, so none in the identifier.
    return f"{socket.gethostname()}-{os.getpid()}".replace("_", "-")


class LiveMetrics:
    """Metrics observed where the work happens."""

    def __init__(self) -> None:
        self.send_seconds = Histogram(
            "nurture_send_seconds",
            "Seconds a worker spent on one delivery, from its checks to the SMTP answer, by outcome.",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.rate_limit_waits = PromCounter(
            "nurture_rate_limit_waits",
            "Times a worker waited for the SMTP sending-rate limit (NURTURE_SMTP_RATE).",
            registry=None,
        )
        self.rate_limit_wait_seconds = PromCounter(
            "nurture_rate_limit_wait_seconds",
            "Seconds workers spent waiting for the SMTP sending-rate limit.",
            registry=None,
        )
        self.circuit_breaker_state = Gauge(
            "nurture_circuit_breaker_state",
            "Sending circuit breaker: 0 closed (sending), 1 open (paused after too many failures).",
            registry=None,
            multiprocess_mode="livemax",
        )
        self.send_seconds.labels("sent")  # present from the start, at zero

    def collectors(self) -> list[Any]:
        return [
            self.send_seconds,
            self.rate_limit_waits,
            self.rate_limit_wait_seconds,
            self.circuit_breaker_state,
        ]


_live: LiveMetrics | None = None
_live_lock = threading.Lock()


def live() -> LiveMetrics:
    """This process's worker-side metrics, created on first use (after PROMETHEUS_MULTIPROC_DIR is known)."""
    global _live
    if _live is None:
        with _live_lock:
            if _live is None:
                folder = multiprocess_dir()
                disable_created_metrics()  # no *_created series: they only add noise here
                if folder is not None:
                    folder.mkdir(parents=True, exist_ok=True)
                    values.ValueClass = values.MultiProcessValue(process_identifier=_process_identifier)
                _live = LiveMetrics()
    return _live


def observe_send(outcome: str, seconds: float) -> None:
    """Called by the sender once per delivery (``outcome`` as ``Sender.send_one`` returns it)."""
    label = outcome.split(":", 1)[0]
    live().send_seconds.labels(label if label in SEND_OUTCOME_LABELS else "other").observe(seconds)


def reset_live() -> None:
    """Forget this process's worker-side metrics (tests move PROMETHEUS_MULTIPROC_DIR between them)."""
    global _live
    with _live_lock:
        _live = None
        values.ValueClass = values.MutexValue


def observe_rate_limit_wait(seconds: float) -> float:
    """For the rate limiter: seconds waited for a sending slot (0: no wait, not counted); returns them."""
    if seconds > 0:
        metrics = live()
        metrics.rate_limit_waits.inc()
        metrics.rate_limit_wait_seconds.inc(seconds)
    return seconds


def set_circuit_breaker_open(is_open: bool) -> None:
    """For the circuit breaker: its state as this process sees it."""
    live().circuit_breaker_state.set(1 if is_open else 0)


def process_exited(pid: int | None = None) -> None:
    """Drop a finished process's live gauges from the multiprocess folder (Celery child shutdown)."""
    folder = multiprocess_dir()
    if folder is None:
        return
    from prometheus_client import multiprocess

    identifier = f"{socket.gethostname()}-{pid or os.getpid()}".replace("_", "-")
    multiprocess.mark_process_dead(identifier, str(folder))


# --- database-derived metrics, collected at scrape time -------------------------------------------------


class DatabaseCollector:
    """Counts and backlog from the database; see the module docstring for why and how."""

    def __init__(
        self, factory: sessionmaker[Session] | None = None, settle_seconds: float = SETTLE_SECONDS
    ) -> None:
        self.factory = factory
        self.settle = timedelta(seconds=settle_seconds)
        self._lock = threading.Lock()
        self._settled_id = 0
        self._settled: Counter[tuple[str, str]] = Counter()

    # prometheus_client calls collect() on every scrape; describe() keeps registration from querying.
    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        try:
            snapshot = self.snapshot()
        except Exception as exc:  # a scrape must still answer: say the database is down, skip its numbers
            log.warning("metrics: database query failed: %s: %s", type(exc).__name__, exc)
            yield _gauge("nurture_database_up", "1 when the metrics queries reached the database.", 0)
            return
        yield _gauge("nurture_database_up", "1 when the metrics queries reached the database.", 1)
        yield from self._families(snapshot)
        yield _gauge(
            "nurture_metrics_query_seconds",
            "Seconds the database queries of this scrape took.",
            time.perf_counter() - started,
        )

    def snapshot(self) -> dict[str, Any]:
        from nurture.core.db import transaction

        now = clock.now()
        with self._lock, transaction(self.factory) as session:
            return {"events": self._event_totals(session, now), **_schedule(session, now)}

    def _event_totals(self, session: Session, now: datetime) -> Counter[tuple[str, str]]:
        from nurture.models import Event

        newest = session.scalar(select(func.max(Event.id)))
        if newest is None or newest < self._settled_id:
            # An emptied or restored database: start again rather than report stale totals.
            self._settled_id, self._settled = 0, Counter()
            if newest is None:
                return Counter()
        settle_to = session.scalar(
            select(func.max(Event.id)).where(
                Event.id > self._settled_id, Event.created_at < now - self.settle
            )
        )
        if settle_to is not None:
            self._settled += _count_events(session, self._settled_id, settle_to)
            self._settled_id = settle_to
        return self._settled + _count_events(session, self._settled_id, None)

    def _families(self, snapshot: dict[str, Any]) -> Iterator[Metric]:
        events: Counter[tuple[str, str]] = snapshot["events"]
        kinds: Counter[str] = Counter()
        for (kind, _), count in events.items():
            kinds[kind] += count

        deliveries = CounterMetricFamily(
            "nurture_deliveries",
            "Sequence delivery attempts by outcome, from the event log (bounced: refused with 5xx; "
            "skipped: see nurture_delivery_skips_total).",
            labels=["outcome"],
        )
        for outcome in OUTCOMES:
            count = events[("bounced", "smtp")] if outcome == "bounced" else kinds[outcome]
            deliveries.add_metric([outcome], count)
        yield deliveries

        yield _labelled_counter(
            "nurture_delivery_skips",
            "Deliveries not sent, by reason, from the event log.",
            "reason",
            _details_of(events, "skipped", SKIP_REASONS),
        )

        bounces = CounterMetricFamily(
            "nurture_bounces",
            "Bounces: hard (5xx at send time or a bounce notification; the address is suppressed) and soft.",
            labels=["kind"],
        )
        for label, kind in BOUNCES.items():
            bounces.add_metric([label], kinds[kind])
        yield bounces
        yield _counter(
            "nurture_unsubscribes",
            "Unsubscribes (link, one-click, preferences or staff).",
            kinds["unsubscribed"],
        )
        signups = CounterMetricFamily(
            "nurture_signups",
            "Signups: form (double opt-in, counted at signup) and staff (added or imported by staff).",
            labels=["via"],
        )
        for label, kind in SIGNUPS.items():
            signups.add_metric([label], kinds[kind])
        yield signups
        yield _counter("nurture_confirmations", "Signups confirmed (double opt-in).", kinds["confirmed"])
        yield from _unknown_outcomes(events)
        every = CounterMetricFamily("nurture_events", "Every event-log entry, by kind.", labels=["kind"])
        for kind, count in sorted(kinds.items()):
            every.add_metric([_label(kind)], count)
        yield every

        yield _gauge(
            "nurture_due_backlog", "Deliveries due now and not yet claimed by a dispatcher.", snapshot["due"]
        )
        yield _gauge(
            "nurture_due_lag_seconds",
            "How far behind its due time the oldest unclaimed due delivery is (0 when none is waiting).",
            snapshot["lag"],
        )
        yield _gauge(
            "nurture_deliveries_scheduled", "Deliveries pending, due now or later.", snapshot["scheduled"]
        )
        in_flight = GaugeMetricFamily(
            "nurture_deliveries_in_flight",
            "Deliveries claimed by a dispatcher (queued) or being sent by a worker (sending).",
            labels=["status"],
        )
        for status in ("queued", "sending"):
            in_flight.add_metric([status], snapshot["in_flight"].get(status, 0))
        yield in_flight
        yield _gauge(
            "nurture_expired_leases",
            "Claimed deliveries whose lease ran out: the next dispatch tick's reaper takes them back.",
            snapshot["expired"],
        )


def _unknown_outcomes(events: Counter[tuple[str, str]]) -> Iterator[Metric]:
    """Sends a crash or a broken connection left unknown (nurture.delivery.unknown_outcomes), by resolution,
    and the held ones staff resolved since; their difference is what still waits for a person."""
    by_resolution = _details_of(events, "ambiguous", ("resent", "held"), missing="held")
    by_action = _details_of(events, "ambiguous-resolved", ("mark-sent", "send-again"))
    yield _labelled_counter(
        "nurture_unknown_outcomes",
        "Sends whose outcome was unknown, by resolution: resent (same Message-ID) or held for a person.",
        "resolution",
        by_resolution,
    )
    yield _labelled_counter(
        "nurture_unknown_outcomes_resolved",
        "Held unknown outcomes staff resolved, by action (mark-sent, send-again).",
        "action",
        by_action,
    )
    yield _gauge(
        "nurture_unknown_outcomes_held",
        "Deliveries held with an unknown outcome, waiting for a person (mark sent or send again).",
        max(0, by_resolution["held"] - sum(by_action.values())),
    )


def _details_of(
    events: Counter[tuple[str, str]], kind: str, known: tuple[str, ...], missing: str = "other"
) -> Counter[str]:
    """The counts of one event kind by its detail label, every ``known`` label present from zero."""
    counts: Counter[str] = Counter(dict.fromkeys(known, 0))
    for (event_kind, detail), count in events.items():
        if event_kind == kind:
            counts[_label(detail) if detail else missing] += count
    return counts


def _labelled_counter(name: str, documentation: str, label: str, counts: Counter[str]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in sorted(counts.items()):
        family.add_metric([value], count)
    return family


def _count_events(session: Session, after_id: int, up_to: int | None) -> Counter[tuple[str, str]]:
    from nurture.models import Event

    bounce_origin = case(
        (Event.delivery_id.is_(None), "other"),
        (Event.detail["source"].as_string() == "notification", "notification"),
        else_="smtp",
    )
    detail = case(
        (Event.kind == "skipped", Event.detail["reason"].as_string()),
        (Event.kind == "bounced", bounce_origin),
        (Event.kind == "ambiguous", Event.detail["resolution"].as_string()),
        (Event.kind == "ambiguous-resolved", Event.detail["action"].as_string()),
        else_=None,
    )
    query = select(Event.kind, detail, func.count()).where(Event.id > after_id)
    if up_to is not None:
        query = query.where(Event.id <= up_to)
    totals: Counter[tuple[str, str]] = Counter()
    for kind, reason, count in session.execute(query.group_by(Event.kind, detail)):
        totals[(kind, reason or "")] += count
    return totals


def _schedule(session: Session, now: datetime) -> dict[str, Any]:
    from nurture.models import Delivery, DeliveryStatus

    pending = Delivery.status == DeliveryStatus.pending
    due, oldest = session.execute(
        select(func.count(), func.min(Delivery.due_at)).where(pending, Delivery.due_at <= now)
    ).one()
    scheduled = session.scalar(select(func.count()).where(pending))
    leased = Delivery.status.in_([DeliveryStatus.queued, DeliveryStatus.sending])
    in_flight = dict(
        session.execute(select(Delivery.status, func.count()).where(leased).group_by(Delivery.status)).all()
    )
    expired = session.scalar(select(func.count()).where(leased, Delivery.lease_until < now))
    lag = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
    return {"due": due, "lag": lag, "scheduled": scheduled, "in_flight": in_flight, "expired": expired}


def _label(value: str) -> str:
    return value if _LABEL.fullmatch(value or "") else "other"


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


# --- the registry /metrics serves ---------------------------------------------------------------------


class _LiveCollector:
    """This process's own worker-side metrics, when there is no multiprocess folder to read them from."""

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for collector in live().collectors():
            yield from collector.collect()


def scrape_registry(factory: sessionmaker[Session] | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(factory))
    live()  # so the worker-side metrics exist, at zero, before any worker reports
    folder = multiprocess_dir()
    if folder is not None:
        from prometheus_client.multiprocess import MultiProcessCollector

        MultiProcessCollector(registry, path=str(folder))
    else:
        registry.register(_LiveCollector())
    return registry
