"""Send webhook deliveries: claim with a lease, POST signed, record every attempt, retry, auto-disable.

The claim follows the outbox (nurture/delivery/confirmations.py): one conditional UPDATE (``FOR UPDATE SKIP
LOCKED`` on PostgreSQL) moves due rows of enabled endpoints ``pending -> queued`` under a token and a lease;
the outcome is written only while the row still carries that token; the reaper returns rows whose lease ran
out. Webhooks are at-least-once: a worker that dies after the POST leaves the row to be sent again, and
receivers drop repeats by ``webhook-id``.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx2
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, joinedload, sessionmaker

from nurture.core import clock
from nurture.core.config import Settings
from nurture.core.db import transaction
from nurture.delivery import leases
from nurture.models import (
    AuditLog,
    WebhookAttempt,
    WebhookDelivery,
    WebhookDeliveryStatus,
    WebhookEndpoint,
    events,
)
from nurture.webhooks import fanout, signing
from nurture.webhooks.secrets import unseal
from nurture.webhooks.urls import UnsafeUrl, guarded_client

log = logging.getLogger(__name__)

SNIPPET_CHARS = 300
JITTER = 0.1  # each retry delay varies by up to this fraction, so endpoints that failed together spread out


@dataclass(frozen=True)
class Outcome:
    ok: bool
    status_code: int | None
    snippet: str | None
    error: str | None
    duration_ms: int

    def describe(self) -> str:
        if self.ok:
            return f"{self.status_code} in {self.duration_ms} ms"
        return self.error or f"HTTP {self.status_code}"


def retry_delay(settings: Settings, attempts: int, rng: random.Random | None = None) -> float | None:
    """Seconds until the next try after ``attempts`` failed tries; None when the schedule is spent."""
    delays = settings.webhooks.webhook_retry_delays
    if attempts > len(delays):
        return None
    base = delays[attempts - 1]
    return base * (1 + (rng or random).uniform(-JITTER, JITTER))


def signing_secrets(endpoint: WebhookEndpoint, settings: Settings, now: datetime) -> list[str]:
    """The current secret, and the previous one while its grace period lasts."""
    current = [unseal(endpoint.secret, settings)]
    if endpoint.previous_secret and endpoint.previous_secret_until and endpoint.previous_secret_until > now:
        current.append(unseal(endpoint.previous_secret, settings))
    return current


class WebhookSender:
    def __init__(
        self, settings: Settings, factory: sessionmaker[Session], client: httpx2.Client | None = None
    ) -> None:
        self.settings = settings
        self.factory = factory
        self.client = client or guarded_client(settings)
        self._last_purge = -float("inf")

    def close(self) -> None:
        self.client.close()

    # --- the beat's work ----------------------------------------------------------------------------------

    def pump(self, max_batches: int = 10) -> int:
        """Fan out new events; several batches per call when there is a backlog."""
        created = 0
        for _ in range(max_batches):
            with transaction(self.factory) as session:
                result = fanout.pump(session, self.settings)
            created += result.deliveries
            if result.caught_up:
                break
        return created

    def purge(self, every_seconds: float = 600) -> int:
        """Forget finished deliveries (and their attempts) older than NURTURE_WEBHOOK_RETENTION_DAYS: their
        bodies name subscribers, and a log of old successes helps nobody. At most every ``every_seconds``."""
        now = time.monotonic()
        if now - self._last_purge < every_seconds:
            return 0
        self._last_purge = now
        with transaction(self.factory) as session:
            return purge_finished(session, timedelta(days=self.settings.webhooks.webhook_retention_days))

    def claim(self, limit: int = 50) -> tuple[str, list[int]]:
        with transaction(self.factory) as session:
            reap_expired(session)
            return claim_due(session, limit=limit, lease_seconds=self.settings.broker.lease_seconds)

    def send_claimed(self, token: str, ids: list[int]) -> Counter[str]:
        """Send a claimed batch: one transaction reads it, the POSTs follow, one transaction records every
        outcome (per-row commits, not HTTP, were most of the cost: docs/webhooks.md, "Throughput")."""
        outcomes: Counter[str] = Counter()
        if not ids:
            return outcomes
        with transaction(self.factory) as session:
            batch = self._prepare(session, token, ids, outcomes)
        results = []
        for item in batch:
            started = clock.now()
            outcome = item.failure or self._post_safely(item)
            results.append((item, started, outcome))
        with transaction(self.factory) as session:
            outcomes.update(self._record(session, token, results))
        return outcomes

    def tick(self, limit: int = 50, batch: int = 20) -> Counter[str]:
        """Fan out, then claim and send up to ``limit`` due deliveries here (the CLI's ``webhooks pump``),
        ``batch`` at a time, so a slow endpoint cannot outlast the lease of rows still waiting their turn."""
        self.purge()
        self.pump()
        outcomes: Counter[str] = Counter()
        while limit > 0:
            token, ids = self.claim(min(batch, limit))
            if not ids:
                break
            outcomes.update(self.send_claimed(token, ids))
            limit -= len(ids)
        return outcomes

    # --- scheduled attempts, in batches -------------------------------------------------------------------

    def _prepare(
        self, session: Session, token: str, ids: list[int], outcomes: Counter[str]
    ) -> list[_Prepared]:
        rows = {
            d.id: d
            for d in session.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.id.in_(ids))
                .options(joinedload(WebhookDelivery.endpoint))
                .execution_options(populate_existing=True)
            )
        }
        secrets_of: dict[int, list[str] | str] = {}
        batch = []
        now = clock.now()
        for delivery_id in ids:
            delivery = rows.get(delivery_id)
            if delivery is None:
                outcomes["gone"] += 1
                continue
            if delivery.status != WebhookDeliveryStatus.queued or delivery.claim_token != token:
                outcomes["not-claimed"] += 1
                continue
            endpoint = delivery.endpoint
            if not endpoint.enabled:
                # Disabled after the claim: back to pending, it goes when the endpoint is enabled again.
                _finish(session, token, delivery_id, status=WebhookDeliveryStatus.pending, claim_token=None)
                outcomes["endpoint-disabled"] += 1
                continue
            if endpoint.id not in secrets_of:
                try:
                    secrets_of[endpoint.id] = signing_secrets(endpoint, self.settings, now)
                except RuntimeError as exc:  # a secret that no key decrypts: recorded, retried, visible
                    secrets_of[endpoint.id] = str(exc)
            keys = secrets_of[endpoint.id]
            failure = (
                Outcome(False, None, None, f"cannot sign: {keys}"[:300], 0) if isinstance(keys, str) else None
            )
            batch.append(
                _Prepared(
                    delivery_id,
                    endpoint.id,
                    delivery.attempts,
                    _Request(endpoint.url, delivery.message_id, delivery.body, [] if failure else list(keys)),
                    failure,
                )
            )
        return batch

    def _post_safely(self, item: _Prepared) -> Outcome:
        try:
            return self.post(item.request)
        except Exception as exc:  # a bug here must not lose the batch's other outcomes
            log.exception("webhook delivery %s failed unexpectedly", item.delivery_id)
            return Outcome(False, None, None, f"internal error: {type(exc).__name__}", 0)

    def _record(
        self, session: Session, token: str, results: list[tuple[_Prepared, datetime, Outcome]]
    ) -> Counter[str]:
        outcomes: Counter[str] = Counter()
        # An endpoint deleted meanwhile took its deliveries along; their attempts have nothing to belong to.
        sent_ids = [item.delivery_id for item, _, _ in results]
        alive = set(session.scalars(select(WebhookDelivery.id).where(WebhookDelivery.id.in_(sent_ids))))
        session.add_all(
            _attempt_row(item.delivery_id, "scheduled", started, o)
            for item, started, o in results
            if item.delivery_id in alive
        )
        by_endpoint: dict[int, list[tuple[bool, datetime]]] = {}
        for item, started, outcome in results:
            attempts = item.attempts + 1
            values: dict[str, object] = {
                "attempts": attempts,
                "last_status_code": outcome.status_code,
                "claim_token": None,
            }
            if outcome.ok:
                label = "succeeded"
                values |= {
                    "status": WebhookDeliveryStatus.succeeded,
                    "delivered_at": clock.now(),
                    "last_error": None,
                }
            else:
                delay = retry_delay(self.settings, attempts)
                values["last_error"] = outcome.describe()[:500]
                if delay is None:
                    label = "failed"
                    values["status"] = WebhookDeliveryStatus.failed
                else:
                    label = "retry"
                    values |= {
                        "status": WebhookDeliveryStatus.pending,
                        "due_at": clock.db_now(session) + timedelta(seconds=delay),
                    }
            if _finish(session, token, item.delivery_id, **values):
                outcomes[label] += 1
                by_endpoint.setdefault(item.endpoint_id, []).append((outcome.ok, started))
            else:
                outcomes["not-claimed"] += 1  # the lease ran out and the row moved on; attempt still logged
        for endpoint_id, history in sorted(by_endpoint.items()):
            _endpoint_results(session, endpoint_id, history, self.settings)
        return outcomes

    # --- staff-triggered attempts -------------------------------------------------------------------------

    def attempt_now(self, delivery_id: int, trigger: str) -> Outcome:
        """Send one delivery right now with a fresh timestamp (replay, test), outside the schedule: it
        never changes the endpoint's failure count, and a success marks the delivery succeeded."""
        with transaction(self.factory) as session:
            delivery = session.get(WebhookDelivery, delivery_id)
            if delivery is None:
                raise LookupError("no such delivery")
            endpoint = delivery.endpoint
            request = _Request(
                endpoint.url,
                delivery.message_id,
                delivery.body,
                signing_secrets(endpoint, self.settings, clock.now()),
            )
        started = clock.now()
        outcome = self.post(request)
        with transaction(self.factory) as session:
            session.add(_attempt_row(delivery_id, trigger, started, outcome))
            values: dict[str, object] = {"last_status_code": outcome.status_code}
            if outcome.ok:
                values |= {"status": WebhookDeliveryStatus.succeeded, "delivered_at": clock.now()}
                values |= {"last_error": None}
            else:
                values["last_error"] = outcome.describe()[:500]
            # A replay of a row a tick holds right now leaves that tick's outcome alone.
            session.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == delivery_id,
                    WebhookDelivery.status != WebhookDeliveryStatus.queued,
                )
                .values(**values)
                .execution_options(synchronize_session=False)
            )
        return outcome

    # --- HTTP ---------------------------------------------------------------------------------------------

    def post(self, request: _Request) -> Outcome:
        timestamp = int(clock.now().timestamp())
        headers = signing.headers(request.secrets, request.message_id, timestamp, request.body)
        began = time.monotonic()
        deadline = began + self.settings.webhooks.webhook_timeout
        try:
            with self.client.stream(
                "POST", request.url, content=request.body.encode(), headers=headers
            ) as response:
                snippet = b""
                for chunk in response.iter_bytes():
                    snippet += chunk
                    # Only the start is kept; and a receiver that drips bytes does not hold the worker.
                    if len(snippet) >= SNIPPET_CHARS or time.monotonic() > deadline:
                        break
                code = response.status_code
        except UnsafeUrl as exc:
            return Outcome(False, None, None, f"refused: {exc}", _ms(began))
        except httpx2.TimeoutException as exc:
            return Outcome(False, None, None, f"timeout: {type(exc).__name__}", _ms(began))
        except httpx2.HTTPError as exc:
            return Outcome(False, None, None, f"connection failed: {exc}"[:300], _ms(began))
        text = snippet[:SNIPPET_CHARS].decode("utf-8", "replace")
        ok = 200 <= code < 300  # a redirect is a failure: it is never followed
        return Outcome(ok, code, text, None if ok else f"HTTP {code}", _ms(began))


