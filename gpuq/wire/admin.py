"""Administration on the wire: accounts, users, memberships, tokens, usage imports, the
fair-share table, whoami and the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from gpuq.wire.common import (
    MAX_MEASURE,
    Name,
    Qos,
    Strict,
    check_time,
)

Shares = int | Literal["parent"]


class AccountCreate(Strict):
    name: Name
    parent: Name = "root"
    #: Raw shares, or "parent" (Slurm's FairShare=parent: not a level of its own).
    shares: Annotated[int, Field(ge=0, le=1_000_000)] | Literal["parent"] = 1
    description: str = Field("", max_length=256)
    #: QOS of jobs submitted to it (and to accounts below) that name none; null: inherit.
    default_qos: Qos | None = None


class AccountUpdate(Strict):
    """Change an account: only the fields given change (``default_qos: null`` inherits)."""

    #: Move it (and everything below) under another account.
    parent: Name | None = None
    shares: Annotated[int, Field(ge=0, le=1_000_000)] | Literal["parent"] | None = None
    description: str | None = Field(None, max_length=256)
    default_qos: Qos | None = None


class AccountRead(BaseModel):
    name: str
    parent: str | None
    shares: Shares
    description: str
    default_qos: str | None = None
    #: Retired: takes no new jobs and is left out of the fair-share tree.
    retired: bool = False
    retired_at: datetime | None = None


UnixName = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_.-]{0,31}$",
                                description="a Unix account name, e.g. alice")]


class UserCreate(Strict):
    name: Name
    account: Name
    shares: Annotated[int, Field(ge=0, le=1_000_000)] | Literal["parent"] = 1
    admin: bool = False
    #: The Unix account this user's jobs run as on workers running as root (default: the
    #: same name). Only admins set it; users never choose it.
    unix_user: UnixName | None = None


class UserUpdate(Strict):
    """Only the fields given change (``unix_user: null``: the same name as the user)."""

    unix_user: UnixName | None = None
    admin: bool | None = None
    #: A disabled user's tokens stop working and it cannot submit; its jobs stay.
    disabled: bool | None = None
    #: The account its jobs go to when they name none (it must be a member).
    default_account: Name | None = None
    #: Restricted QOS the user may choose (only "high" is restricted).
    allowed_qos: list[Qos] | None = Field(None, max_length=16)


class MembershipUpdate(Strict):
    shares: Annotated[int, Field(ge=0, le=1_000_000)] | Literal["parent"]


class NodeDrain(Strict):
    reason: str = Field(..., min_length=1, max_length=256,
                        description="why, for people: e.g. 'replacing GPU 3'")


class MembershipCreate(Strict):
    account: Name
    shares: Annotated[int, Field(ge=0, le=1_000_000)] | Literal["parent"] = 1


class MembershipRead(BaseModel):
    account: str
    shares: Shares


class UserRead(BaseModel):
    name: str
    admin: bool
    unix_user: str
    default_account: str | None
    accounts: list[MembershipRead]
    disabled: bool = False
    allowed_qos: list[str] = Field(default_factory=list)


class TokenCreate(Strict):
    role: Literal["user", "admin", "node"]
    #: For user and admin tokens: whose token it is.
    user: Name | None = None
    #: For node tokens: the node (host) name; the node need not have registered yet.
    node: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    description: str = Field("", max_length=256)
    #: Seconds until the token stops working (at least 60); null: never expires.
    expires_in_s: int | None = Field(None, ge=60, le=10 * 366 * 86400)

    @model_validator(mode="after")
    def _owner(self) -> TokenCreate:
        if self.role == "node" and not self.node:
            raise ValueError("a node token needs 'node' (the host name)")
        if self.role != "node" and not self.user:
            raise ValueError(f"a {self.role} token needs 'user'")
        if self.role == "node" and self.user:
            raise ValueError("a node token belongs to a node, not a user: drop 'user'")
        return self


class TokenRead(BaseModel):
    id: int
    prefix: str
    role: str
    user: str | None
    node: str | None
    description: str
    created_at: datetime
    last_used_at: datetime | None
    revoked: bool
    expires_at: datetime | None = None
    expired: bool = False


class TokenCreated(TokenRead):
    #: The secret; shown once, never stored.
    token: str


class UsageImport(Strict):
    """One record of historical usage from another scheduler."""

    user: Name
    account: Name
    billed_seconds: float = Field(..., ge=0, le=MAX_MEASURE, description="billed GPU-seconds")
    #: When the usage ended; it has decayed since. Default: now.
    end_time: datetime | None = None

    @field_validator("end_time")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("give a time zone, e.g. 2026-01-31T12:00:00Z")
        return check_time(v)


class UsageImportResult(BaseModel):
    imported: int
    #: What the records add to the associations' usage now, after decay.
    decayed_billed_seconds: float


class FairShareRow(BaseModel):
    """One line of ``sshare -l``: an account (``user`` null), or a user in an account.
    Usage in billed GPU-seconds, decayed. ``level_fs`` "inf" means no usage yet."""

    name: str
    account: str
    user: str | None
    parent: str | None
    raw_shares: Shares
    norm_shares: float | None
    raw_usage: float
    norm_usage: float
    effective_usage: float | None
    level_fs: float | Literal["inf"] | None
    fairshare: float | None


class WhoAmI(BaseModel):
    role: str
    user: str | None
    node: str | None
    admin: bool
    accounts: list[str]
    default_account: str | None


class AuditRead(BaseModel):
    """One admin change: who made it (the user behind the token; "gpuq" for the
    scheduler's own, such as a grant starting), when, what, before and after."""

    id: int
    time: datetime
    actor: str
    token_id: int | None
    #: ``<object>.<verb>``: account.create, account.update, account.retire, user.create,
    #: user.update, membership.create, membership.update, membership.delete, token.create,
    #: token.revoke, node.drain, node.resume, grant.create, grant.update, grant.revoke,
    #: grant.activate, grant.expire, usage.import.
    action: str
    #: ``<object>:<name or id>``: account:qlab, user:alice, token:12, node:gpu01, grant:3.
    target: str
    before: dict[str, object] | None
    after: dict[str, object] | None
