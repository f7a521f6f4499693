"""Static (AST-only) view of the gpuq package: its modules, their imports, and a few code patterns.

Nothing here imports the code it looks at: every ``.py`` file under the source roots is
parsed with :mod:`ast`, so a module that fails to import, or that imports something heavy,
is still seen, and the checks run without a database, a broker or a GPU.

The source roots are the folders that setuptools maps into the one import name ``gpuq``
(``pyproject.toml``, ``[tool.setuptools] package-dir``)::

    gpuq/       -> gpuq            (gpuq.wire, gpuq.config, gpuq.broker, gpuq.fsbroker)
    scheduler/  -> gpuq.scheduler
    worker/     -> gpuq.worker
    cli/        -> gpuq.cli

``scheduler/db/migrations/`` is left out: Alembic loads those files by path; they are not
modules of the package.

What counts as an import
    Every ``import`` and ``from ... import`` statement anywhere in a module: at module level,
    inside functions and classes, and under ``if TYPE_CHECKING:``. Each one is recorded as an
    :class:`Import` with its file and line. Relative imports are made absolute.

How an import resolves to a module of the package
    ``import a.b.c`` names the module ``a.b.c``. ``from a.b import c`` names ``a.b.c`` when that
    is a module of the package (``c`` is a submodule), else ``a.b`` (``c`` is a name defined in
    ``a.b``). A dotted name that is not a module of the package resolves to its longest prefix
    that is one (so ``gpuq.scheduler.policy.snapshot.NodeView`` resolves to
    ``gpuq.scheduler.policy.snapshot``); a name outside the package resolves to nothing.
    The package ``__init__`` modules that Python also runs on the way (``a`` and ``a.b`` for
    ``import a.b.c``) are not counted as imported.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

#: Dotted package name -> its folder, relative to the repository root (pyproject's package-dir).
ROOTS: dict[str, str] = {
    "gpuq": "gpuq",
    "gpuq.scheduler": "scheduler",
    "gpuq.worker": "worker",
    "gpuq.cli": "cli",
}

#: Folders (relative to the repository root) whose files are not modules of the package.
EXCLUDED: tuple[str, ...] = ("scheduler/db/migrations",)

#: The repository root: this file is ``tests/importgraph.py``.
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Import:
    """One import statement's reference to one module, as written in the source.

    ``from a import b, c`` gives two records (``a.b`` and ``a.c``); ``import a, b`` gives two.
    """

    importer: str
    """The dotted name of the module that holds the statement."""
    name: str
    """The absolute dotted name imported: ``a.b`` for ``import a.b``, ``a.b.c`` for
    ``from a.b import c``."""
    module: str
    """The module the statement names: ``a.b`` for both ``import a.b`` and ``from a.b import c``."""
    target: str | None
    """The module of the package the import resolves to (see the module docstring); None when
    it names something outside the package."""
    path: Path
    line: int
    in_function: bool
    """True when the statement is inside a function body (it runs on call, not on import)."""
    type_checking: bool
    """True when the statement is under ``if TYPE_CHECKING:`` (seen by type checkers only)."""
    statement: str
    """The statement's source text, on one line."""

    @property
    def top(self) -> str:
        """The first component of :attr:`module`: ``sqlalchemy`` for ``sqlalchemy.orm``."""
        return self.module.partition(".")[0]

    def where(self) -> str:
        """``path:line``, the path relative to the repository root where possible."""
        return f"{_display(self.path)}:{self.line}"

    def describe(self) -> str:
        """One line for a failure message: where, who, what, and how it was written."""
        notes = []
        if self.in_function:
            notes.append("inside a function")
        if self.type_checking:
            notes.append("under TYPE_CHECKING")
        extra = f" [{', '.join(notes)}]" if notes else ""
        return f"{self.where()}: {self.importer} imports {self.name}: `{self.statement}`{extra}"


@dataclass(frozen=True)
class Finding:
    """A code pattern found at a line of a module (a clock read, a job-state write, ...)."""

    module: str
    path: Path
    line: int
    what: str

    def describe(self) -> str:
        """``path:line: module: what``."""
        return f"{_display(self.path)}:{self.line}: {self.module}: {self.what}"


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def in_package(name: str, package: str) -> bool:
    """Whether ``name`` is ``package`` or inside it (``a.b`` is in ``a``; ``ab`` isn't)."""
    return name == package or name.startswith(package + ".")


