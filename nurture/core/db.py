"""Database plumbing: the declarative base, a UTC datetime column type, engines and sessions."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from sqlalchemy import ARRAY, DateTime, Engine, MetaData, any_, bindparam, create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.sqltypes import NULLTYPE
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import TypeDecorator

from nurture.core.config import get_settings

T = TypeVar("T")

# Stable constraint names so Alembic migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Stores instants in UTC and always hands back aware UTC datetimes, on SQLite as on PostgreSQL.

    SQLite has no time zone type, so values are stored naive-in-UTC there; a naive value from the application
    is a bug, and is refused rather than guessed.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _configure_sqlite(engine: Engine) -> None:
    # WAL lets the web process read while a worker writes; the busy timeout makes concurrent writers queue
    # instead of failing with "database is locked"; foreign keys are off by default in SQLite.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let SQLAlchemy's "begin" event issue BEGIN itself
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # IMMEDIATE takes the write lock up front, so two writers never deadlock upgrading a read lock.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


_engines: dict[str, Engine] = {}


def engine_for(url: str) -> Engine:
    """One engine (and connection pool) per URL per process, its pool sized by the settings."""
    if url not in _engines:
        pool: dict[str, Any] = {}
        if not url.startswith("sqlite"):
            settings = get_settings()
            pool = {
                "pool_size": settings.database.db_pool_size,
                "max_overflow": settings.database.db_max_overflow,
                "pool_timeout": settings.database.db_pool_timeout,
            }
        _engines[url] = make_engine(url, **pool)
    return _engines[url]


def dispose_engines(*, close: bool = True) -> None:
    """Drop every pooled connection; ``close=False`` after fork(), where the parent still owns them."""
    for engine in _engines.values():
        engine.dispose(close=close)
    _engines.clear()


def get_engine() -> Engine:
    return engine_for(normalise_url(get_settings().resolved_database_url))


def normalise_url(url: str) -> str:
    """Accept the common ``postgres://`` and ``postgresql://`` spellings and use the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def session_factory(engine: Engine | None = None) -> sessionmaker[Session]:
    return sessionmaker(bind=engine or get_engine(), expire_on_commit=False)


def engine_of(factory: sessionmaker[Session] | None) -> Engine:
    """The engine ``transaction(factory)`` works on, for hot paths that use Core and no ORM session."""
    return factory.kw["bind"] if factory is not None else get_engine()


def retrying(
    work: Callable[[Session], T], factory: sessionmaker[Session] | None = None, attempts: int = 4
) -> T:
    """Run ``work`` in a transaction, again on a fresh connection if the connection was lost (a restarted or
    failed-over database, a killed backend). ``work`` must be safe to repeat: every state change in nurture is
    a conditional UPDATE that matches nothing the second time."""
    for attempt in range(attempts):
        try:
            with transaction(factory) as session:
                return work(session)
        except DBAPIError as exc:
            if not exc.connection_invalidated or attempt == attempts - 1:
                raise
            time.sleep(0.05 * 2**attempt)
    raise AssertionError("unreachable")


@contextmanager
def transaction(factory: sessionmaker[Session] | None = None) -> Iterator[Session]:
    """A session whose work commits at the end of the block, or rolls back entirely on any error."""
    session = (factory or session_factory())()
    try:
        with session.begin():
            yield session
    finally:
        session.close()


def on_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def among(session: Session, column: Any, values: list[Any]) -> Any:
    """``column IN values``; on PostgreSQL as ``= ANY(array)``, one parameter instead of thousands."""
    if on_postgresql(session):
        return column == any_(bindparam(None, values, type_=ARRAY(column.type)))
    return column.in_(values)


class InParameter(ColumnElement[bool]):
    """``column IN (:name)`` for a statement built once, whose list of values comes with each execution.

    On PostgreSQL it compiles to ``column = ANY(:name)``, one array parameter: an "expanding" IN has to be
    rewritten for the length of every list it is given, which was a twentieth of the sender's CPU for the
    statements it runs per group of emails. Elsewhere it is the expanding IN.
    """

    inherit_cache = True
    # Not Boolean: SQLite would get "IN (...) = 1", the form for a boolean column standing alone.
    type = NULLTYPE
    _traverse_internals: ClassVar[list[tuple[str, Any]]] = [
        ("column", InternalTraversal.dp_clauseelement),
        ("name", InternalTraversal.dp_string),
    ]

    def __init__(self, column: Any, name: str) -> None:
        self.column = column
        self.name = name


@compiles(InParameter)
def _expanding_in(element: InParameter, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.column.in_(bindparam(element.name, expanding=True)), **kw)


@compiles(InParameter, "postgresql")
def _any_of_array(element: InParameter, compiler: SQLCompiler, **kw: Any) -> str:
    array = bindparam(element.name, type_=ARRAY(element.column.type))
    return compiler.process(element.column == any_(array), **kw)
