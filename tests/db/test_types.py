"""``UTCDateTime``: aware times keep their instant on every backend; naive times are refused."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session

from gpuq.scheduler.db.models import Node
from gpuq.scheduler.db.session import make_engine, make_sessionmaker
from tests.scheduler.rows import add_node

PARIS_SUMMER = timezone(timedelta(hours=2))
NEW_YORK = timezone(timedelta(hours=-5))


@pytest.fixture
def session(db_url: str) -> Iterator[Session]:
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as s:
        yield s
    engine.dispose()


def test_a_time_in_another_zone_comes_back_as_the_same_instant(session: Session) -> None:
    local = datetime(2026, 6, 1, 12, 0, tzinfo=PARIS_SUMMER)
    with session.begin():
        add_node(session, "n1", heartbeat=local)
    session.expunge_all()
    got = session.scalar(select(Node.last_heartbeat_at).where(Node.name == "n1"))
    assert got == local
    assert got.astimezone(UTC) == datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
    assert got.utcoffset() is not None


def test_comparisons_in_sql_use_the_instant(session: Session) -> None:
    # 10:00 UTC stored; asked "before 06:30 in New York (11:30 UTC)?" - yes.
    with session.begin():
        add_node(session, "n1", heartbeat=datetime(2026, 6, 1, 10, 0, tzinfo=UTC))
        add_node(session, "n2", heartbeat=datetime(2026, 6, 1, 12, 0, tzinfo=UTC))
    deadline = datetime(2026, 6, 1, 6, 30, tzinfo=NEW_YORK)
    stale = session.scalars(select(Node.name).where(Node.last_heartbeat_at < deadline)).all()
    assert stale == ["n1"]


def test_a_naive_time_is_refused(session: Session) -> None:
    with pytest.raises(StatementError, match="naive datetime"), session.begin():
        add_node(session, "n1", heartbeat=datetime(2026, 6, 1, 12, 0))