@dataclass(frozen=True)
class _Request:
    url: str
    message_id: str
    body: str
    secrets: list[str]


@dataclass(frozen=True)
class _Prepared:
    delivery_id: int
    endpoint_id: int
    attempts: int  # scheduled attempts before this one
    request: _Request
    failure: Outcome | None  # known before any request (cannot sign)


def _ms(began: float) -> int:
    return int((time.monotonic() - began) * 1000)


def _attempt_row(delivery_id: int, trigger: str, started: datetime, outcome: Outcome) -> WebhookAttempt:
    return WebhookAttempt(
        delivery_id=delivery_id,
        trigger=trigger,
        attempted_at=started,
        status_code=outcome.status_code,
        response_snippet=outcome.snippet,
        error=outcome.error[:500] if outcome.error else None,
        duration_ms=outcome.duration_ms,
    )


def _finish(session: Session, token: str, delivery_id: int, **values: object) -> bool:
    """Record an outcome only while the row is still ours (the reaper may have handed it on)."""
    return bool(leases.WEBHOOKS.finish(session, token, [delivery_id], leases.QUEUED, **values))


def _endpoint_results(
    session: Session, endpoint_id: int, history: list[tuple[bool, datetime]], settings: Settings
) -> None:
    """Apply a batch's outcomes for one endpoint in order: a success resets the count; a failure counts,
    and the endpoint is disabled once it failed N times in a row over at least M hours (both: a burst of
    failures in a short outage must not disable it, nor one failure a day for a week)."""
    endpoint = session.scalar(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if endpoint is None:
        return
    now = clock.now()
    for ok, at in history:
        if ok:
            endpoint.consecutive_failures = 0
            endpoint.failing_since = None
            endpoint.last_success_at = now
            continue
        endpoint.consecutive_failures += 1
        endpoint.failing_since = endpoint.failing_since or at
        sustained = now - endpoint.failing_since >= timedelta(hours=settings.webhooks.webhook_disable_hours)
        if (
            endpoint.enabled
            and endpoint.consecutive_failures >= settings.webhooks.webhook_disable_failures
            and sustained
        ):
            _auto_disable(session, endpoint, now)


def _auto_disable(session: Session, endpoint: WebhookEndpoint, now: datetime) -> None:
    assert endpoint.failing_since is not None
    endpoint.enabled = False
    endpoint.disabled_at = now
    endpoint.disabled_reason = (
        f"automatically: {endpoint.consecutive_failures} failed attempts in a row since "
        f"{endpoint.failing_since:%Y-%m-%d %H:%M} UTC"
    )
    events.record(session, "webhook-disabled", endpoint=endpoint.id, reason=endpoint.disabled_reason)
    session.add(
        AuditLog(
            user_id=None,
            actor="system",
            action="webhook.auto_disable",
            target=f"webhook:{endpoint.id}",
            before={"enabled": True},
            after={"enabled": False, "reason": endpoint.disabled_reason},
        )
    )
    log.warning("webhook endpoint %s disabled: %s", endpoint.id, endpoint.disabled_reason)


def claim_due(session: Session, *, limit: int, lease_seconds: int) -> tuple[str, list[int]]:
    """The claim rules of every work table (nurture/delivery/leases.py), for endpoints that are enabled."""
    enabled = select(WebhookEndpoint.id).where(WebhookEndpoint.enabled.is_(True))
    claim = leases.WEBHOOKS.claim(
        session, limit=limit, lease_seconds=lease_seconds, only=(WebhookDelivery.endpoint_id.in_(enabled),)
    )
    return claim.token, claim.ids


def reap_expired(session: Session) -> int:
    """Claims whose lease ran out go back to pending (a webhook row is never ``sending``: a POST whose
    answer was lost is simply posted again, with the same webhook-id for receivers to drop repeats)."""
    return leases.WEBHOOKS.reap(session, policy="resend").returned


def purge_finished(session: Session, older_than: timedelta) -> int:
    """Delete succeeded and failed deliveries made before ``now - older_than``, endpoint by endpoint (the
    (endpoint, created_at) index serves each); attempts go with them (ON DELETE CASCADE)."""
    cutoff = clock.now() - older_than
    removed = 0
    for endpoint_id in list(session.scalars(select(WebhookEndpoint.id))):
        result = session.execute(
            delete(WebhookDelivery)
            .where(
                WebhookDelivery.endpoint_id == endpoint_id,
                WebhookDelivery.created_at < cutoff,
                WebhookDelivery.status.in_([WebhookDeliveryStatus.succeeded, WebhookDeliveryStatus.failed]),
            )
            .execution_options(synchronize_session=False)
        )
        removed += result.rowcount or 0
    return removed