@dataclass
class Package:
    """The modules under the source roots of a source tree, parsed, with their imports.

    ``root`` is the folder that holds ``gpuq/``, ``scheduler/``, ``worker/`` and ``cli/``: the
    repository root for the real checks, a ``tmp_path`` for the checks' own tests.
    """

    root: Path = REPO_ROOT
    roots: Mapping[str, str] = field(default_factory=lambda: dict(ROOTS))
    excluded: tuple[str, ...] = EXCLUDED
    modules: dict[str, Path] = field(init=False)
    """Dotted module name -> its file. A package is named by its ``__init__.py``."""
    packages: set[str] = field(init=False)
    """The dotted names of the modules that are packages (their file is ``__init__.py``)."""
    trees: dict[str, ast.Module] = field(init=False)
    imports: list[Import] = field(init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.modules, self.packages = discover(self.root, self.roots, self.excluded)
        self.trees = {
            name: ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for name, path in self.modules.items()
        }
        self.imports = [
            imp
            for name in sorted(self.modules)
            for imp in imports_in(self.trees[name], name, self.modules[name],
                                  name in self.packages, self.resolve)
        ]

    def resolve(self, dotted: str) -> str | None:
        """The longest prefix of ``dotted`` that is a module of the package, or None."""
        name = dotted
        while name and name not in self.modules:
            name = name.rpartition(".")[0]
        return name or None

    def where(self, module: str, line: int) -> str:
        """``path:line`` of a line of ``module``, the path relative to the repository root."""
        return f"{_display(self.modules[module])}:{line}"

    def imports_from(self, package: str) -> list[Import]:
        """The imports made by the modules in ``package`` (the package itself included)."""
        return [imp for imp in self.imports if in_package(imp.importer, package)]

    def modules_in(self, package: str) -> list[str]:
        """The sorted names of the modules in ``package`` (the package itself included)."""
        return sorted(m for m in self.modules if in_package(m, package))

    def graph(self) -> dict[str, set[str]]:
        """Module -> the modules of the package it imports (every import counted; no self-loops)."""
        edges: dict[str, set[str]] = {name: set() for name in self.modules}
        for imp in self.imports:
            if imp.target is not None and imp.target != imp.importer:
                edges[imp.importer].add(imp.target)
        return edges

    def edge(self, importer: str, target: str) -> Import:
        """The first import statement (by line) in ``importer`` that resolves to ``target``."""
        return min(
            (i for i in self.imports if i.importer == importer and i.target == target),
            key=lambda i: i.line,
        )


def discover(
    root: Path, roots: Mapping[str, str], excluded: Iterable[str]
) -> tuple[dict[str, Path], set[str]]:
    """Map every ``.py`` file under the source roots to its dotted module name.

    A file under one root that another root's mapping owns (a ``gpuq/scheduler/x.py`` while
    ``gpuq.scheduler`` is mapped to ``scheduler/``) is skipped: setuptools would not ship it
    as that module.
    """
    excluded_dirs = [(root / e).resolve() for e in excluded]
    modules: dict[str, Path] = {}
    packages: set[str] = set()
    for package, folder in roots.items():
        base = root / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            resolved = path.resolve()
            if any(resolved.is_relative_to(d) for d in excluded_dirs):
                continue
            parts = path.relative_to(base).with_suffix("").parts
            is_init = parts[-1] == "__init__"
            if is_init:
                parts = parts[:-1]
            name = ".".join((package, *parts))
            owner = max((p for p in roots if in_package(name, p)), key=len)
            if owner != package:
                continue
            modules[name] = path
            if is_init:
                packages.add(name)
    return modules, packages


class _ImportVisitor(ast.NodeVisitor):
    """Collects the import statements of one module with their context (function, TYPE_CHECKING)."""

    def __init__(self) -> None:
        self.found: list[tuple[ast.Import | ast.ImportFrom, bool, bool]] = []
        self._functions = 0
        self._type_checking = 0

    def visit_Import(self, node: ast.Import) -> None:  # noqa: N802 (ast.NodeVisitor's names)
        self.found.append((node, self._functions > 0, self._type_checking > 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:  # noqa: N802
        self.found.append((node, self._functions > 0, self._type_checking > 0))

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self._functions += 1
        self.generic_visit(node)
        self._functions -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function  # noqa: N815

    def visit_If(self, node: ast.If) -> None:  # noqa: N802
        self.visit(node.test)
        guarded = _is_type_checking(node.test)
        self._type_checking += guarded
        for child in node.body:
            self.visit(child)
        self._type_checking -= guarded
        for child in node.orelse:  # the else branch of `if TYPE_CHECKING:` runs
            self.visit(child)


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING`` (any ``x.TYPE_CHECKING``)."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module a (possibly relative) ``from ... import`` names."""
    if node.level == 0:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_in(
    tree: ast.Module,
    importer: str,
    path: Path,
    is_package: bool,
    resolve: Callable[[str], str | None],
) -> Iterator[Import]:
    """The :class:`Import` records of one parsed module, in source order.

    ``resolve`` maps a dotted name to the module of the package it belongs to, or None
    (:meth:`Package.resolve`); it also decides whether ``from a.b import c`` names the
    submodule ``a.b.c`` (it does when ``resolve("a.b.c") == "a.b.c"``).
    """
    visitor = _ImportVisitor()
    visitor.visit(tree)
    for node, in_function, type_checking in visitor.found:
        statement = " ".join(ast.unparse(node).split())
        common = dict(importer=importer, path=path, line=node.lineno, in_function=in_function,
                      type_checking=type_checking, statement=statement)
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name=alias.name, module=alias.name, target=resolve(alias.name),
                             **common)
            continue
        module = _absolute(node, importer, is_package)
        for alias in node.names:
            dotted = f"{module}.{alias.name}" if alias.name != "*" else module
            target = dotted if resolve(dotted) == dotted else resolve(module)
            yield Import(name=dotted, module=module, target=target, **common)


def strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative).

    Each component is sorted; the list is sorted by each component's first module.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def a_cycle(graph: Mapping[str, Iterable[str]], component: list[str]) -> list[str]:
    """One shortest cycle through the component's first module, as ``[m0, m1, ..., m0]``."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child not in members:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {component}")  # not reached for an SCC


# -- code patterns ---------------------------------------------------------------------------


def dotted_name(node: ast.expr) -> str | None:
    """``a.b.c`` for the expression ``a.b.c`` (names and attributes only), else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def import_aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> the absolute dotted name it is bound to by the module's absolute imports.

    ``import datetime as dt`` binds ``dt`` to ``datetime``; ``from datetime import date`` binds
    ``date`` to ``datetime.date``; ``import os.path`` binds ``os`` to ``os``.
    """
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    top = alias.name.partition(".")[0]
                    aliases[top] = top
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                if alias.name != "*":
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


def references(tree: ast.Module, suffixes: Iterable[str]) -> Iterator[tuple[int, str]]:
    """Attribute references (called or not) whose dotted name ends with one of ``suffixes``.

    Each attribute chain is matched twice: as written (``datetime.now``) and with its first
    name replaced by what the module's imports bind it to (``dt.datetime.now`` after
    ``import datetime as dt``; ``D.now`` after ``from datetime import datetime as D``), so
    an alias does not hide a match. A suffix matches whole components: ``time.time`` matches
    ``time.time`` and ``x.time.time``, not ``x.start_time.time``. Yields ``(line, written)``.
    """
    wanted = [tuple(s.split(".")) for s in suffixes]
    aliases = import_aliases(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        written = dotted_name(node)
        if written is None:
            continue
        head, _, rest = written.partition(".")
        expanded = aliases.get(head, head) + (f".{rest}" if rest else "")
        for name in (written, expanded):
            parts = tuple(name.split("."))
            if any(parts[-len(w):] == w for w in wanted):
                yield node.lineno, written
                break


# -- writes of a job's state and of job events -----------------------------------------------

#: A finding's kind: it writes a job's state (``STATE``) or a job event (``EVENT``).
STATE = "job state"
EVENT = "job event"

_UPDATE_JOBS_SET = re.compile(r"\bupdate\s+jobs\s+set\b(?P<set>.*?)(?:\bfrom\b|\bwhere\b|$)",
                              re.IGNORECASE | re.DOTALL)
_INSERT_EVENTS = re.compile(r"\b(?:insert\s+into|update|delete\s+from)\s+job_events\b",
                            re.IGNORECASE)


def _table(node: ast.expr) -> str | None:
    """The name a table expression ends with, ``__table__`` dropped: ``Job`` for
    ``models.Job.__table__``; lower-cased, without leading underscores (``jobs`` for ``_JOBS``)."""
    name = dotted_name(node)
    if name is None:
        return None
    parts = [p for p in name.split(".") if p != "__table__"]
    return parts[-1].lstrip("_").lower() if parts else None


def is_job_table(node: ast.expr) -> bool:
    """``Job``, ``Job.__table__``, ``jobs``, ``_JOBS``, ``array_jobs``: a name ending in job(s)."""
    name = _table(node)
    return name is not None and name.endswith(("job", "jobs"))


def is_event_table(node: ast.expr) -> bool:
    """``JobEvent``, ``models.JobEvent``, ``JobEvent.__table__``, ``job_events``."""
    name = _table(node)
    return name is not None and name.replace("_", "") in ("jobevent", "jobevents")


def is_job_object(node: ast.expr) -> bool:
    """An expression that names one job: ``job``, ``j``, ``self.job``, ``parent_job``,
    ``jobs[i]`` (the last name, without leading underscores, is ``j`` or ends with ``job``;
    a subscripted name may end with ``jobs``)."""
    if isinstance(node, ast.Subscript):
        name = _table(node.value)
        return name is not None and (name == "j" or name.endswith(("job", "jobs")))
    name = _table(node)
    return name is not None and (name == "j" or name.endswith("job"))


def _last(node: ast.expr) -> str:
    name = dotted_name(node)
    return name.rpartition(".")[2] if name else ""


def _targets(node: ast.expr) -> Iterator[ast.expr]:
    """The single targets of an assignment target (tuples and starred targets unpacked)."""
    if isinstance(node, ast.Tuple | ast.List):
        for element in node.elts:
            yield from _targets(element)
    elif isinstance(node, ast.Starred):
        yield from _targets(node.value)
    else:
        yield node


def _has_state_key(node: ast.expr) -> bool:
    """A dict display with the key ``"state"``, ``dict(state=...)``, or a list or tuple of them."""
    if isinstance(node, ast.Dict):
        return any(isinstance(k, ast.Constant) and k.value == "state" for k in node.keys)
    if isinstance(node, ast.Call) and _last(node.func) == "dict":
        return any(k.arg == "state" for k in node.keywords)
    if isinstance(node, ast.List | ast.Tuple):
        return any(_has_state_key(e) for e in node.elts)
    return False


def _writes_job_table(node: ast.expr) -> bool:
    """A statement chain that starts from an UPDATE or INSERT of the jobs table:
    ``update(Job).where(...)``, ``insert(jobs)``, ``Job.__table__.update()``, ..."""
    while True:
        if isinstance(node, ast.Call):
            func = node.func
            verb = _last(func) if not isinstance(func, ast.Attribute) else func.attr
            if verb in ("update", "insert"):
                if node.args and is_job_table(node.args[0]):
                    return True
                if isinstance(func, ast.Attribute) and is_job_table(func.value):
                    return True
            node = func
        elif isinstance(node, ast.Attribute):
            node = node.value
        else:
            return False


def _sets_jobs_state(call: ast.Call) -> bool:
    """``<update or insert of jobs>.values(state=...)`` (or ``.values({"state": ...})``), or
    ``<session>.execute(<update or insert of jobs>, {"state": ...} or [{"state": ...}, ...])``."""
    func = call.func
    if not isinstance(func, ast.Attribute):
        return False
    if func.attr == "values":
        sets_state = any(k.arg == "state" for k in call.keywords) or any(
            _has_state_key(a) for a in call.args)
        return sets_state and _writes_job_table(func.value)
    if func.attr == "execute" and len(call.args) >= 2:
        return _writes_job_table(call.args[0]) and _has_state_key(call.args[1])
    return False


def _sql_text(node: ast.Constant | ast.JoinedStr) -> str:
    if isinstance(node, ast.Constant):
        return node.value
    return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)


def job_state_writes(tree: ast.Module) -> Iterator[tuple[int, str, str]]:
    """The places in a module that write a job's state or a job event: ``(line, kind, what)``.

    ``kind`` is :data:`STATE` or :data:`EVENT`. Found by their shape, not by types:

    - an assignment to ``<job>.state`` (plain, augmented, annotated, in a tuple target or as a
      ``for`` target), and ``setattr(<job>, "state", ...)`` or ``setattr(<job>, <name>, ...)``
      (a dynamic column name may be ``state``), where ``<job>`` is as :func:`is_job_object`
      says;
    - ``Job(...)`` and any INSERT of the jobs table (``insert(Job)``,
      ``bulk_insert(session, Job, rows)``): a new job's first state is a state written;
    - ``.values(state=...)`` or ``.values({"state": ...})`` on an ``update(Job)`` or
      ``insert(Job)`` chain, and ``execute(update(Job), [{"state": ...}, ...])``;
    - ``JobEvent(...)``, ``JobEvent.__table__``, and any call whose name has ``insert``,
      ``update`` or ``delete`` in it with the ``JobEvent`` table as an argument;
    - SQL text: ``UPDATE jobs SET ... state = ...`` and ``INSERT INTO`` / ``UPDATE`` /
      ``DELETE FROM job_events``.

    Not seen: a state written through a variable that names neither a job nor the jobs
    table, or SQL text built from pieces that are not string literals.
    """
    in_fstrings = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign | ast.For | ast.AsyncFor):
            targets = [node.target]
        for target in targets:
            for t in _targets(target):
                if isinstance(t, ast.Attribute) and t.attr == "state" and is_job_object(t.value):
                    yield t.lineno, STATE, f"assigns `{ast.unparse(t)}`"

        if isinstance(node, ast.Attribute) and node.attr == "__table__" and is_event_table(node):
            yield node.lineno, EVENT, f"uses `{ast.unparse(node)}`"

        if isinstance(node, ast.Constant | ast.JoinedStr) and id(node) not in in_fstrings and (
                isinstance(node, ast.JoinedStr) or isinstance(node.value, str)):
            sql = _sql_text(node)
            for m in _UPDATE_JOBS_SET.finditer(sql):
                if re.search(r"\bstate\s*=", m.group("set")):
                    yield node.lineno, STATE, f"SQL `{' '.join(m.group(0).split())}`"
            if _INSERT_EVENTS.search(sql):
                yield node.lineno, EVENT, f"SQL `{' '.join(sql.split())[:80]}`"

        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = _last(func) if not isinstance(func, ast.Attribute) else func.attr
        call = " ".join(ast.unparse(node).split())
        short = call if len(call) <= 80 else call[:77] + "..."
        if name == "setattr" and len(node.args) >= 2 and is_job_object(node.args[0]):
            key = node.args[1]
            if not isinstance(key, ast.Constant) or key.value == "state":
                yield node.lineno, STATE, f"sets a job's column by name: `{short}`"
        elif name == "JobEvent":
            yield node.lineno, EVENT, f"constructs `{short}`"
        elif name == "Job":
            yield node.lineno, STATE, f"constructs a new job (its first state): `{short}`"
        elif _sets_jobs_state(node):
            yield node.lineno, STATE, f"sets jobs' state: `{short}`"
        if any(verb in name.lower() for verb in ("insert", "update", "delete")):
            if any(is_event_table(a) for a in node.args):
                yield node.lineno, EVENT, f"writes JobEvent rows: `{short}`"
            if "insert" in name.lower() and any(is_job_table(a) for a in node.args):
                yield node.lineno, STATE, f"inserts jobs (their first state): `{short}`"
