"""Errors that services raise and the API turns into 4xx answers."""

from __future__ import annotations


class ServiceError(Exception):
    status = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def detail(self) -> object:
        if self.field is None:
            return self.message
        # The same shape as FastAPI's validation errors, so clients render one format.
        return [{"loc": ["body", self.field], "msg": self.message, "type": "value_error"}]


class Invalid(ServiceError):
    status = 422


class Forbidden(ServiceError):
    status = 403


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    status = 409


class Overcommitted(Conflict):
    """A reservation grant that does not fit beside the others: 409 with the grants it
    conflicts with, ``{"message": ..., "conflicts": [grant ids]}``."""

    def __init__(self, message: str, *, conflicts: list[int]) -> None:
        super().__init__(message)
        self.conflicts = conflicts

    def detail(self) -> object:
        return {"message": self.message, "conflicts": self.conflicts}
