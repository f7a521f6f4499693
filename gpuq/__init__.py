"""gpuq: a fair-share GPU cluster scheduler for small research groups.

One import name for the whole distribution. The repository keeps the parts in their own
top-level folders, which setuptools maps into this package (see ``pyproject.toml``):

    gpuq.wire       the vocabulary every part speaks: job and node states, wire schemas
    gpuq.scheduler  scheduler/  the API server, the scheduling loop, the policy core
    gpuq.worker     worker/     the worker daemon and job supervisors on a GPU host
    gpuq.cli        cli/        the ``gpuq`` command
"""

__version__ = "0.1.0"
