"""The Alembic migrations: they build the schema the models describe, on both backends."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.exc import IntegrityError

from gpuq.scheduler.db.models import Base, GpuAllocation, Job, JobSpec
from gpuq.scheduler.db.session import alembic_config, make_engine, make_sessionmaker, upgrade
from tests.scheduler.rows import add_job, add_node, owner


@pytest.fixture
def empty_engine(empty_db_url: str) -> Iterator[Engine]:
    engine = make_engine(empty_db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A database already at the newest migration (copied from the session's template)."""
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def head() -> str:
    cfg = alembic_config("sqlite://")
    rev = ScriptDirectory.from_config(cfg).get_current_head()
    assert rev is not None
    return rev


def current(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def downgrade(engine: Engine, to: str) -> None:
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, to)


def schema(engine: Engine) -> dict[str, Any]:
    """Everything the inspector says about each table, to compare two states."""
    insp = inspect(engine)
    out: dict[str, Any] = {}
    for table in sorted(insp.get_table_names()):
        out[table] = {
            "columns": [(c["name"], str(c["type"]), c["nullable"])
                        for c in insp.get_columns(table)],
            "pk": insp.get_pk_constraint(table)["constrained_columns"],
            "fks": sorted((f["name"] or "", tuple(f["constrained_columns"]), f["referred_table"])
                          for f in insp.get_foreign_keys(table)),
            "uniques": sorted((u["name"] or "", tuple(u["column_names"]))
                              for u in insp.get_unique_constraints(table)),
            "indexes": sorted((i["name"] or "", tuple(i["column_names"]), bool(i["unique"]))
                              for i in insp.get_indexes(table)),
        }
    return out


def test_upgrade_builds_every_table_from_an_empty_database(empty_engine: Engine) -> None:
    assert inspect(empty_engine).get_table_names() == []
    upgrade(empty_engine)
    assert set(inspect(empty_engine).get_table_names()) == \
        set(Base.metadata.tables) | {"alembic_version"}
    assert current(empty_engine) == head()


def test_models_and_migrations_agree(empty_engine: Engine) -> None:
    upgrade(empty_engine)
    with empty_engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == [], "the models changed without a migration (alembic revision " \
        f"--autogenerate): {diff}"


def test_upgrading_twice_changes_nothing(empty_engine: Engine) -> None:
    upgrade(empty_engine)
    with make_sessionmaker(empty_engine)() as s, s.begin():
        job_id = add_job(s).id
    before = schema(empty_engine)

    upgrade(empty_engine)

    assert schema(empty_engine) == before
    assert current(empty_engine) == head()
    with make_sessionmaker(empty_engine)() as s:
        assert s.get(Job, job_id) is not None


def test_downgrade_to_base_and_up_again(empty_engine: Engine) -> None:
    upgrade(empty_engine)
    built = schema(empty_engine)
    downgrade(empty_engine, "base")
    assert set(inspect(empty_engine).get_table_names()) <= {"alembic_version"}
    assert current(empty_engine) is None
    upgrade(empty_engine)
    assert schema(empty_engine) == built


# --- the constraints the scheduler's safety rests on ------------------------------------


def test_a_gpu_cannot_be_allocated_twice(engine: Engine) -> None:
    sessions = make_sessionmaker(engine)
    with sessions() as s, s.begin():
        n1, n2 = add_node(s, "n1", gpus=2), add_node(s, "n2", gpus=2)
        first, second = add_job(s), add_job(s)
        s.add(GpuAllocation(job_id=first.id, node_id=n1.id, gpu_index=0))
        ids = n1.id, n2.id, first.id, second.id
    n1_id, n2_id, first_id, second_id = ids

    with sessions() as s, s.begin():  # the same index on another node, another index: fine
        s.add(GpuAllocation(job_id=second_id, node_id=n2_id, gpu_index=0))
        s.add(GpuAllocation(job_id=second_id, node_id=n1_id, gpu_index=1))

    with sessions() as s:
        s.begin()
        s.add(GpuAllocation(job_id=second_id, node_id=n1_id, gpu_index=0))
        with pytest.raises(IntegrityError):
            s.flush()
        s.rollback()

    with sessions() as s:
        held = {(a.node_id, a.gpu_index): a.job_id for a in s.scalars(select(GpuAllocation))}
    assert held == {(n1_id, 0): first_id, (n2_id, 0): second_id, (n1_id, 1): second_id}


def test_a_gpu_taken_by_a_racing_transaction_is_refused(engine: Engine) -> None:
    """Two replicas that both think GPU 0 is free: the second commit fails."""
    sessions = make_sessionmaker(engine)
    with sessions() as s, s.begin():
        node = add_node(s, "n1", gpus=1)
        a, b = add_job(s), add_job(s)
        node_id, a_id, b_id = node.id, a.id, b.id

    with sessions() as s, s.begin():
        s.add(GpuAllocation(job_id=a_id, node_id=node_id, gpu_index=0))
    with sessions() as s, pytest.raises(IntegrityError), s.begin():
        s.add(GpuAllocation(job_id=b_id, node_id=node_id, gpu_index=0))


def test_idempotency_keys_are_unique_per_user_and_null_is_not_a_key(engine: Engine) -> None:
    sessions = make_sessionmaker(engine)
    with sessions() as s, s.begin():
        owner(s, "bob")
        for _ in range(3):
            add_job(s, idempotency_key=None)
        add_job(s, idempotency_key="k1")
        add_job(s, user="bob", idempotency_key="k1")  # another user may use the same key

    with sessions() as s, pytest.raises(IntegrityError), s.begin():
        add_job(s, idempotency_key="k1")

    with sessions() as s:
        keys = sorted((j.user_id, j.idempotency_key or "") for j in s.scalars(select(Job)))
        assert len(keys) == 5
        assert s.execute(text("SELECT count(*) FROM jobs WHERE idempotency_key IS NULL")) \
            .scalar() == 3


def test_a_downgrade_puts_an_arrays_shared_spec_back_in_its_jobs(engine: Engine) -> None:
    """0009 stores an array's spec once (``job_specs``); going back to 0008 copies it into
    each element's row, the element's own variables over the shared ones."""
    sessions = make_sessionmaker(engine)
    with sessions() as s, s.begin():
        spec = JobSpec(command=["python", "sweep.py"], script=None,
                       environment={"A": "shared", "GPUQ_ARRAY_TASK_COUNT": "2"})
        s.add(spec)
        s.flush()
        elements = []
        for i in (0, 1):
            job = add_job(s, spec_id=spec.id)
            job.command, job.environment = None, {"GPUQ_ARRAY_TASK_ID": str(i)}
            elements.append(job.id)
        plain = add_job(s)
        plain.environment = {"A": "own"}
        s.flush()
        plain_id = plain.id
    downgrade(engine, "0008")
    assert "job_specs" not in inspect(engine).get_table_names()
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(
            select(Job.__table__.c.id, Job.__table__.c.command, Job.__table__.c.environment))}
    for i, job_id in enumerate(elements):
        assert rows[job_id].command == ["python", "sweep.py"]
        assert rows[job_id].environment == {"A": "shared", "GPUQ_ARRAY_TASK_COUNT": "2",
                                            "GPUQ_ARRAY_TASK_ID": str(i)}
    assert rows[plain_id].command == ["true"]
    assert rows[plain_id].environment == {"A": "own"}
    upgrade(engine)
    assert current(engine) == head()
