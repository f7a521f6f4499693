"""The simulated cluster: groups of identical nodes, from ``--nodes`` or a small file.

``--nodes 2x8`` is 2 nodes of 8 GPUs; ``2x8:A100-80GB`` names the GPU model (default
``GPU``, billed 1.0); several groups are joined by commas: ``4x8:A100-80GB,2x4:H100-80GB``.

A cluster file is either CSV with the header ``nodes,gpus[,model]``::

    nodes,gpus,model
    4,8,A100-80GB
    2,4,H100-80GB

or TOML with one ``[[nodes]]`` table per group (``count``, ``gpus``, ``model``)::

    [[nodes]]
    count = 4
    gpus = 8
    model = "A100-80GB"

Nodes are named ``node0001``, ``node0002``, … in the order given.
"""

from __future__ import annotations

import csv
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from gpuq.scheduler.policy.snapshot import GpuView, NodeView
from gpuq.scheduler.sim.errors import SimInputError, at

DEFAULT_MODEL = "GPU"
_SPEC = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*(?::\s*(\S+?))?\s*$")


@dataclass(frozen=True, slots=True)
class NodeGroup:
    count: int
    gpus: int
    model: str = DEFAULT_MODEL


@dataclass(frozen=True, slots=True)
class SimNode:
    name: str
    gpus: int
    model: str

    def view(self, free: frozenset[int]) -> NodeView:
        return NodeView(name=self.name, gpus=tuple(GpuView(i, self.model)
                                                     for i in range(self.gpus)),
                        free_gpus=free)


def _group(count: int, gpus: int, model: str | None, where: str) -> NodeGroup:
    if count < 1 or gpus < 1:
        raise SimInputError(f"{where}: nodes and GPUs per node must be >= 1")
    return NodeGroup(count, gpus, model or DEFAULT_MODEL)


def parse_nodes(spec: str) -> list[NodeGroup]:
    """``"2x8"``, ``"2x8:A100-80GB"``, or several joined by commas."""
    groups = []
    for part in spec.split(","):
        m = _SPEC.match(part)
        if not m:
            raise SimInputError(f"--nodes {spec!r}: expected NODESxGPUS[:MODEL], "
                                f"e.g. 1000x8 or 2x8:A100-80GB (got {part.strip()!r})")
        groups.append(_group(int(m[1]), int(m[2]), m[3], f"--nodes {spec!r}"))
    return groups


def _int(path: Path, line: int, column: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise at(path, line, column, f"must be a whole number >= 1, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise at(path, line, column, f"must be a whole number >= 1, got {value!r}")
    return number


def _from_csv(path: Path) -> list[NodeGroup]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = [h.strip() for h in reader.fieldnames or ()]
        if "nodes" not in fields or "gpus" not in fields:
            raise at(path, 1, None, "expected the header nodes,gpus[,model]")
        reader.fieldnames = fields
        groups = []
        for row in reader:
            line = reader.line_num
            groups.append(NodeGroup(_int(path, line, "nodes", (row["nodes"] or "").strip()),
                                    _int(path, line, "gpus", (row["gpus"] or "").strip()),
                                    (row.get("model") or "").strip() or DEFAULT_MODEL))
    return groups


def _from_toml(path: Path) -> list[NodeGroup]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise SimInputError(f"{path}: not valid TOML: {e}") from None
    tables = data.get("nodes")
    if not isinstance(tables, list) or not tables:
        raise SimInputError(f"{path}: expected one or more [[nodes]] tables "
                            "(count, gpus, model)")
    groups = []
    for i, table in enumerate(tables, 1):
        where = f"{path}: [[nodes]] #{i}"
        if not isinstance(table, dict) or "count" not in table or "gpus" not in table:
            raise SimInputError(f"{where}: needs count and gpus")
        for key in ("count", "gpus"):
            if isinstance(table[key], bool) or not isinstance(table[key], int):
                raise SimInputError(f"{where}: {key} must be a whole number >= 1")
        model = table.get("model")
        if model is not None and not isinstance(model, str):
            raise SimInputError(f"{where}: model must be a string")
        groups.append(_group(table["count"], table["gpus"], model, where))
    return groups


def load_cluster_file(path: str | Path) -> list[NodeGroup]:
    path = Path(path)
    try:
        groups = _from_toml(path) if path.suffix == ".toml" else _from_csv(path)
    except (OSError, UnicodeDecodeError) as e:
        raise SimInputError(f"{path}: cannot read the cluster file: {e}") from None
    if not groups:
        raise SimInputError(f"{path}: no nodes")
    return groups


def build_nodes(groups: list[NodeGroup]) -> list[SimNode]:
    total = sum(g.count for g in groups)
    width = max(4, len(str(total)))
    nodes = []
    for group in groups:
        for _ in range(group.count):
            nodes.append(SimNode(f"node{len(nodes) + 1:0{width}d}", group.gpus, group.model))
    return nodes
