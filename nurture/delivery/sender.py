"""Send claimed deliveries, exactly once each, and record what happened.

A batch is prepared in one read (rows, subscribers, steps, suppressions), then sent in groups: render the
group; one short transaction that records the previous group's rows as sent, re-checks this group (subscribers
share-locked, so an unsubscribe cannot slip between check and mark) and moves it ``queued -> sending``; then
one SMTP transaction per email, in id order, each followed by its *receipt*: a row of ``send_receipts``, in a
commit of its own (one narrow INSERT, without waiting for the disk on PostgreSQL), confirmed before any of the
next email's data goes out. A worker that dies therefore leaves at most one email whose fate is unknown: the
reaper (nurture.delivery.leases) records the group's emails that have a receipt as sent, resends (or, under
``hold``, holds) the first without one, and returns the rest to pending (docs/reliability.md, "Crashes"). A
group is only as large as the server accepts in 50 ms (at most 100), so an unsubscribe that lands while we
render still wins. Every database step retries on a lost connection; each is a conditional write, so a repeat
changes nothing.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, func, insert, select, text, update
from sqlalchemy.orm import Session

from nurture.core import clock
from nurture.core.db import InParameter, retrying
from nurture.delivery import leases, metrics, receipts
from nurture.delivery.mailer import Mailer
from nurture.delivery.receipts import ReceiptWriter
from nurture.mail.context import Recipient, step_message
from nurture.mail.links import LinkRewriter, LinkRow, store_links_of
from nurture.mail.plans import StepPlans, StepSpec
from nurture.mail.transports import (
    AmbiguousFailure,
    ConnectFailure,
    HeldBack,
    PermanentFailure,
    TemporaryFailure,
    Then,
)
from nurture.models import (
    Delivery,
    DeliveryStatus,
    Enrollment,
    EnrollmentStatus,
    Event,
    Sequence,
    SequenceStatus,
    SequenceVersion,
    Step,
    Subscriber,
    SubscriberStatus,
    events,
)
from nurture.sequences import timetable
from nurture.sequences.condition_facts import facts_of
from nurture.sequences.conditions import REASON as CONDITION
from nurture.sequences.conditions import Condition, conditions_of
from nurture.sequences.policy import Policy
from nurture.sequences.review import NO_REVIEW, Review
from nurture.sequences.variants import experiments_of
from nurture.subscribers.enrollment import cancel_open_deliveries
from nurture.subscribers.suppression import subscriber_is_suppressed, suppress

log = logging.getLogger(__name__)

HOLD = "held"  # not a skip: the enrollment or sequence is paused and the delivery waits for resume
DEFERRED = "deferred"  # handed back unsent because the SMTP server is unreachable or the breaker is open


@dataclass(frozen=True)
class Prepared:
    recipient: Recipient
    subscriber_id: int
    step_key: str
    template: str
    sequence_name: str
    step_number: int
    step_count: int
    subject: str | None = None  # the step's subject override (nurture.sequences.versions)
    # Click/open tracking for the sequence version (nurture.subscribers.clicks); clicks on unless turned off.
    track_clicks: bool = True
    track_opens: bool = False
    review: Review = NO_REVIEW  # who reviewed the course, for the footer (nurture.sequences.review)
    # The step's A/B variant for this person (nurture.sequences.variants); template and subject above
    # already carry its overrides.
    variant: str | None = None


@dataclass(frozen=True)
class _Ready:
    """A rendered email waiting for its group's transaction."""

    delivery_id: int
    prepared: Prepared
    data: bytes
    message_id: str
    links: list[LinkRow]


@dataclass(frozen=True)
class _Accepted:
    """A message the server accepted and whose receipt is stored; its row is recorded as sent in the next
    transaction (or by the reaper, from the receipt, if this worker dies first)."""

    token: str
    delivery_id: int
    message_id: str


class _StopBatch(Exception):
    """Sending cannot go on right now (server unreachable, breaker open): hand the rest back unsent."""

    def __init__(self, retry_in: float, error: str = "") -> None:
        self.retry_in = retry_in
        self.error = error


DELIVERIES = leases.DELIVERIES


