"""Subscribers as a list staff can work with: filtered, sorted, one page at a time, each person with the step
they stand at and when their next email is due.

The database filters, sorts, counts and pages; only the rows of one page (at most ``MAX_PER_PAGE``) are
loaded, then one more query finds where each of them stands. "Where they stand" follows
:mod:`nurture.sequences.results`: a live enrollment's earliest open delivery (pending, queued, sending or
held).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.orm import Session

from nurture.core import clock
from nurture.models import Delivery, DeliveryStatus, Enrollment, EnrollmentStatus, Sequence, Step, Subscriber
from nurture.sequences.results import OPEN, WAITING
from nurture.subscribers.suppression import subscriber_is_suppressed

PER_PAGE = (25, 50, 100)
MAX_PER_PAGE = PER_PAGE[-1]
# Status filters: a subscriber's own status, or one of these views across tables.
STATUSES = ("pending", "active", "unsubscribed", "paused", "held", "suppressed")
SORTS = {"email": "email", "created": "joined", "next": "next email", "status": "status"}
SORT_CHOICES = (  # (query value, what the sort menu says)
    ("-created", "newest first"),
    ("created", "oldest first"),
    ("next", "next email, soonest first"),
    ("-next", "next email, latest first"),
    ("email", "email, A to Z"),
    ("-email", "email, Z to A"),
    ("status", "status, A to Z"),
    ("-status", "status, Z to A"),
)
LIVE = (EnrollmentStatus.active, EnrollmentStatus.paused)


class FilterError(ValueError):
    """A filter the list cannot apply (unknown status or sort); the message says what would do."""


@dataclass(frozen=True)
class Filters:
    q: str = ""
    status: str = ""
    sequence: str = ""
    step: str = ""
    sort: str = "created"
    descending: bool = True
    page: int = 1
    per_page: int = PER_PAGE[0]

    @classmethod
    def read(cls, params: dict[str, str]) -> Filters:
        """From query parameters, validated: anything unknown is a FilterError, never a 500."""
        status = params.get("status", "").strip()
        if status and status not in STATUSES:
            raise FilterError(f"status must be one of {', '.join(STATUSES)}")
        sort = params.get("sort", "-created").strip() or "-created"
        descending = sort.startswith("-")
        sort = sort.lstrip("-")
        if sort not in SORTS:
            raise FilterError(f"sort must be one of {', '.join(SORTS)} (with - for descending)")
        try:
            page = max(1, int(params.get("page", "1") or 1))
            per_page = int(params.get("per", str(PER_PAGE[0])) or PER_PAGE[0])
        except ValueError:
            raise FilterError("page and per must be whole numbers") from None
        if per_page not in PER_PAGE:
            raise FilterError(f"per must be one of {', '.join(map(str, PER_PAGE))}")
        sequence = params.get("sequence", "").strip()[:64]
        return cls(
            q=params.get("q", "").strip()[:200],
            status=status,
            sequence=sequence,
            step=params.get("step", "").strip()[:64] if sequence else "",
            sort=sort,
            descending=descending,
            page=min(page, 100_000),
            per_page=per_page,
        )

    def query(self, **changes: Any) -> dict[str, str]:
        """These filters as query parameters, with ``changes``; defaults left out."""
        values = {
            "q": self.q,
            "status": self.status,
            "sequence": self.sequence,
            "step": self.step,
            "sort": ("-" if self.descending else "") + self.sort,
            "per": str(self.per_page),
            "page": str(self.page),
        }
        values.update({key: str(value) for key, value in changes.items()})
        defaults = {"sort": "-created", "per": str(PER_PAGE[0]), "page": "1"}
        return {key: value for key, value in values.items() if value and defaults.get(key) != value}


@dataclass
class Row:
    id: int
    email: str
    first_name: str | None
    status: str
    created_at: datetime
    paused: bool
    next_due: datetime | None
    standing: list[tuple[str, str]] = field(default_factory=list)  # (sequence slug, step key) per live one


@dataclass
class Listing:
    rows: list[Row]
    total: int
    filters: Filters

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.filters.per_page))


def _next_due(sequence_id: int | None) -> Any:
    """Per subscriber, the earliest due time of an email still waiting to go (in one sequence, if given)."""
    query = (
        select(Delivery.subscriber_id.label("subscriber_id"), func.min(Delivery.due_at).label("due_at"))
        .where(Delivery.status.in_(WAITING))
        .group_by(Delivery.subscriber_id)
    )
    if sequence_id is not None:
        query = query.join(Enrollment, Enrollment.id == Delivery.enrollment_id).where(
            Enrollment.sequence_id == sequence_id
        )
    return query.subquery()


def _at_step(sequence_id: int, key: str) -> Any:
    """Subscribers whose live enrollment in the sequence stands at the step with this key."""
    standing = (
        select(
            Enrollment.subscriber_id.label("subscriber_id"),
            Enrollment.version_id.label("version_id"),
            func.min(Step.position).label("position"),
        )
        .join(Delivery, Delivery.enrollment_id == Enrollment.id)
        .join(Step, Step.id == Delivery.step_id)
        .where(Enrollment.sequence_id == sequence_id, Enrollment.status.in_(LIVE), Delivery.status.in_(OPEN))
        .group_by(Enrollment.id, Enrollment.subscriber_id, Enrollment.version_id)
        .subquery()
    )
    return (
        select(standing.c.subscriber_id)
        .join(Step, and_(Step.version_id == standing.c.version_id, Step.position == standing.c.position))
        .where(Step.key == key)
    )


def listing(session: Session, filters: Filters) -> Listing:
    sequence = None
    if filters.sequence:
        sequence = session.scalar(select(Sequence).where(Sequence.slug == filters.sequence))
        if sequence is None:
            raise FilterError(f"there is no sequence {filters.sequence!r}")
    due = _next_due(sequence.id if sequence else None)
    query = select(Subscriber, due.c.due_at).outerjoin(due, due.c.subscriber_id == Subscriber.id)
    conditions: list[Any] = []
    if filters.q:
        like = f"%{filters.q.lower().replace('%', '').replace('_', '')}%"
        conditions.append(or_(Subscriber.email.like(like), func.lower(Subscriber.first_name).like(like)))
    now = clock.now()
    if filters.status in ("pending", "active", "unsubscribed"):
        conditions.append(Subscriber.status == filters.status)
    elif filters.status == "paused":
        conditions.append(Subscriber.paused_until > now)
    elif filters.status == "held":
        conditions.append(
            exists().where(
                Delivery.subscriber_id == Subscriber.id, Delivery.status == DeliveryStatus.ambiguous
            )
        )
    elif filters.status == "suppressed":
        conditions.append(subscriber_is_suppressed())
    if sequence is not None:
        if filters.step:
            conditions.append(Subscriber.id.in_(_at_step(sequence.id, filters.step)))
        else:
            conditions.append(
                exists().where(
                    Enrollment.subscriber_id == Subscriber.id, Enrollment.sequence_id == sequence.id
                )
            )
    if conditions:
        query = query.where(*conditions)
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    column = {
        "email": Subscriber.email,
        "created": Subscriber.created_at,
        "next": due.c.due_at,
        "status": Subscriber.status,
    }[filters.sort]
    ordered = column.desc() if filters.descending else column.asc()
    if filters.sort == "next":  # people with nothing waiting go last either way
        ordered = ordered.nulls_last()
    query = query.order_by(ordered, Subscriber.id.desc() if filters.descending else Subscriber.id.asc())
    page = min(filters.page, max(1, -(-total // filters.per_page)))
    offset = (page - 1) * filters.per_page
    rows = [
        Row(
            id=subscriber.id,
            email=subscriber.email,
            first_name=subscriber.first_name,
            status=subscriber.status,
            created_at=subscriber.created_at,
            paused=subscriber.paused_until is not None and subscriber.paused_until > now,
            next_due=due_at if isinstance(due_at, datetime) or due_at is None else None,
        )
        for subscriber, due_at in session.execute(query.limit(filters.per_page).offset(offset))
    ]
    _fill_standing(session, rows, sequence.id if sequence else None)
    if page != filters.page:
        filters = Filters(**{**filters.__dict__, "page": page})
    return Listing(rows, total, filters)


def _fill_standing(session: Session, rows: list[Row], sequence_id: int | None) -> None:
    """Each row's live enrollments with the step they stand at (one query for the whole page)."""
    if not rows:
        return
    by_id = {row.id: row for row in rows}
    query = (
        select(Delivery.subscriber_id, Sequence.slug, Step.key, Step.position, Enrollment.id)
        .join(Enrollment, Enrollment.id == Delivery.enrollment_id)
        .join(Sequence, Sequence.id == Enrollment.sequence_id)
        .join(Step, Step.id == Delivery.step_id)
        .where(
            Delivery.subscriber_id.in_(list(by_id)),
            Delivery.status.in_(OPEN),
            Enrollment.status.in_(LIVE),
        )
        .order_by(Delivery.subscriber_id, Enrollment.id, Step.position)
    )
    if sequence_id is not None:
        query = query.where(Enrollment.sequence_id == sequence_id)
    seen: set[int] = set()
    for subscriber_id, slug, key, _position, enrollment_id in session.execute(query):
        if enrollment_id in seen:
            continue
        seen.add(enrollment_id)
        by_id[subscriber_id].standing.append((slug, key))


def step_keys(session: Session, slug: str) -> list[str]:
    """The current version's step keys of a sequence, for the step filter."""
    sequence = session.scalar(select(Sequence).where(Sequence.slug == slug))
    if sequence is None or sequence.current_version is None:
        return []
    return [step.key for step in sequence.current_version.steps]
