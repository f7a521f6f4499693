"""The package's architecture, checked on its source: who may import what, and who writes jobs.

Every ``.py`` file of ``gpuq/``, ``scheduler/``, ``worker/`` and ``cli/`` (not
``scheduler/db/migrations/``) is parsed, never imported; every import statement counts,
wherever it is (module level, inside a function, under ``if TYPE_CHECKING:``).
``tests/importgraph.py`` says how a module and an import are found and resolved.

The rules (each a ``check_*`` function that returns one line per violation, ``file:line``
first):

1. ``check_policy_core``: the policy core ``gpuq.scheduler.policy`` is pure: no database,
   web, broker, network, process, thread, random or clock module (:data:`IMPURE`), no gpuq
   module outside ``gpuq.scheduler.policy`` and ``gpuq.wire``, and no clock read
   (:data:`CLOCK_READS`, e.g. ``datetime.now``): the time is the caller's.
2. ``check_lifecycle_rules``: the job state machine ``gpuq.scheduler.lifecycle.rules`` is
   pure too, more strictly: it imports only :data:`RULES_MAY_IMPORT` and reads no clock.
3. ``check_wire``: ``gpuq.wire`` imports only pydantic, the standard library and itself.
4. ``check_cli_and_worker``: the CLI and the worker import neither the server nor the
   database (anything in ``gpuq.scheduler``; :data:`SERVER_SIDE`), not even through the
   shared modules they import (``gpuq.config``, ...). :data:`CLI_STARTS_SERVER` lists the
   exceptions, each inside a function.
5. ``check_scheduler_layers``: inside ``gpuq.scheduler`` a module imports its own layer and
   those below it (:data:`LAYERS`), the foundation modules (:data:`FOUNDATION`) from any
   layer; the simulator (``gpuq.scheduler.sim``) imports the policy core only, and no layer
   imports it. Nothing in the scheduler imports the CLI or the worker.
6. ``check_job_writes``: only ``gpuq.scheduler.lifecycle.writes`` writes a job's state or a
   job event (``importgraph.job_state_writes`` says what counts).
7. ``check_no_cycles``: no import circle anywhere in the package.

Each rule has a test on the real source and tests on small synthetic source trees that
break it, so that a rule that can no longer fail is noticed.
"""

from __future__ import annotations

import sys
import textwrap
from collections import deque
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.importgraph import (
    EVENT,
    ROOTS,
    Import,
    Package,
    a_cycle,
    in_package,
    job_state_writes,
    references,
    strongly_connected,
)

POLICY = "gpuq.scheduler.policy"
RULES = "gpuq.scheduler.lifecycle.rules"
WRITES = "gpuq.scheduler.lifecycle.writes"
MODELS = "gpuq.scheduler.db.models"
WIRE = "gpuq.wire"
SCHEDULER = "gpuq.scheduler"
SIM = "gpuq.scheduler.sim"
CLI = "gpuq.cli"
WORKER = "gpuq.worker"

#: Top-level modules that do I/O, keep time, spawn, or draw random numbers. The policy core
#: imports none of them. The brief's list, plus alembic, psycopg2, multiprocessing,
#: concurrent, secrets, uuid, shutil, tempfile and pathlib (same reasons).
IMPURE = frozenset({
    "sqlalchemy", "alembic", "fastapi", "starlette", "uvicorn", "celery", "kombu", "redis",
    "httpx", "requests", "pynvml", "psycopg", "psycopg2", "prometheus_client",
    "socket", "subprocess", "multiprocessing", "threading", "asyncio", "concurrent",
    "random", "secrets", "uuid", "os", "shutil", "tempfile", "pathlib", "time",
})

#: Attribute references that read the clock (called or passed as a value, e.g.
#: ``default_factory=datetime.now``). Matched on whole trailing components, aliases resolved.
CLOCK_READS = (
    "datetime.now", "datetime.utcnow", "datetime.today", "date.today",
    "time.time", "time.time_ns", "time.monotonic", "time.monotonic_ns",
    "time.perf_counter", "time.perf_counter_ns",
)

