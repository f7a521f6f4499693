"""The wire vocabulary: what the server, the worker and the CLI say to each other.

The job and node states (``states``) and the pydantic schemas of API v1, one module per
resource (``jobs``, ``arrays``, ``nodes`` for the worker protocol, ``admin``, ``grants``,
``usage``). This package imports only pydantic and the standard library, so a worker or a
CLI needs nothing of the server to speak it (tests/test_architecture.py holds it to that).
"""
