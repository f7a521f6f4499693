"""What serves the domain at run time: the scheduling loop, group commit, wake-ups across
processes, the pre-forked API processes, job logs, metrics, and the shared context."""
