from __future__ import annotations

import pytest

from gpuq.worker.gpus.models import marketed_gb, normalise_model


@pytest.mark.parametrize("raw, memory_mib, expected", [
    ("NVIDIA A100-SXM4-80GB", 81920, "A100-80GB"),
    ("NVIDIA A100-PCIE-40GB", 40960, "A100-40GB"),
    ("NVIDIA A100-SXM4-40GB", 40536, "A100-40GB"),
    ("NVIDIA H100 80GB HBM3", 81559, "H100-80GB"),
    ("NVIDIA H100 PCIe", 81559, "H100-80GB"),
    ("NVIDIA H100 NVL", 95830, "H100-94GB"),
    ("NVIDIA H200", 143771, "H200-141GB"),
    ("NVIDIA GH200 480GB", 97871, "GH200-96GB"),
    ("Tesla V100-SXM2-32GB", 32768, "V100-32GB"),
    ("Tesla V100-PCIE-16GB", 16160, "V100-16GB"),
    ("Tesla T4", 15360, "T4-16GB"),
    ("Tesla P100-PCIE-12GB", 12193, "P100-12GB"),
    ("NVIDIA L40S", 46068, "L40S-48GB"),
    ("NVIDIA A10", 23028, "A10-24GB"),
    ("NVIDIA GeForce RTX 4090", 24564, "RTX-4090-24GB"),
    ("NVIDIA RTX A6000", 49140, "RTX-A6000-48GB"),
    ("NVIDIA RTX 6000 Ada Generation", 49140, "RTX-6000-48GB"),
    ("Quadro RTX 8000", 48601, "RTX-8000-48GB"),
    (b"NVIDIA A100-SXM4-80GB".decode(), 81920, "A100-80GB"),
])
def test_normalise_model(raw: str, memory_mib: int, expected: str) -> None:
    assert normalise_model(raw, memory_mib) == expected


def test_size_from_the_name_when_memory_is_unknown() -> None:
    assert normalise_model("NVIDIA A100-SXM4-80GB", 0) == "A100-80GB"
    assert normalise_model("Tesla T4", 0) == "T4"


def test_nameless_card() -> None:
    assert normalise_model("", 16384) == "GPU-16GB"


@pytest.mark.parametrize("memory_mib, gb", [
    (15360, 16), (81559, 80), (143771, 141), (24564, 24), (11264, 11), (1, 2)])
def test_marketed_gb_snaps_to_the_nearest_sold_size(memory_mib: int, gb: int) -> None:
    assert marketed_gb(memory_mib) == gb