# Recording a group as sent on PostgreSQL: one statement and one round trip, the same for every group (so
# SQLAlchemy builds and compiles nothing per group), the ids and Message-IDs as arrays: the rows marked sent
# under WorkTable.finish's rule (same token, "sending" or a reaper's "ambiguous"), a ``sent`` event for each
# row that moved, and the receipts of all of them deleted (nurture.delivery.receipts). Elsewhere the same
# three steps are three statements (_record_sent_portably).
_RECORD_SENT_PG = text(
    "WITH done AS ("
    " UPDATE deliveries AS d SET status = 'sent', sent_at = :sent_at, message_id = v.message_id,"
    " last_error = NULL, lease_until = NULL"
    " FROM unnest(CAST(:ids AS integer[]), CAST(:message_ids AS varchar[])) AS v(id, message_id)"
    " WHERE d.id = v.id AND d.claim_token = :token AND d.status IN ('sending', 'ambiguous')"
    " RETURNING d.id, v.message_id"
    "), logged AS ("
    " INSERT INTO events (kind, delivery_id, detail, created_at)"
    " SELECT 'sent', done.id, json_build_object('message_id', done.message_id), :sent_at FROM done"
    " ORDER BY done.id"
    "), forgotten AS ("
    " DELETE FROM send_receipts WHERE delivery_id = ANY(CAST(:ids AS integer[]))"
    ") SELECT id FROM done"
)
_SENT_EVENT = insert(Event.__table__).values(kind="sent")  # many rows: SQLAlchemy sends one INSERT


def _record_sent(session: Session, token: str, message_ids: dict[int, str], sent_at: datetime) -> set[int]:
    """Mark the rows still ours under ``token`` sent, each with its Message-ID, with their ``sent`` events,
    and forget their receipts; the ids recorded."""
    if session.get_bind().dialect.name == "postgresql":
        ids = list(message_ids)
        params = {
            "ids": ids,
            "message_ids": [message_ids[i] for i in ids],
            "sent_at": sent_at,
            "token": token,
        }
        return set(session.connection().execute(_RECORD_SENT_PG, params).scalars())
    return _record_sent_portably(session, token, message_ids, sent_at)


def _record_sent_portably(
    session: Session, token: str, message_ids: dict[int, str], sent_at: datetime
) -> set[int]:
    recorded = DELIVERIES.finish(
        session,
        token,
        list(message_ids),
        DeliveryStatus.sending,
        status=DeliveryStatus.sent,
        sent_at=sent_at,
        message_id=case(message_ids, value=Delivery.id),
        last_error=None,
    )
    if recorded:
        session.connection().execute(
            _SENT_EVENT,
            [
                {"delivery_id": d, "detail": {"message_id": message_ids[d]}, "created_at": sent_at}
                for d in sorted(recorded)
            ],
        )
    receipts.forget(session, list(message_ids))
    return recorded


def _record_variants(session: Session, claim_token: str, assigned: dict[int, str]) -> None:
    """Write each row's variant once, while the row is still this claim's: one statement per batch."""
    session.execute(
        update(Delivery)
        .where(
            Delivery.id.in_(list(assigned)),
            Delivery.claim_token == claim_token,
            Delivery.variant.is_(None),
        )
        .values(variant=case(assigned, value=Delivery.id))
        .execution_options(synchronize_session=False)
    )