#: All that the job state machine may import: pure standard-library modules and gpuq.wire.
RULES_MAY_IMPORT = ("__future__", "dataclasses", "enum", "typing", "datetime",
                    "collections.abc", "re", WIRE)

#: The third-party distributions gpuq.wire may import (besides the standard library).
WIRE_MAY_IMPORT = ("pydantic",)

#: The server and database side, that the CLI and the worker do not import: every module of
#: gpuq.scheduler, and these top-level packages.
SERVER_SIDE = frozenset({"sqlalchemy", "alembic", "fastapi", "starlette", "uvicorn",
                         "psycopg", "psycopg2"})

#: (CLI module, the gpuq.scheduler package it may import) -> why. Only inside a function,
#: so that every other command (and ``gpuq --help``) starts without loading the server.
CLI_STARTS_SERVER: dict[tuple[str, str], str] = {
    ("gpuq.cli.services", "gpuq.scheduler.entry"):
        "`gpuq server` runs the API server and `gpuq up` provisions a local cluster",
    ("gpuq.cli.sim", "gpuq.scheduler.sim"):
        "`gpuq sim` runs the trace simulator in-process",
}

#: The layers of gpuq.scheduler, bottom to top: a module imports its own layer and those
#: below it, never one above.
LAYERS = ("policy", "db", "lifecycle", "domain", "services", "runtime", "api", "entry")

#: Modules any layer may import; they import no other module of gpuq.scheduler but each other.
FOUNDATION = ("clock", "errors", "measures")

#: What gpuq.scheduler.sim may import of gpuq.scheduler besides itself.
SIM_MAY_IMPORT = ("policy",)

#: (importer, imported) -> why: imports that break the layering on purpose. None today.
LAYERING_EXCEPTIONS: dict[tuple[str, str], str] = {}


# -- the checks ------------------------------------------------------------------------------


def _missing(pkg: Package, package: str) -> list[str]:
    """A violation when ``package`` has no module: a check over nothing would pass."""
    if pkg.modules_in(package):
        return []
    return [f"{package}: no such module under {pkg.root}; the rule would check nothing "
            "(update tests/test_architecture.py if it moved)"]


def _clock_reads(pkg: Package, package: str) -> list[str]:
    return [
        f"{pkg.where(m, line)}: {m} reads the clock: `{written}` (take the time as an argument)"
        for m in pkg.modules_in(package)
        for line, written in references(pkg.trees[m], CLOCK_READS)
    ]


def check_policy_core(pkg: Package) -> list[str]:
    """Rule 1: the policy core imports nothing impure and no gpuq module outside the policy
    core and gpuq.wire, and reads no clock."""
    out = _missing(pkg, POLICY)
    for imp in pkg.imports_from(POLICY):
        if imp.top in IMPURE:
            out.append(f"{imp.describe()}: {imp.top} is impure (I/O, a clock, processes, "
                       "threads or randomness)")
        elif imp.top == "gpuq" and not (in_package(imp.name, POLICY) or in_package(imp.name, WIRE)):
            out.append(f"{imp.describe()}: the policy core imports only itself and {WIRE}")
    return out + _clock_reads(pkg, POLICY)


def check_lifecycle_rules(pkg: Package) -> list[str]:
    """Rule 2: the job state machine imports only RULES_MAY_IMPORT and reads no clock."""
    out = _missing(pkg, RULES)
    for imp in pkg.imports_from(RULES):
        if not any(in_package(imp.name, allowed) for allowed in RULES_MAY_IMPORT):
            out.append(f"{imp.describe()}: the job state machine imports only "
                       f"{', '.join(RULES_MAY_IMPORT)}")
    return out + _clock_reads(pkg, RULES)


