"""The scheduler's domain, on the database: usage charging and its decay, per-job
accounting, grants' states, idle GPUs, and the snapshot the policy core reads."""
