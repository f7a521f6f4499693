"""The job lifecycle: every state rule (``rules``, pure) and the one writer of jobs, their
states and their events (``writes``)."""