def check_wire(pkg: Package) -> list[str]:
    """Rule 3: gpuq.wire imports only pydantic, the standard library and gpuq.wire."""
    out = _missing(pkg, WIRE)
    for imp in pkg.imports_from(WIRE):
        allowed = (imp.top in sys.stdlib_module_names or imp.top in WIRE_MAY_IMPORT
                   or in_package(imp.name, WIRE))
        if not allowed:
            out.append(f"{imp.describe()}: {WIRE} imports only pydantic, the standard library "
                       f"and {WIRE}")
    return out


def _cli_exception(imp: Import) -> str | None:
    """Why ``imp`` is an allowed CLI import of the server side, or None."""
    for (module, package), why in CLI_STARTS_SERVER.items():
        if imp.importer == module and imp.target and in_package(imp.target, package):
            return why
    return None


def _server_side(imp: Import) -> bool:
    return imp.top in SERVER_SIDE or (imp.target is not None and in_package(imp.target, SCHEDULER))


def check_cli_and_worker(pkg: Package) -> list[str]:
    """Rule 4: the CLI and the worker import no server-side module, directly or through the
    shared modules (outside the CLI and the worker) that they import; the exceptions of
    CLI_STARTS_SERVER only inside a function."""
    out = _missing(pkg, CLI) + _missing(pkg, WORKER)
    starts = [m for m in pkg.modules if in_package(m, CLI) or in_package(m, WORKER)]
    own = set(starts)
    # Breadth first from every CLI and worker module into the shared modules they reach;
    # `via` keeps the import that first reached each shared module.
    via: dict[str, Import] = {}
    queue = deque(starts)
    while queue:
        module = queue.popleft()
        for imp in (i for i in pkg.imports if i.importer == module):
            if not _server_side(imp):
                if imp.target and imp.target not in own and imp.target not in via:
                    via[imp.target] = imp
                    queue.append(imp.target)
                continue
            why = _cli_exception(imp)
            if why is not None and imp.in_function:
                continue
            if why is not None:
                out.append(f"{imp.describe()}: allowed ({why}) only inside a function, so that "
                           "the other commands do not load the server")
            elif module in own:
                out.append(f"{imp.describe()}: the CLI and the worker do not import the server "
                           "or the database")
            else:
                chain = [via[module]]
                while chain[-1].importer not in own:
                    chain.append(via[chain[-1].importer])
                route = " -> ".join([*(f"{i.importer} ({i.where()})" for i in reversed(chain)),
                                     module])
                out.append(f"{imp.describe()}: {module} is imported by the CLI or the worker: "
                           f"{route}")
    return out


def _layer(module: str) -> str | None:
    """The layer (or FOUNDATION name, or "sim") of a gpuq.scheduler module; "" for the
    gpuq.scheduler package itself; None for a module that belongs to no layer."""
    if module == SCHEDULER:
        return ""
    first = module[len(SCHEDULER) + 1:].partition(".")[0]
    return first if first in (*LAYERS, *FOUNDATION, "sim") else None


def _layering_problem(src: str, dst: str) -> str | None:
    """Why the gpuq.scheduler module ``src`` may not import the gpuq.scheduler module ``dst``."""
    a, b = _layer(src), _layer(dst)
    if a is None or b is None or a == b or b == "":
        return None  # unplaced modules are reported once each, below
    if a == "":
        return f"the package {SCHEDULER} imports none of its modules (every import of one runs it)"
    if a in FOUNDATION:
        return None if b in FOUNDATION else (
            f"{a} is a foundation module: it imports no layer of {SCHEDULER}")
    if b in FOUNDATION:
        return None
    if a == "sim":
        return None if b in SIM_MAY_IMPORT else (
            f"the simulator imports only {', '.join(SIM_MAY_IMPORT)} of {SCHEDULER}")
    if b == "sim":
        return f"no layer of {SCHEDULER} imports the simulator"
    if LAYERS.index(b) > LAYERS.index(a):
        return f"layer {a} imports layer {b}, above it (layers, bottom up: {', '.join(LAYERS)})"
    return None


