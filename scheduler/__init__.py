"""gpuq scheduler: API server, scheduling loop, policy, dispatch."""

__version__ = "0.1.0"
