"""The central scheduler, in layers (each imports only the ones below it):

    entry/      ``gpuq server`` and ``gpuq up``'s provisioning
    api/        FastAPI routers (the wire schemas are ``gpuq.wire``)
    runtime/    the scheduling loop, group commit, wake-ups, pre-forked processes
    services/   what a request does: submits, heartbeats, runs, accounts, users, tokens, grants
    domain/     usage and its decay, accounting, grants' states, idle GPUs, the snapshot
    lifecycle/  the job state rules (pure) and the one writer of jobs and events
    db/         SQLAlchemy models, sessions, Alembic migrations
    policy/     the pure policy core: snapshot in, decisions out
"""