def check_scheduler_layers(pkg: Package) -> list[str]:
    """Rule 5: gpuq.scheduler's modules import down the layers only (see LAYERS, FOUNDATION,
    SIM_MAY_IMPORT), and never the CLI or the worker."""
    out = _missing(pkg, SCHEDULER)
    for module in pkg.modules_in(SCHEDULER):
        if _layer(module) is None:
            out.append(f"{pkg.where(module, 1)}: {module} is in no layer: put it in one, or "
                       "add its layer to LAYERS in tests/test_architecture.py")
    for imp in pkg.imports_from(SCHEDULER):
        if imp.target is None:
            continue
        if in_package(imp.target, CLI) or in_package(imp.target, WORKER):
            out.append(f"{imp.describe()}: the scheduler does not import the CLI or the worker")
            continue
        if not in_package(imp.target, SCHEDULER):
            continue
        problem = _layering_problem(imp.importer, imp.target)
        if problem and (imp.importer, imp.target) not in LAYERING_EXCEPTIONS:
            out.append(f"{imp.describe()}: {problem}")
    return out


def check_job_writes(pkg: Package) -> list[str]:
    """Rule 6: no gpuq.scheduler module but lifecycle.writes writes a job's state or a job
    event (db.models defines JobEvent: it may name it)."""
    out = _missing(pkg, SCHEDULER)
    for module in pkg.modules_in(SCHEDULER):
        if module == WRITES:
            continue
        for line, kind, what in sorted(set(job_state_writes(pkg.trees[module]))):
            if kind == EVENT and module == MODELS:
                continue
            out.append(f"{pkg.where(module, line)}: {module} writes a {kind}: {what} "
                       f"(only {WRITES} does)")
    return out


def check_no_cycles(pkg: Package) -> list[str]:
    """Rule 7: the import graph (every import counted) has no circle."""
    graph = pkg.graph()
    out = []
    for component in strongly_connected(graph):
        cycle = a_cycle(graph, component)
        steps = [f"{a} -> {b} ({pkg.edge(a, b).where()}: `{pkg.edge(a, b).statement}`)"
                 for a, b in zip(cycle, cycle[1:], strict=False)]
        out.append(f"import circle among {', '.join(component)}:\n      " + "\n      ".join(steps))
    return out


RULES_BY_NAME: dict[str, tuple[str, Callable[[Package], list[str]]]] = {
    "policy_core": ("The policy core imports something impure or reads a clock",
                    check_policy_core),
    "lifecycle_rules": ("The job state machine (lifecycle.rules) imports more than it may",
                        check_lifecycle_rules),
    "wire": ("gpuq.wire imports more than pydantic, the standard library and itself",
             check_wire),
    "cli_and_worker": ("The CLI or the worker imports the server or the database",
                       check_cli_and_worker),
    "scheduler_layers": ("A gpuq.scheduler module imports a layer above its own",
                         check_scheduler_layers),
    "job_writes": (f"A module other than {WRITES} writes a job's state or a job event",
                   check_job_writes),
    "no_cycles": ("The package has import circles", check_no_cycles),
}


# -- on the real source ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def package() -> Package:
    """The repository's own source."""
    return Package()


def test_the_source_is_found(package: Package) -> None:
    """The checks see the whole package: every root, and the modules the rules name."""
    for name in (*ROOTS, POLICY, RULES, WIRE, SIM, MODELS, "gpuq.cli.main"):
        assert name in package.modules, f"{name} not found under {package.root}"
    assert not any("migrations" in m for m in package.modules)
    assert len(package.imports) > 500


@pytest.mark.parametrize("rule", list(RULES_BY_NAME))
def test_rule_holds(package: Package, rule: str) -> None:
    title, check = RULES_BY_NAME[rule]
    violations = check(package)
    if violations:
        pytest.fail(f"{title} ({len(violations)}):\n  " + "\n  ".join(violations), pytrace=False)


# -- each rule can fail ----------------------------------------------------------------------


