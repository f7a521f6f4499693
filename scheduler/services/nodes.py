"""Node services: registration, the node list, draining."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from gpuq.scheduler.db.models import Gpu, GpuAllocation, Node
from gpuq.scheduler.errors import Conflict, NotFound
from gpuq.wire.nodes import GpuProcess, GpuRead, NodeRead, NodeRegister
from gpuq.wire.states import NodeState


def get_or_create_node(session: Session, name: str) -> Node:
    node = session.scalar(select(Node).where(Node.name == name))
    if node is None:
        node = Node(name=name, state=NodeState.UNKNOWN.value, state_reason="never registered")
        session.add(node)
        session.flush()
    return node


def register(session: Session, node: Node, body: NodeRegister, *, now: datetime) -> None:
    """Record the node's inventory and mark it UP (a drained node stays drained)."""
    seen = {g.index: g for g in body.gpus}
    if len(seen) != len(body.gpus):
        raise Conflict("two GPUs with the same index in the inventory")
    for gpu in list(node.gpus):
        if gpu.index not in seen:
            node.gpus.remove(gpu)
    have = {g.index: g for g in node.gpus}
    for info in body.gpus:
        gpu = have.get(info.index)
        if gpu is None:
            node.gpus.append(Gpu(index=info.index, uuid=info.uuid, model=info.model,
                                 memory_mib=info.memory_mib, healthy=info.healthy,
                                 last_sample={}))
        else:
            gpu.uuid, gpu.model = info.uuid, info.model
            gpu.memory_mib, gpu.healthy = info.memory_mib, info.healthy
    node.cpus, node.memory_mib = body.cpus, body.memory_mib
    node.gpu_backend, node.worker_version = body.gpu_backend, body.worker_version
    node.enforcement = body.enforcement
    node.registered_at = node.last_heartbeat_at = now
    node.state, node.state_reason = NodeState.UP.value, ""


def list_nodes(session: Session) -> list[NodeRead]:
    holders = dict(
        ((a.node_id, a.gpu_index), a.job_id) for a in session.scalars(select(GpuAllocation))
    )
    out = []
    for node in session.scalars(select(Node).options(selectinload(Node.gpus))
                                .order_by(Node.name)):
        state = NodeState.DRAIN.value if node.drain and node.state == NodeState.UP.value \
            else node.state
        out.append(NodeRead(
            name=node.name, state=state, state_reason=node.state_reason, drain=node.drain,
            drain_reason=node.drain_reason, cpus=node.cpus,
            memory_mib=node.memory_mib, gpu_backend=node.gpu_backend,
            last_heartbeat_at=node.last_heartbeat_at, enforcement=node.enforcement,
            gpus=[GpuRead(index=g.index, uuid=g.uuid, model=g.model, memory_mib=g.memory_mib,
                          healthy=g.healthy, health_reason=g.health_reason,
                          job_id=holders.get((node.id, g.index)),
                          foreign_processes=[GpuProcess(**p) for p in g.foreign_processes or []],
                          sample={k: v for k, v in (g.last_sample or {}).items()
                                  if k != "sampled_at"},
                          sampled_at=sampled_at(g.last_sample)) for g in node.gpus],
        ))
    return out


def get_node(session: Session, name: str) -> Node:
    node = session.scalar(select(Node).where(Node.name == name))
    if node is None:
        raise NotFound(f"no node {name}")
    return node


def drain(session: Session, node: Node, *, reason: str) -> None:
    """Nothing new starts on the node; running jobs finish."""
    node.drain, node.drain_reason = True, reason


def resume(session: Session, node: Node) -> None:
    node.drain, node.drain_reason = False, ""


def sampled_at(last: dict[str, Any] | None) -> datetime | None:
    """When a GPU's stored sample (``Gpu.last_sample``) was taken."""
    at = (last or {}).get("sampled_at")
    try:
        return datetime.fromisoformat(at) if isinstance(at, str) else None
    except ValueError:
        return None