# A batch's rows with what sending them needs, in one statement built once (it runs for every 50 emails).
_BATCH_ROWS = (
    select(
        Delivery.id,
        Delivery.status,
        Delivery.claim_token,
        Delivery.lease_until,
        Delivery.subscriber_id,
        Delivery.enrollment_id,
        Delivery.variant,
        Subscriber.status.label("subscriber_status"),
        Subscriber.email,
        Subscriber.first_name,
        Subscriber.public_id,
        subscriber_is_suppressed().label("suppressed"),
        Step.key.label("step_key"),
        Step.template,
        Step.position,
        Step.subject,
        Enrollment.status.label("enrollment_status"),
        Enrollment.version_id,
        Sequence.status.label("sequence_status"),
        Sequence.name.label("sequence_name"),
        Sequence.slug.label("sequence_slug"),
    )
    .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
    .join(Step, Step.id == Delivery.step_id)
    .join(Enrollment, Enrollment.id == Delivery.enrollment_id)
    .join(Sequence, Sequence.id == Enrollment.sequence_id)
    .where(InParameter(Delivery.id, "ids"))
)
# The same rows again right before sending, with the subscribers share-locked: an unsubscribe either
# committed before this read (and is seen) or waits for the group's transaction.
_RECHECK = _BATCH_ROWS.with_for_update(read=True, of=Subscriber)
_VERSIONS = select(
    SequenceVersion.id,
    SequenceVersion.definition,
    select(func.count(Step.id))
    .where(Step.version_id == SequenceVersion.id)
    .scalar_subquery()
    .label("step_count"),
).where(InParameter(SequenceVersion.id, "ids"))


def reason_for(
    subscriber_status: str | None, suppressed: bool, enrollment_status: str, sequence_status: str
) -> str | None:
    """Why a delivery must not go now, or None. Reasons are stable values: they are counted and shown."""
    if subscriber_status is None:
        return "erased"
    if subscriber_status == SubscriberStatus.unsubscribed:
        return "unsubscribed"
    if subscriber_status != SubscriberStatus.active:
        return "not-confirmed"
    if suppressed:
        return "suppressed"
    if enrollment_status in (EnrollmentStatus.cancelled, EnrollmentStatus.completed):
        return "enrollment-ended"
    if enrollment_status == EnrollmentStatus.paused or sequence_status == SequenceStatus.paused:
        return HOLD
    # An archived sequence takes no new enrollments but lets the ones in flight finish; staff who want them
    # stopped archive with "stop", which ends the enrollments (the "enrollment-ended" skip above).
    return None


def log_transition(delivery_id: int, outcome: str, *, level: int = logging.INFO, **fields: object) -> None:
    """One structured line per state change; ids only, never addresses, at info level (a plain ``sent`` at
    debug: see :meth:`Sender._hand_over`)."""
    if not log.isEnabledFor(level):
        return
    extra = " ".join(f"{key}={value}" for key, value in fields.items() if value is not None)
    log.log(
        level, "delivery=%s outcome=%s %s", delivery_id, outcome, extra,
        extra={"delivery_id": delivery_id, **fields},
    )  # fmt: skip