def synthetic(root: Path, files: dict[str, str | None]) -> Package:
    """A source tree under ``root``: ``files`` (path -> source; None: no such file), and an
    ``__init__.py`` in every folder of the four source roots."""
    for rel, source in files.items():
        if source is None:
            continue
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    for folder in ROOTS.values():
        base = root / folder
        base.mkdir(exist_ok=True)
        for directory in [base, *(p for p in base.rglob("*") if p.is_dir())]:
            (directory / "__init__.py").touch()
    return Package(root)


#: A tree that keeps every rule: the checks find nothing in it.
CLEAN = {
    "gpuq/wire/states.py": """
        from enum import StrEnum
        from pydantic import BaseModel
        class JobState(StrEnum):
            PENDING = "PENDING"
    """,
    "gpuq/config.py": "import os\nfrom pydantic import BaseModel\n",
    "scheduler/clock.py": "from datetime import UTC, datetime\ndef now():\n"
                          "    return datetime.now(UTC)\n",
    "scheduler/errors.py": "class NotFound(Exception):\n    pass\n",
    "scheduler/policy/cycle.py": """
        from dataclasses import dataclass
        from gpuq.scheduler.policy import snapshot
        from gpuq.wire.states import JobState
    """,
    "scheduler/policy/snapshot.py": "import math\n",
    "scheduler/db/models.py": """
        from sqlalchemy.orm import DeclarativeBase
        from gpuq.scheduler.clock import now
        class Job(DeclarativeBase):
            events = relationship("JobEvent")
        class JobEvent(DeclarativeBase):
            table = JobEvent.__table__
    """,
    "scheduler/lifecycle/rules.py": """
        from __future__ import annotations
        from collections.abc import Iterable
        from dataclasses import dataclass
        from typing import TYPE_CHECKING
        from gpuq.wire.states import JobState
        if TYPE_CHECKING:
            from datetime import datetime
    """,
    "scheduler/lifecycle/writes.py": """
        from sqlalchemy import insert, update
        from gpuq.scheduler.db.models import Job, JobEvent
        from gpuq.scheduler.lifecycle import rules
        def apply(session, job, new, now):
            job.state = new
            session.add(JobEvent(job_id=job.id, new_state=new))
            session.execute(update(Job).values(state=new))
    """,
    "scheduler/domain/usage.py": """
        from sqlalchemy import update
        from gpuq.scheduler.db.models import Job
        from gpuq.scheduler.errors import NotFound
        from gpuq.scheduler.policy.snapshot import math
        def decay(session, node, grant):
            node.state = "UP"
            grant.state = "ACTIVE"
            session.execute(update(Node).values(state="DOWN"))
            session.execute(update(Job).values(reason="waiting"))
            return session.get(Job, 1).state
    """,
    "scheduler/services/jobs.py": """
        from gpuq.scheduler.domain import usage
        from gpuq.scheduler.lifecycle import writes
        from gpuq.scheduler.clock import now
    """,
    "scheduler/entry/server.py": "from gpuq.scheduler.services import jobs\nimport uvicorn\n",
    "scheduler/sim/engine.py": "from gpuq.config import os\n"
                               "from gpuq.scheduler.policy import cycle\n",
    "cli/main.py": "import httpx\nfrom gpuq.config import BaseModel\n"
                   "from gpuq.wire import states\n",
    "cli/services.py": """
        def server():
            from gpuq.scheduler.entry.server import jobs
        def sim():
            from gpuq.worker import daemon
    """,
    "cli/sim.py": "def run():\n    from gpuq.scheduler.sim.engine import cycle\n",
    "worker/daemon.py": "from gpuq.worker import reporting\n"
                        "from gpuq.wire.states import JobState\n",
    "worker/reporting.py": "import socket\nfrom gpuq.wire import states\n",
}


def test_a_clean_tree_passes_every_rule(tmp_path: Path) -> None:
    """The checks find nothing in a tree that keeps the rules (no false alarms on the shapes
    the package uses: node and grant states, lazy CLI imports, the writer, the models)."""
    pkg = synthetic(tmp_path, CLEAN)
    for title, check in RULES_BY_NAME.values():
        assert check(pkg) == [], title


