"""Usage in billed GPU-seconds, and its decay (fairshare.md A3). Pure arithmetic.

A job charges ``gpus x seconds x weight``, the weight being its GPU model's billing weight
(reference GPU units, fairshare.md A4). Recorded usage halves every half-life: after
``elapsed_s`` it is worth ``0.5 ** (elapsed_s / half_life_s)`` of what it was.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

#: Default half-life of usage: one week, as Slurm's ``PriorityDecayHalfLife`` and the Alliance.
DEFAULT_HALF_LIFE_S = 7 * 86400.0

#: Billing weight per GPU model, in reference GPU units (the Alliance's RGU table,
#: fairshare.md A4). Keys are matched without regard to case.
DEFAULT_GPU_BILLING: Mapping[str, float] = {
    "a100-40gb": 4.0,
    "a100-80gb": 4.8,
    "h100-80gb": 12.2,
    "v100-32gb": 2.6,
    "v100-16gb": 2.2,
    "t4": 1.3,
    "p100-16gb": 1.1,
    "p100-12gb": 1.0,
}
#: Weight of a model missing from the table.
DEFAULT_BILLING_WEIGHT = 1.0


def decay_factor(elapsed_s: float, half_life_s: float) -> float:
    """``0.5 ** (elapsed_s / half_life_s)``; a half-life of 0 means no decay (1.0).

    Negative elapsed time (a clock stepped back) decays nothing rather than growing usage.
    """
    if half_life_s <= 0 or elapsed_s <= 0:
        return 1.0
    return 0.5 ** (elapsed_s / half_life_s)


def decayed(usage: float, elapsed_s: float, half_life_s: float) -> float:
    """``usage`` recorded ``elapsed_s`` ago, as it counts now."""
    return usage * decay_factor(elapsed_s, half_life_s)


def billing_weight(model: str | None,
                   weights: Mapping[str, float] = DEFAULT_GPU_BILLING,
                   default: float = DEFAULT_BILLING_WEIGHT) -> float:
    """The billing weight of a GPU model (case-insensitive); ``default`` when unknown."""
    if model is None:
        return default
    folded = {k.lower(): v for k, v in weights.items()}
    return folded.get(model.lower(), default)


def billed_seconds(gpus: int, seconds: float, weight: float) -> float:
    """What running ``gpus`` GPUs of one model for ``seconds`` costs: gpus x seconds x weight."""
    return gpus * max(seconds, 0.0) * weight


def accrue(usage: float, elapsed_s: float, half_life_s: float, charged: float) -> float:
    """Usage after ``elapsed_s``: the old usage decayed, plus ``charged`` (billed seconds of the
    interval, added undecayed: a charge made at the end of the interval)."""
    return decayed(usage, elapsed_s, half_life_s) + charged


class UsageVector(Mapping[tuple[str, str], float]):
    """A usage mapping kept as two parallel sequences: ``keys`` (distinct (user, account)
    pairs) and ``values`` (their usage, floats). A plain read-only mapping to any reader;
    the fair-share code reads it without a lookup per association when ``keys`` starts with
    its tree's associations in the tree's order (``tree.TreeShape.assoc_keys``), which is
    how the simulator builds it every cycle (the same ``keys`` tuple each time).

    The caller must not change ``values`` after handing the vector over.
    """

    __slots__ = ("keys_", "values_", "_index")

    def __init__(self, keys: tuple[tuple[str, str], ...], values: list[float]) -> None:
        if len(keys) != len(values):
            raise ValueError(f"{len(keys)} keys but {len(values)} values")
        self.keys_ = keys
        self.values_ = values
        self._index: dict[tuple[str, str], int] | None = None

    def _position(self) -> dict[tuple[str, str], int]:
        if self._index is None:
            self._index = {k: i for i, k in enumerate(self.keys_)}
        return self._index

    def __getitem__(self, key: tuple[str, str]) -> float:
        return self.values_[self._position()[key]]

    def __contains__(self, key: object) -> bool:
        return key in self._position()

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.keys_)

    def __len__(self) -> int:
        return len(self.keys_)

    def __repr__(self) -> str:
        return f"UsageVector({dict(zip(self.keys_, self.values_, strict=True))!r})"