class Sender(Mailer):
    """Sends the deliveries a worker claimed, group by group, and records each outcome."""

    # Moving average of one SMTP hand-over, for _group_size; None until the first group went out.
    _smtp_seconds: float | None = None

    @functools.cached_property
    def plans(self) -> StepPlans:
        return StepPlans(self.settings, self.templates)

    @functools.cached_property
    def receipts(self) -> ReceiptWriter:
        return ReceiptWriter(self.factory.kw["bind"])

    def send_batch(self, claim_token: str, delivery_ids: list[int]) -> Counter[str]:
        outcomes: Counter[str] = Counter()
        prepared = retrying(lambda s: self._prepare_batch(s, claim_token, delivery_ids), self.factory)
        todo: list[tuple[int, Prepared]] = []
        for delivery_id in delivery_ids:
            item = prepared[delivery_id]
            if isinstance(item, str):
                outcomes[item] += 1
            else:
                todo.append((delivery_id, item))
        accepted: list[_Accepted] = []
        try:
            while todo:
                size = self._group_size()
                group, todo = todo[:size], todo[size:]
                try:
                    self._send_group(claim_token, group, accepted, outcomes)
                except _StopBatch as stop:
                    rest = [delivery_id for delivery_id, _ in todo]
                    if rest:
                        self._defer(claim_token, rest, stop.retry_in)
                    outcomes[DEFERRED] += len(rest)
                    break
        finally:
            if accepted:
                retrying(lambda s: self._record_accepted(s, accepted), self.factory)
        return outcomes

    def _group_size(self) -> int:
        """As many emails as the SMTP server takes in ``send_group_window_ms``, at most ``send_group_max``.

        Each group costs one transaction instead of one per email; the window keeps the time between a
        group's re-check and its last hand-over short, whatever the server's speed (one email per group for
        a server that takes longer than the window per message, as with a distant provider)."""
        if self._smtp_seconds is None:
            return 1
        fits = int(self.settings.mail.send_group_window_ms / 1000 / max(self._smtp_seconds, 1e-6))
        return max(1, min(self.settings.mail.send_group_max, fits))

    def _observe_smtp(self, seconds: float) -> None:
        previous = self._smtp_seconds
        self._smtp_seconds = seconds if previous is None else 0.8 * previous + 0.2 * seconds

    def _send_group(
        self,
        claim_token: str,
        group: list[tuple[int, Prepared]],
        accepted: list[_Accepted],
        outcomes: Counter[str],
    ) -> None:
        """Render the group, re-check and mark it ``sending`` in one transaction (which also records the
        previous group as sent), then hand each email to the SMTP server."""
        started = time.perf_counter()
        finished: list[str] = []
        try:
            self._send_group_timed(claim_token, group, accepted, finished)
        except _StopBatch:
            raise
        except Exception:  # one broken group must not strand the rest of the batch; the reaper has its rows
            log.exception("a group of %d deliveries failed", len(group))
            finished.extend(["error"] * (len(group) - len(finished)))
        finally:
            outcomes.update(finished)
            share = (time.perf_counter() - started) / max(1, len(group))
            for outcome in finished:
                metrics.observe_send(outcome, share)

    def _send_group_timed(
        self,
        claim_token: str,
        group: list[tuple[int, Prepared]],
        accepted: list[_Accepted],
        finished: list[str],
    ) -> None:
        ready: list[_Ready] = []
        for delivery_id, prepared in group:
            rendered = self._render(claim_token, delivery_id, prepared)
            if isinstance(rendered, str):
                finished.append(rendered)
            else:
                ready.append(rendered)
        if not ready:
            return
        # Handed over in id order; the reaper reads the attempt's rows in that order too.
        ready.sort(key=lambda r: r.delivery_id)
        wait = self.breaker.open_for()
        metrics.set_circuit_breaker_open(wait > 0)
        if wait > 0:
            self._defer(claim_token, [r.delivery_id for r in ready], wait)
            finished.extend([DEFERRED] * len(ready))
            raise _StopBatch(wait)
        for _ in ready:
            metrics.observe_rate_limit_wait(self.limiter.acquire())
        # From here the rows carry a token unique to this attempt: if the commit below succeeds but its reply
        # is lost with the connection, the retry recognises its own change instead of giving the rows up; a
        # redelivered copy of this task, holding only the claim token, cannot take them.
        sending_token = leases.attempt_token(claim_token)

        def record_then_begin(session: Session) -> dict[int, str | None]:
            self._record_accepted(session, accepted)
            verdicts = self._begin_sending(
                session, claim_token, sending_token, [r.delivery_id for r in ready]
            )
            # The tracked links exist before the emails that carry them.
            store_links_of(
                session, {r.delivery_id: r.links for r in ready if verdicts[r.delivery_id] is None}
            )
            return verdicts

        verdicts = retrying(record_then_begin, self.factory)
        accepted.clear()  # committed with the transaction above
        go = [r for r in ready if verdicts[r.delivery_id] is None]
        finished.extend(verdict for verdict in verdicts.values() if verdict is not None)
        envelope_from = self.settings.mail.envelope_from
        for position, item in enumerate(go):
            # The next email's envelope rides behind this one's final dot (nurture.mail.transports): within
            # a group only, whose rows are all marked and re-checked already.
            following = go[position + 1] if position + 1 < len(go) else None
            then = (envelope_from, following.prepared.recipient.email) if following is not None else None
            try:
                finished.append(self._hand_over(sending_token, item, accepted, then))
            except _StopBatch as stop:
                taken = {a.delivery_id for a in accepted}  # the one whose receipt failed was accepted
                rest = [r.delivery_id for r in go[position:] if r.delivery_id not in taken]
                self._undo_sending(sending_token, rest, stop.error, stop.retry_in)
                finished.extend([DEFERRED] * len(rest))
                raise
            except Exception as exc:  # one broken row must not strand the rest of the group
                log.exception("delivery=%s outcome=error", item.delivery_id)
                # Settled now, before the next email: the reaper counts on every row of this attempt before
                # the one on the wire having its outcome written. What the server got is unknown.
                error = f"internal error: {type(exc).__name__}"
                finished.append(self._after_ambiguous(sending_token, item.delivery_id, error))

    def _render(self, claim_token: str, delivery_id: int, prepared: Prepared) -> _Ready | str:
        spec = StepSpec(
            prepared.template,
            prepared.subject,
            prepared.sequence_name,
            prepared.step_number,
            prepared.step_count,
            prepared.track_clicks,
            prepared.track_opens,
            reviewed_by=prepared.review.by,
            reviewed_on=prepared.review.on_text,
        )
        planned = self.plans.message(spec, prepared.recipient, delivery_id, clock.now())
        if planned is not None:  # the step's plan: the same bytes as the full render below, for less
            data, message_id, rows = planned
            return _Ready(delivery_id, prepared, data, message_id, rows)
        try:
            links = LinkRewriter(
                self.settings, delivery_id, clicks=prepared.track_clicks, opens=prepared.track_opens
            )
            _rendered, data, message_id = step_message(
                self.settings,
                self.templates,
                prepared.recipient,
                template=prepared.template,
                sequence_name=prepared.sequence_name,
                step_number=prepared.step_number,
                step_count=prepared.step_count,
                subject=prepared.subject,
                reviewed_by=prepared.review.by,
                reviewed_on=prepared.review.on_text,
                delivery_id=delivery_id,
                date=clock.now(),
                links=links,
            )
        except Exception as exc:  # a template that fails for this subscriber will fail next time too
            log.exception("delivery=%s rendering failed", delivery_id)
            return self._record_failure(
                claim_token, delivery_id, DeliveryStatus.queued, f"render failed: {exc}"
            )
        return _Ready(delivery_id, prepared, data, message_id, list(links.rows.values()))

    def _hand_over(
        self, sending_token: str, item: _Ready, accepted: list[_Accepted], then: Then = None
    ) -> str:
        """One SMTP transaction for a row already marked ``sending`` under ``sending_token``; ``then`` is
        the envelope of the email that follows it in the group."""
        delivery_id, prepared = item.delivery_id, item.prepared
        wait = self.breaker.open_for()  # a failure earlier in this group may have opened it
        if wait > 0:
            metrics.set_circuit_breaker_open(True)
            raise _StopBatch(wait, "circuit breaker open")
        started = time.perf_counter()
        try:
            # The previous email's receipt is confirmed stored before any of this one goes out, but only once
            # the server has answered this one's envelope: the two round trips overlap
            # (nurture.delivery.receipts).
            self.transport.send(
                self.settings.mail.envelope_from,
                prepared.recipient.email,
                item.data,
                before_data=self.receipts.settle,
                then=then,
            )
        except HeldBack as exc:  # this email was not handed over: it goes back to pending with the rest
            log.error(
                "the receipt of the email before delivery=%s could not be written: %s", delivery_id, exc
            )
            raise _StopBatch(self.settings.mail.retry_base_seconds, "database unavailable") from exc
        except ConnectFailure as exc:
            self.breaker.record(ok=False)
            # Nothing was handed over: back to the queue without counting an attempt against the message.
            raise _StopBatch(self.settings.mail.retry_base_seconds, str(exc)) from exc
        except TemporaryFailure as exc:
            self.breaker.record(ok=False)
            return self._after_temporary(sending_token, delivery_id, str(exc), prepared)
        except PermanentFailure as exc:
            self.breaker.record(ok=False)
            return self._after_permanent(sending_token, delivery_id, str(exc))
        except AmbiguousFailure as exc:
            self.breaker.record(ok=False)
            return self._after_ambiguous(sending_token, delivery_id, str(exc))
        self._observe_smtp(time.perf_counter() - started)
        # Before anything else, and before the next email: the receipt is what tells a reaper that this one
        # arrived if the worker dies from here on.
        receipt_error: Exception | None = None
        try:
            self.receipts.write(delivery_id, item.message_id, clock.now())
        except Exception as exc:  # the database is away: no later email may go without its receipt
            receipt_error = exc
        accepted.append(_Accepted(sending_token, delivery_id, item.message_id))  # recorded with the group
        if receipt_error is not None:
            log.error(
                "delivery=%s accepted, but its receipt could not be written: %s", delivery_id, receipt_error
            )
            raise _StopBatch(self.settings.mail.retry_base_seconds, "database unavailable") from receipt_error
        self.breaker.record(ok=True)
        # At debug level: a line per accepted email was a quarter of the worker's CPU (0.09 ms of 0.35), for
        # what the `sent` event already records and the batch's INFO line counts (nurture.tasks). Every
        # other outcome (retry, bounce, unknown, skip) is still one INFO line per email.
        log_transition(
            delivery_id,
            "sent",
            level=logging.DEBUG,
            subscriber=prepared.subscriber_id,
            step=prepared.step_key,
        )
        return "sent"

    # --- phases -------------------------------------------------------------------------------------------

    def _prepare_batch(
        self, session: Session, claim_token: str, delivery_ids: list[int]
    ) -> dict[int, Prepared | str]:
        """Load everything the batch needs in two queries (columns, not objects), renewing its lease if the
        wait in the queue used up half of it."""
        # Core statements on the session's connection: the ORM's execution layer was a sixth of the
        # sender's CPU, for statements that load columns, not objects.
        connection = session.connection()
        rows = {row.id: row for row in connection.execute(_BATCH_ROWS, {"ids": delivery_ids})}
        leases_left = [row.lease_until for row in rows.values() if row.lease_until is not None]
        if leases_left and DELIVERIES.lease_half_gone(
            session, min(leases_left), self.settings.broker.lease_seconds
        ):
            DELIVERIES.renew(
                session, claim_token, delivery_ids, lease_seconds=self.settings.broker.lease_seconds
            )
        versions = {
            version.id: (
                Policy.of(version.definition),
                version.step_count,
                Review.of(version.definition),
                experiments_of(version.definition),
                conditions_of(version.definition),
            )
            for version in connection.execute(_VERSIONS, {"ids": list({r.version_id for r in rows.values()})})
        }
        result: dict[int, Prepared | str] = {}
        assigned: dict[int, str] = {}  # variants chosen now, written below so a resend reads the same
        conditional: list[tuple[int, Condition]] = []  # checked together below, now that they are due
        for delivery_id in delivery_ids:
            row = rows.get(delivery_id)
            if row is None:
                result[delivery_id] = "gone"
                continue
            if row.status != DeliveryStatus.queued or row.claim_token != claim_token:
                result[delivery_id] = "not-claimed"  # reaped and re-claimed, or handled by a redelivered task
                continue
            reason = reason_for(
                row.subscriber_status, bool(row.suppressed), row.enrollment_status, row.sequence_status
            )
            if reason is not None:
                result[delivery_id] = self._skip(session, delivery_id, row.subscriber_id, claim_token, reason)
                continue
            policy, step_count, review, experiments, conditions = versions[row.version_id]
            if row.step_key in conditions:
                conditional.append((delivery_id, conditions[row.step_key]))
            template, subject, variant = row.template, row.subject, row.variant
            experiment = experiments.get(row.step_key)
            if experiment is not None:
                chosen = experiment.resolve(variant, row.public_id, row.sequence_slug, row.step_key)
                if variant is None:
                    assigned[delivery_id] = chosen.key
                variant = chosen.key
                template = chosen.template or template
                subject = chosen.subject if chosen.subject is not None else subject
            result[delivery_id] = Prepared(
                recipient=Recipient(row.email, row.first_name, row.public_id),
                subscriber_id=row.subscriber_id,
                step_key=row.step_key,
                template=template,
                sequence_name=row.sequence_name,
                step_number=row.position,
                step_count=step_count,
                subject=subject,
                track_clicks=policy.clicks,
                track_opens=policy.opens,
                review=review,
                variant=variant,
            )
        if conditional:
            facts = facts_of(session, [rows[delivery_id].enrollment_id for delivery_id, _ in conditional])
            for delivery_id, condition in conditional:
                row = rows[delivery_id]
                if not condition.holds(facts[row.enrollment_id]):
                    assigned.pop(delivery_id, None)
                    result[delivery_id] = self._skip(
                        session, delivery_id, row.subscriber_id, claim_token, CONDITION
                    )
        if assigned:
            _record_variants(session, claim_token, assigned)
        return result

    def _skip(
        self, session: Session, delivery_id: int, subscriber_id: int, claim_token: str, reason: str
    ) -> str:
        held = reason == HOLD
        moved = session.execute(
            update(Delivery)
            .where(*DELIVERIES.still_claimed([delivery_id], claim_token))
            .values(
                status=DeliveryStatus.held if held else DeliveryStatus.skipped,
                skip_reason=None if held else reason,
                claim_token=None,
                lease_until=None,
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        if not moved:
            return "not-claimed"
        outcome = HOLD if held else f"skipped:{reason}"
        if not held:
            events.record(
                session, "skipped", subscriber_id=subscriber_id, delivery_id=delivery_id, reason=reason
            )
        log_transition(delivery_id, outcome, subscriber=subscriber_id)
        return outcome

    def _begin_sending(
        self, session: Session, claim_token: str, sending_token: str, delivery_ids: list[int]
    ) -> dict[int, str | None]:
        """Re-check under a share lock on the subscribers, then ``queued -> sending``; None means go ahead."""
        rows = session.connection().execute(_RECHECK, {"ids": delivery_ids}).all()
        verdicts: dict[int, str | None] = dict.fromkeys(delivery_ids, "gone")
        ready: list[int] = []
        for row in rows:
            if row.status == DeliveryStatus.sending and row.claim_token == sending_token:
                verdicts[row.id] = None  # our own earlier commit, whose acknowledgement was lost
                continue
            if row.status != DeliveryStatus.queued or row.claim_token != claim_token:
                verdicts[row.id] = "not-claimed"
                continue
            reason = reason_for(
                row.subscriber_status, bool(row.suppressed), row.enrollment_status, row.sequence_status
            )
            if reason is None:
                ready.append(row.id)
            else:
                verdicts[row.id] = self._skip(session, row.id, row.subscriber_id, claim_token, reason)
        if ready:
            moved_ids = DELIVERIES.begin(
                session,
                claim_token,
                ready,
                attempt=sending_token,
                lease_seconds=self.settings.broker.lease_seconds,
            )
            for delivery_id in ready:
                verdicts[delivery_id] = None if delivery_id in moved_ids else "not-claimed"
        return verdicts

    def _finish(
        self, session: Session, token: str, delivery_id: int, from_status: str, /, **values: object
    ) -> bool:
        """Record an outcome, only while the row is still ours (same token, expected status)."""
        return bool(DELIVERIES.finish(session, token, [delivery_id], from_status, **values))

    def _record_accepted(self, session: Session, accepted: list[_Accepted]) -> None:
        """Record a group's accepted emails as sent (one statement per sending token on PostgreSQL)."""
        try:
            # Before the record deletes the group's receipts: the last one must not land after it.
            self.receipts.settle()
        except Exception as exc:  # recording them as sent makes that receipt unneeded: go on
            log.warning("the last receipt of a group could not be written, recording the group: %s", exc)
        sent_at = clock.now()
        by_token: dict[str, dict[int, str]] = {}
        for item in accepted:
            by_token.setdefault(item.token, {})[item.delivery_id] = item.message_id
        for token, message_ids in by_token.items():
            _record_sent(session, token, message_ids, sent_at)

    def _undo_sending(self, token: str, delivery_ids: list[int], error: str, retry_in: float) -> None:
        """Rows marked ``sending`` but never handed over go back to pending, due again in ``retry_in``
        seconds, without counting the attempt. (The group's rows already accepted carry the same token and
        status until the next transaction records them, hence the explicit ids.)"""

        def work(session: Session) -> None:
            DELIVERIES.release(
                session, token, delivery_ids, after_seconds=retry_in, from_status=DeliveryStatus.sending,
                error=error,
            )  # fmt: skip

        retrying(work, self.factory)

    def _defer(self, claim_token: str, delivery_ids: list[int], retry_in: float) -> None:
        """Hand claimed rows back unsent, due again in ``retry_in`` seconds (nothing counted against them)."""

        def work(session: Session) -> None:
            DELIVERIES.release(session, claim_token, delivery_ids, after_seconds=retry_in)

        retrying(work, self.factory)
        log.warning(
            "deferred %d deliveries for %.0fs: SMTP unreachable or breaker open", len(delivery_ids), retry_in
        )

    def _record_failure(self, token: str, delivery_id: int, from_status: str, error: str) -> str:
        def work(session: Session) -> None:
            if self._finish(
                session,
                token,
                delivery_id,
                from_status,
                status=DeliveryStatus.failed,
                attempts=Delivery.attempts + (1 if from_status == DeliveryStatus.queued else 0),
                last_error=error,
                claim_token=None,
            ):
                events.record(session, "failed", delivery_id=delivery_id, error=error)

        retrying(work, self.factory)
        log_transition(delivery_id, "failed", error=error.split(":", 1)[0])
        return "failed"

    def _after_temporary(self, token: str, delivery_id: int, error: str, prepared: Prepared) -> str:
        def work(session: Session) -> tuple[str, int]:
            delivery = session.get(Delivery, delivery_id, populate_existing=True)
            if delivery is None:
                return "gone", 0
            if delivery.attempts >= self.settings.mail.max_attempts:
                return "exhausted", delivery.attempts
            retry_at = self._retry_time(session, delivery)
            recorded = self._finish(
                session,
                token,
                delivery_id,
                DeliveryStatus.sending,
                status=DeliveryStatus.pending,
                due_at=retry_at,
                last_error=error,
                claim_token=None,
            )
            if recorded:
                events.record(
                    session,
                    "retry",
                    delivery_id=delivery_id,
                    error=error,
                    attempt=delivery.attempts,
                    retry_at=retry_at.isoformat(),
                )
            return "retry", delivery.attempts

        outcome, attempts = retrying(work, self.factory)
        if outcome == "exhausted":
            return self._record_failure(token, delivery_id, DeliveryStatus.sending, f"gave up: {error}")
        log_transition(delivery_id, outcome, subscriber=prepared.subscriber_id, attempt=attempts)
        return outcome

    def _retry_time(self, session: Session, delivery: Delivery) -> datetime:
        backoff = leases.retry_backoff(self.settings, delivery.attempts)
        # The send window and holidays still apply (a 4xx at 11:29 must not land at 23:00 local), unless the
        # step skips the window: nurture.sequences.timetable decides, as for every other due time.
        return timetable.retry_time(delivery, clock.db_now(session) + backoff)

    def _after_permanent(self, token: str, delivery_id: int, error: str) -> str:
        def work(session: Session) -> None:
            delivery = session.get(Delivery, delivery_id)
            if delivery is None:
                return
            self._finish(
                session,
                token,
                delivery_id,
                DeliveryStatus.sending,
                status=DeliveryStatus.failed,
                last_error=error,
                claim_token=None,
            )
            suppress(session, delivery.subscriber.email, "hard-bounce", error)
            cancel_open_deliveries(session, delivery.subscriber_id, "suppressed")
            events.record(
                session, "bounced", subscriber_id=delivery.subscriber_id, delivery_id=delivery_id, error=error
            )

        retrying(work, self.factory)
        log_transition(delivery_id, "bounced", error=error.split(":", 1)[0])
        return "failed"

    def _after_ambiguous(self, token: str, delivery_id: int, error: str) -> str:
        resend = self.settings.mail.ambiguous_policy == "resend"

        def work(session: Session) -> None:
            self._finish(
                session,
                token,
                delivery_id,
                DeliveryStatus.sending,
                status=DeliveryStatus.pending if resend else DeliveryStatus.ambiguous,
                last_error=error,
                claim_token=None,
            )
            events.record(
                session, "ambiguous", delivery_id=delivery_id, error=error,
                resolution="resent" if resend else "held",
            )  # fmt: skip

        retrying(work, self.factory)
        log_transition(delivery_id, "ambiguous", resend=resend)
        return "ambiguous"
