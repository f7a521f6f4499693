"""`gpuq up` on a machine with real NVIDIA GPUs (NVML): run with ``-m gpu`` on a GPU host."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import parse_env_dump, wait_for
from tests.e2e.test_up import Up, start_up

pytestmark = pytest.mark.gpu

PROBE = """
import os, subprocess
print("CUDA_VISIBLE_DEVICES=" + os.environ["CUDA_VISIBLE_DEVICES"])
print("GPUQ_GPU_UUIDS=" + os.environ["GPUQ_GPU_UUIDS"])
try:
    import torch
    print("TORCH_DEVICES=%d" % torch.cuda.device_count())
    x = torch.ones(1024, 1024, device="cuda")
    print("TORCH_SUM=%d" % int((x @ x).sum().item()))
except ImportError:
    print("TORCH_DEVICES=n/a")
out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
print("SMI_LINES=%d" % len(out.splitlines()))
"""


def _nvml_gpus() -> int:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001
        return 0


@pytest.fixture
def gpu_up(tmp_path: Path) -> Iterator[Up]:
    if _nvml_gpus() == 0:
        pytest.skip("NVML cannot start here (no NVIDIA driver or GPU)")
    yield from start_up(tmp_path, [])


def test_up_on_real_gpus(gpu_up: Up) -> None:
    node = wait_for(lambda: next((n for n in json.loads(gpu_up.gpuq("nodes", "--json").stdout)
                                  if n["state"] == "UP"), None), 60, "the node")
    assert node["gpu_backend"] == "nvml"
    assert len(node["gpus"]) == _nvml_gpus()
    script = gpu_up.tmp / "probe.py"
    script.write_text(PROBE)
    job = int(gpu_up.gpuq("submit", "--parsable", "--gpus", "1", "--", sys.executable,
                          str(script)).stdout)
    wait_for(lambda: gpu_up.state(job) in ("COMPLETED", "FAILED"), 120, "the probe job")
    log = gpu_up.gpuq("logs", str(job)).stdout
    assert gpu_up.state(job) == "COMPLETED", log
    env = parse_env_dump(log)
    shown = json.loads(gpu_up.gpuq("show", str(job), "--json").stdout)
    assert env["CUDA_VISIBLE_DEVICES"] == ",".join(map(str, shown["gpu_indices"]))
    uuids = {g["index"]: g["uuid"] for g in node["gpus"]}
    assert env["GPUQ_GPU_UUIDS"] == ",".join(uuids[i] for i in shown["gpu_indices"])
    # nvidia-smi lists every GPU; CUDA sees only the allocated one.
    assert env["TORCH_DEVICES"] in ("1", "n/a"), log
    if env["TORCH_DEVICES"] == "1":
        assert env["TORCH_SUM"] == str(1024 * 1024 * 1024)
    # The samples come from NVML: power and memory are real numbers.
    nodes = json.loads(gpu_up.gpuq("nodes", "--json").stdout)
    sample = nodes[0]["gpus"][0]["sample"]
    assert sample.get("power_w") is None or sample["power_w"] > 0
    print(log)
    print(json.dumps(nodes[0], indent=1))


#: Unsets CUDA_VISIBLE_DEVICES (as a job may) and opens every GPU device node there is.
FENCE_PROBE = """
import errno, glob, os, re, subprocess
print("GIVEN=" + os.environ.pop("CUDA_VISIBLE_DEVICES", ""))
for path in sorted(glob.glob("/dev/nvidia[0-9]*")):
    if not re.fullmatch(r"/dev/nvidia\\d+", path):
        continue
    try:
        os.close(os.open(path, os.O_RDWR))
        print("OPEN_%s=ok" % path[len("/dev/nvidia"):])
    except OSError as e:
        print("OPEN_%s=%s" % (path[len("/dev/nvidia"):], errno.errorcode.get(e.errno, e.errno)))
try:
    import torch
    print("TORCH_DEVICES=%d" % torch.cuda.device_count())
except Exception as e:  # noqa: BLE001
    print("TORCH_DEVICES=n/a (%s)" % type(e).__name__)
"""


def _minors() -> dict[str, int]:
    """GPU UUID -> its /dev/nvidia minor number."""
    import pynvml

    pynvml.nvmlInit()
    try:
        out = {}
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid = pynvml.nvmlDeviceGetUUID(h)
            out[uuid.decode() if isinstance(uuid, bytes) else uuid] = \
                pynvml.nvmlDeviceGetMinorNumber(h)
        return out
    finally:
        pynvml.nvmlShutdown()


def test_gpu_fence_on_real_gpus(gpu_up: Up) -> None:
    """A job cannot open the GPUs it was not given, CUDA_VISIBLE_DEVICES unset or not:
    EPERM from the kernel (BPF device program or cgroup v1 devices). On a one-GPU host
    the job asks for no GPU, and is refused the only one."""
    node = wait_for(lambda: next((n for n in json.loads(gpu_up.gpuq("nodes", "--json").stdout)
                                  if n["state"] == "UP"), None), 60, "the node")
    enforced = (node.get("enforcement") or "").split(" (")[0].split(";")[0].split(",")
    if "devices" not in enforced:
        pytest.skip(f"this node does not fence GPUs: {node.get('enforcement')}")
    minors = _minors()
    want = 1 if len(minors) >= 2 else 0
    script = gpu_up.tmp / "fence.py"
    script.write_text(FENCE_PROBE)
    job = int(gpu_up.gpuq("submit", "--parsable", "--gpus", str(want), "--", sys.executable,
                          str(script)).stdout)
    wait_for(lambda: gpu_up.state(job) in ("COMPLETED", "FAILED"), 120, "the fence probe")
    log = gpu_up.gpuq("logs", str(job)).stdout
    assert gpu_up.state(job) == "COMPLETED", log
    env = parse_env_dump(log)
    shown = json.loads(gpu_up.gpuq("show", str(job), "--json").stdout)
    uuids = {g["index"]: g["uuid"] for g in node["gpus"]}
    given = {minors[uuids[i]] for i in shown["gpu_indices"]}
    assert len(given) == want
    for uuid, minor in minors.items():
        result = env[f"OPEN_{minor}"]
        if minor in given:
            assert result == "ok", (uuid, log)
        else:
            assert result == "EPERM", (uuid, log)
    # What CUDA makes of it (shown, not asserted: the kernel's refusal above is the fence).
    print(f"given {want} GPU(s); torch sees {env['TORCH_DEVICES']}")
    print(log)