def _case(rule: str, files: dict[str, str | None], *expected: str, id: str) -> object:  # noqa: A002
    return pytest.param(rule, files, expected, id=id)


BROKEN = [
    # 1. the policy core
    _case("policy_core", {"scheduler/policy/bad.py": "import math\nimport os.path\n"},
          "scheduler/policy/bad.py:2", "imports os.path", id="policy-imports-os"),
    _case("policy_core",
          {"scheduler/policy/bad.py": "def f():\n    from sqlalchemy import select\n"},
          "scheduler/policy/bad.py:2", "sqlalchemy.select", "inside a function",
          id="policy-imports-sqlalchemy-in-a-function"),
    _case("policy_core", {"scheduler/policy/bad.py": "from typing import TYPE_CHECKING\n"
                                                     "if TYPE_CHECKING:\n    import redis\n"},
          "scheduler/policy/bad.py:3", "under TYPE_CHECKING", id="policy-imports-redis-typing"),
    _case("policy_core", {"scheduler/policy/bad.py": "from gpuq.scheduler import clock\n"},
          "scheduler/policy/bad.py:1", "gpuq.scheduler.clock", id="policy-imports-scheduler"),
    _case("policy_core", {"scheduler/policy/bad.py": "from ..db import models\n",
                          "scheduler/db/models.py": "\n"},
          "scheduler/policy/bad.py:1", "imports gpuq.scheduler.db.models:",
          id="policy-imports-db-relatively"),
    _case("policy_core", {"scheduler/policy/bad.py": "from gpuq.config import Settings\n"},
          "gpuq.config.Settings", id="policy-imports-config"),
    _case("policy_core", {"scheduler/policy/bad.py": "from datetime import datetime\n"
                                                     "def f():\n    return datetime.now()\n"},
          "scheduler/policy/bad.py:3", "reads the clock: `datetime.now`", id="policy-now"),
    _case("policy_core", {"scheduler/policy/bad.py": "import datetime as dt\n"
                                                     "X = dt.datetime.utcnow\n"},
          "scheduler/policy/bad.py:2", "`dt.datetime.utcnow`", id="policy-utcnow-aliased"),
    _case("policy_core", {"scheduler/policy/bad.py": "from datetime import date as D\n"
                                                     "X = D.today()\n"},
          "`D.today`", id="policy-today-aliased"),
    # 2. the job state machine
    _case("lifecycle_rules",
          {"scheduler/lifecycle/rules.py": "from sqlalchemy.orm import Session\n"},
          "scheduler/lifecycle/rules.py:1", "sqlalchemy.orm.Session",
          id="rules-import-sqlalchemy"),
    _case("lifecycle_rules", {"scheduler/lifecycle/rules.py": "import collections\nimport math\n"},
          "rules.py:1: gpuq.scheduler.lifecycle.rules imports collections:",
          "rules.py:2: gpuq.scheduler.lifecycle.rules imports math:",
          id="rules-import-impure-stdlib"),
    _case("lifecycle_rules",
          {"scheduler/lifecycle/rules.py": "from gpuq.scheduler.db.models import Job\n"},
          "gpuq.scheduler.db.models.Job", id="rules-import-models"),
    _case("lifecycle_rules", {"scheduler/lifecycle/rules.py": "from datetime import datetime\n"
                                                              "def f():\n    datetime.now()\n"},
          "rules.py:3", "reads the clock", id="rules-read-clock"),
    _case("lifecycle_rules", {"scheduler/lifecycle/rules.py": None},
          "gpuq.scheduler.lifecycle.rules: no such module", id="rules-missing"),
    # 3. gpuq.wire
    _case("wire", {"gpuq/wire/bad.py": "import pydantic\nimport sqlalchemy\n"},
          "gpuq/wire/bad.py:2", "imports sqlalchemy", id="wire-imports-sqlalchemy"),
    _case("wire", {"gpuq/wire/bad.py": "from gpuq.config import Settings\n"},
          "gpuq/wire/bad.py:1", "gpuq.config.Settings", id="wire-imports-config"),
    _case("wire", {"gpuq/wire/bad.py": "from pydantic_settings import BaseSettings\n"},
          "pydantic_settings", id="wire-imports-pydantic-settings"),
    # 4. the CLI and the worker
    _case("cli_and_worker", {"cli/jobs.py": "from gpuq.scheduler.db import models\n"},
          "cli/jobs.py:1", "gpuq.scheduler.db.models", id="cli-imports-models"),
    _case("cli_and_worker", {"worker/daemon.py": "def f():\n    import sqlalchemy\n"},
          "worker/daemon.py:2", "imports sqlalchemy", id="worker-imports-sqlalchemy"),
    _case("cli_and_worker",
          {"cli/services.py": "from gpuq.scheduler.entry.server import run\n"},
          "cli/services.py:1", "only inside a function", id="cli-starts-server-at-import"),
    _case("cli_and_worker",
          {"cli/services.py": "def f():\n    from gpuq.scheduler.services.jobs import submit\n"},
          "cli/services.py:2", "gpuq.scheduler.services.jobs.submit",
          id="cli-exception-is-for-entry-only"),
    _case("cli_and_worker",
          {"cli/sim.py": "def f():\n    from gpuq.scheduler.entry import server\n"},
          "cli/sim.py:2", id="cli-exception-is-per-module"),
    _case("cli_and_worker",
          {"cli/jobs.py": "from gpuq.config import Settings\n",
           "gpuq/config.py": "import os\n\ndef f():\n    from gpuq.scheduler.db import session\n"},
          "gpuq/config.py:4", "gpuq.config is imported by the CLI or the worker",
          "gpuq.cli.jobs (", id="cli-reaches-server-through-config"),
    # 5. the layers of gpuq.scheduler
    _case("scheduler_layers", {"scheduler/db/models.py": "from gpuq.scheduler.services import x\n",
                               "scheduler/services/x.py": "\n"},
          "scheduler/db/models.py:1", "layer db imports layer services, above it",
          id="db-imports-services"),
    _case("scheduler_layers",
          {"scheduler/domain/usage.py": "def f():\n    from gpuq.scheduler.runtime import loop\n",
           "scheduler/runtime/loop.py": "\n"},
          "scheduler/domain/usage.py:2", "layer domain imports layer runtime",
          id="domain-imports-runtime-in-a-function"),
    _case("scheduler_layers", {"scheduler/clock.py": "from gpuq.scheduler.db import session\n",
                               "scheduler/db/session.py": "\n"},
          "scheduler/clock.py:1", "clock is a foundation module", id="foundation-imports-db"),
    _case("scheduler_layers", {"scheduler/sim/engine.py": "from gpuq.scheduler.db import models\n",
                               "scheduler/db/models.py": "\n"},
          "scheduler/sim/engine.py:1", "the simulator imports only policy", id="sim-imports-db"),
    _case("scheduler_layers", {"scheduler/api/app.py": "from gpuq.scheduler.sim import engine\n",
                               "scheduler/sim/engine.py": "\n"},
          "scheduler/api/app.py:1", "imports the simulator", id="api-imports-sim"),
    _case("scheduler_layers", {"scheduler/misc.py": "\n"},
          "gpuq.scheduler.misc is in no layer", id="module-in-no-layer"),
    _case("scheduler_layers", {"scheduler/services/x.py": "from gpuq.worker import client\n",
                               "worker/client.py": "\n"},
          "scheduler/services/x.py:1", "does not import the CLI or the worker",
          id="scheduler-imports-worker"),
    # 6. who writes jobs
    _case("job_writes", {"scheduler/services/nodes.py": """
            from gpuq.scheduler.db.models import Job, JobEvent
            def lost(session, job, jobs, now):
                job.state = "NODE_FAIL"
                session.add(JobEvent(job_id=job.id, new_state="NODE_FAIL"))
                self.current_job.state, x = "FAILED", 1
                jobs[0].state = "FAILED"
                setattr(job, "state", "FAILED")
        """},
          "nodes.py:4: gpuq.scheduler.services.nodes writes a job state: assigns `job.state`",
          "nodes.py:5: gpuq.scheduler.services.nodes writes a job event: constructs `JobEvent(",
          "nodes.py:6:", "`self.current_job.state`", "nodes.py:7:", "nodes.py:8:",
          id="assignments-and-events"),
    _case("job_writes", {"scheduler/runtime/loop.py": """
            from sqlalchemy import insert, text, update
            def write(session, jobs):
                session.execute(update(Job).where(Job.id == 1).values(state="RUNNING"))
                session.execute(update(jobs).values({"state": "RUNNING", "reason": ""}))
                session.execute(update(Job), [{"id": 1, "state": "RUNNING"}])
                session.execute(insert(JobEvent), [{"job_id": 1}])
                session.execute(text("UPDATE jobs SET reason = '', state = :s WHERE id = 1"))
                session.execute(text("INSERT INTO job_events (job_id) VALUES (1)"))
                table = JobEvent.__table__
                session.add(Job(name="x"))
        """},
          "loop.py:4:", "loop.py:5:", "loop.py:6:", "loop.py:7:", "writes JobEvent rows",
          "loop.py:8:", "SQL `UPDATE jobs SET", "loop.py:9:", "loop.py:10:",
          "uses `JobEvent.__table__`", "loop.py:11:", "constructs a new job",
          id="statements-and-sql"),
    # 7. import circles
    _case("no_cycles", {"worker/a.py": "from gpuq.worker import b\n",
                        "worker/b.py": "from typing import TYPE_CHECKING\n"
                                       "if TYPE_CHECKING:\n    from gpuq.worker.a import X\n"},
          "import circle among gpuq.worker.a, gpuq.worker.b",
          "gpuq.worker.a -> gpuq.worker.b (", "worker/a.py:1",
          "gpuq.worker.b -> gpuq.worker.a (", "worker/b.py:3", id="circle-through-type-checking"),
    _case("no_cycles", {"scheduler/db/a.py": "def f():\n    import gpuq.scheduler.db.c\n",
                        "scheduler/db/b.py": "from gpuq.scheduler.db import a\n",
                        "scheduler/db/c.py": "from gpuq.scheduler.db.b import thing\n"},
          "gpuq.scheduler.db.a -> gpuq.scheduler.db.c",
          "gpuq.scheduler.db.c -> gpuq.scheduler.db.b",
          "gpuq.scheduler.db.b -> gpuq.scheduler.db.a", id="circle-of-three"),
]


@pytest.mark.parametrize(("rule", "files", "expected"), BROKEN)
def test_a_broken_tree_fails_the_rule(tmp_path: Path, rule: str, files: dict[str, str | None],
                                      expected: tuple[str, ...]) -> None:
    """Each rule reports a tree that breaks it, naming the file, the line and the import."""
    pkg = synthetic(tmp_path, {**CLEAN, **files})
    _, check = RULES_BY_NAME[rule]
    report = "\n".join(check(pkg))
    assert report, f"{rule} found nothing in a tree that breaks it"
    for text in expected:
        assert text in report, f"{text!r} not in:\n{report}"


def test_writes_and_models_are_exempt(tmp_path: Path) -> None:
    """lifecycle.writes may write anything; db.models may name JobEvent but not set a state."""
    body = "def f(session, job):\n    job.state = 'X'\n    session.add(JobEvent(job_id=1))\n"
    pkg = synthetic(tmp_path, {**CLEAN, "scheduler/lifecycle/writes.py": body,
                               "scheduler/db/models.py": body})
    assert [v.split(": ", 1)[0] for v in check_job_writes(pkg)] == [
        f"{tmp_path / 'scheduler/db/models.py'}:2"]
