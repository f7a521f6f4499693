"""The trace simulator: replays a workload through the real policy code with a virtual
clock (``gpuq sim``). See ``replay.replay`` for the whole run, ``engine`` for the loop."""

from gpuq.scheduler.sim.cluster import build_nodes, load_cluster_file, parse_nodes
from gpuq.scheduler.sim.engine import JobRecord, SimResult, Simulation, SimulationError
from gpuq.scheduler.sim.errors import SimInputError
from gpuq.scheduler.sim.replay import Replay, replay, write_jobs_csv, write_outputs
from gpuq.scheduler.sim.shares import Tree, complete, load_shares
from gpuq.scheduler.sim.trace import TraceJob, load_trace, shipped_traces

__all__ = [
    "JobRecord", "Replay", "SimInputError", "SimResult", "Simulation", "SimulationError",
    "TraceJob", "Tree", "build_nodes", "complete", "load_cluster_file", "load_shares",
    "load_trace", "parse_nodes", "replay", "shipped_traces", "write_jobs_csv",
    "write_outputs",
]
