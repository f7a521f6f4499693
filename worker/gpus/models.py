"""Turn a driver's card name into the short model string the scheduler uses.

``NVIDIA A100-SXM4-80GB`` -> ``A100-80GB``; ``NVIDIA H200`` (143771 MiB) -> ``H200-141GB``.
The short form (family + memory in marketed GB) is what billing weights and
``--gpu-model`` constraints are written in. Pure functions only.
"""

from __future__ import annotations

import re

#: Vendor and product-line words that carry no model information.
_NOISE = {"NVIDIA", "TESLA", "QUADRO", "GEFORCE"}
#: Words that name a family only together with the next word (``RTX A6000``).
_PREFIXES = {"RTX", "GTX", "TITAN"}
#: Form factors and memory kinds: not part of the family.
_NOT_FAMILY = re.compile(r"^(SXM\d*|PCIE|NVL|HBM\d*E?|GDDR\d*X?|MIG.*|ADA|GENERATION|\d+GB)$")
_SIZE_IN_NAME = re.compile(r"(?<![0-9])(\d{1,4})\s?GB\b", re.IGNORECASE)
#: Memory sizes cards are sold with, in GB; a measured size snaps to the nearest one
#: (a T4 reports 15360 MiB but is sold as 16 GB; an H200 reports 143771 MiB, sold as 141).
MARKETED_GB = (2, 3, 4, 5, 6, 8, 10, 11, 12, 16, 20, 24, 32, 40, 48, 64, 80, 94, 96, 120,
               141, 144, 180, 192, 256, 288)


def marketed_gb(memory_mib: int) -> int:
    """The marketed size in GB nearest to ``memory_mib`` (which drivers report in MiB)."""
    gib = memory_mib / 1024
    return min(MARKETED_GB, key=lambda gb: (abs(gb - gib), gb))


def _family(raw_name: str) -> str:
    words = [w for w in re.split(r"[\s\-_]+", raw_name.strip().upper()) if w]
    words = [w for w in words if w not in _NOISE]
    if not words:
        return ""
    if words[0] in _PREFIXES and len(words) > 1 and not _NOT_FAMILY.match(words[1]):
        return f"{words[0]}-{words[1]}"
    return words[0]


def normalise_model(raw_name: str, memory_mib: int) -> str:
    """The short model (``FAMILY-<N>GB``) of a card named ``raw_name`` with ``memory_mib``.

    A size written in the name wins when it agrees with the memory (within 15 %), so
    ``A100-PCIE-40GB`` stays 40GB; a size that is not the GPU's (``GH200 480GB`` counts the
    CPU's memory too) gives way to the measured memory.
    """
    family = _family(raw_name) or "GPU"
    named = [int(m) for m in _SIZE_IN_NAME.findall(raw_name)]
    size = marketed_gb(memory_mib) if memory_mib > 0 else None
    for gb in named:
        if memory_mib <= 0 or abs(gb * 1024 - memory_mib) <= 0.15 * gb * 1024:
            size = gb
            break
    return family if size is None else f"{family}-{size}GB"
