"""nurture.core.db.InParameter: one statement built once, run with lists of any length, on both databases."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from nurture.core.db import InParameter, transaction
from nurture.models import Subscriber
from nurture.subscribers.enrollment import add_subscriber

_BY_IDS = select(Subscriber.email).where(InParameter(Subscriber.id, "ids")).order_by(Subscriber.id)


def test_it_is_one_array_parameter_on_postgresql_and_an_expanding_in_elsewhere() -> None:
    on_postgresql = str(_BY_IDS.compile(dialect=postgresql.dialect()))
    on_sqlite = str(_BY_IDS.compile(dialect=sqlite.dialect()))
    assert "subscribers.id = ANY (%(ids)s::INTEGER[])" in on_postgresql
    assert "subscribers.id IN (__[POSTCOMPILE_ids])" in on_sqlite
    assert "= 1" not in on_sqlite  # not taken for a boolean column standing alone


def test_the_same_statement_selects_exactly_the_ids_given_each_time(
    factory: sessionmaker[Session],
) -> None:
    with transaction(factory) as session:
        ids = [add_subscriber(session, f"reader{n}@example.com")[0].id for n in range(5)]
    with transaction(factory) as session:
        for chosen in ([ids[0]], ids[1:4], ids, [], [ids[4], 10**9]):
            emails = list(session.scalars(_BY_IDS, {"ids": chosen}))
            expected = [f"reader{ids.index(i)}@example.com" for i in sorted(chosen) if i in ids]
            assert emails == expected
