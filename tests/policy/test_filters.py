"""Each placement filter: ``None`` when the job fits, else its short reason."""

from __future__ import annotations

import pytest

from gpuq.scheduler.policy.filters import (
    CAPACITY,
    DYNAMIC,
    STATIC,
    first_failure,
    free_cpus,
    free_gpus,
    free_memory,
    has_enough_cpus,
    has_enough_gpus,
    has_enough_memory,
    has_gpu_model,
    node_schedulable,
)
from tests.policy.builders import A100, H100, make_job, make_node


class TestNodeSchedulable:
    def test_up_fits(self) -> None:
        assert node_schedulable(make_node(state="UP"), make_job(1)) is None

    @pytest.mark.parametrize("state", ["DOWN", "DRAIN", "UNKNOWN"])
    def test_other_states_say_the_state(self, state: str) -> None:
        assert node_schedulable(make_node(state=state), make_job(1)) == f"node {state}"


class TestHasGpuModel:
    def test_any_model_fits(self) -> None:
        assert has_gpu_model(make_node(model=H100), make_job(1)) is None

    def test_the_wanted_model_fits(self) -> None:
        assert has_gpu_model(make_node(model=H100), make_job(1, gpu_model=H100)) is None

    def test_another_model_does_not(self) -> None:
        assert has_gpu_model(make_node(model=A100), make_job(1, gpu_model=H100)) == \
            f"no {H100} GPU"

    def test_a_mixed_node_with_one_card_of_the_model_fits(self) -> None:
        node = make_node(models=[A100, A100, H100])
        assert has_gpu_model(node, make_job(1, gpu_model=H100)) is None

    def test_a_node_without_gpus_has_no_model(self) -> None:
        assert has_gpu_model(make_node(gpus=0), make_job(1, gpu_model=A100)) == \
            f"no {A100} GPU"


class TestHasEnoughGpus:
    def test_exactly_enough(self) -> None:
        assert has_enough_gpus(make_node(gpus=4), make_job(1, gpus=4)) is None

    def test_one_too_many(self) -> None:
        assert has_enough_gpus(make_node(gpus=4), make_job(1, gpus=5)) == "too few GPUs"

    def test_counts_busy_gpus(self) -> None:
        # What the node *is*: busy GPUs free up when jobs end.
        assert has_enough_gpus(make_node(gpus=4, free=()), make_job(1, gpus=4)) is None

    def test_counts_only_the_wanted_model(self) -> None:
        node = make_node(models=[A100, A100, H100])
        assert has_enough_gpus(node, make_job(1, gpus=2, gpu_model=A100)) is None
        assert has_enough_gpus(node, make_job(1, gpus=2, gpu_model=H100)) == "too few GPUs"

    def test_a_job_without_gpus_fits_a_node_without_gpus(self) -> None:
        assert has_enough_gpus(make_node(gpus=0), make_job(1, gpus=0)) is None


class TestHasEnoughCpus:
    def test_unknown_cpus_mean_no_limit(self) -> None:
        assert has_enough_cpus(make_node(cpus=0), make_job(1, cpus=512)) is None

    def test_enough(self) -> None:
        assert has_enough_cpus(make_node(cpus=32), make_job(1, cpus=32)) is None

    def test_too_few(self) -> None:
        assert has_enough_cpus(make_node(cpus=32), make_job(1, cpus=33)) == "too few CPUs"

    def test_counts_busy_cpus(self) -> None:
        node = make_node(cpus=32, free_cpus=0)
        assert has_enough_cpus(node, make_job(1, cpus=32)) is None


class TestHasEnoughMemory:
    def test_unknown_memory_means_no_limit(self) -> None:
        assert has_enough_memory(make_node(memory_mib=0), make_job(1, memory_mib=10**9)) is None

    def test_enough(self) -> None:
        node = make_node(memory_mib=1024)
        assert has_enough_memory(node, make_job(1, memory_mib=1024)) is None

    def test_too_little(self) -> None:
        node = make_node(memory_mib=1024)
        assert has_enough_memory(node, make_job(1, memory_mib=1025)) == "too little memory"

    def test_counts_busy_memory(self) -> None:
        node = make_node(memory_mib=1024, free_memory_mib=0)
        assert has_enough_memory(node, make_job(1, memory_mib=1024)) is None


class TestFreeGpus:
    def test_enough_free(self) -> None:
        assert free_gpus(make_node(gpus=4, free={2, 3}), make_job(1, gpus=2)) is None

    def test_busy_gpus_do_not_count(self) -> None:
        assert free_gpus(make_node(gpus=4, free={3}), make_job(1, gpus=2)) == \
            "too few free GPUs"

    def test_unhealthy_gpus_do_not_count(self) -> None:
        node = make_node(gpus=2, unhealthy={0})
        assert free_gpus(node, make_job(1, gpus=1)) is None
        assert free_gpus(node, make_job(1, gpus=2)) == "too few free GPUs"

    def test_other_models_do_not_count(self) -> None:
        node = make_node(models=[A100, H100, H100])
        assert free_gpus(node, make_job(1, gpus=2, gpu_model=H100)) is None
        assert free_gpus(node, make_job(1, gpus=2, gpu_model=A100)) == "too few free GPUs"

    def test_no_gpus_needed(self) -> None:
        assert free_gpus(make_node(gpus=2, free=()), make_job(1, gpus=0)) is None


class TestFreeCpus:
    def test_unknown_cpus_mean_no_limit(self) -> None:
        assert free_cpus(make_node(cpus=0), make_job(1, cpus=64)) is None

    def test_enough_free(self) -> None:
        assert free_cpus(make_node(cpus=32, free_cpus=4), make_job(1, cpus=4)) is None

    def test_too_few_free(self) -> None:
        assert free_cpus(make_node(cpus=32, free_cpus=3), make_job(1, cpus=4)) == \
            "too few free CPUs"


class TestFreeMemory:
    def test_unknown_memory_means_no_limit(self) -> None:
        assert free_memory(make_node(memory_mib=0), make_job(1, memory_mib=64)) is None

    def test_enough_free(self) -> None:
        node = make_node(memory_mib=1024, free_memory_mib=512)
        assert free_memory(node, make_job(1, memory_mib=512)) is None

    def test_too_little_free(self) -> None:
        node = make_node(memory_mib=1024, free_memory_mib=511)
        assert free_memory(node, make_job(1, memory_mib=512)) == "too little free memory"


class TestChains:
    def test_first_failure_is_none_when_all_fit(self) -> None:
        assert first_failure(STATIC, make_node(), make_job(1)) is None
        assert first_failure(DYNAMIC, make_node(), make_job(1)) is None

    def test_first_failure_reports_the_first_filter_that_fails(self) -> None:
        # Down, wrong model and too small: the state is reported.
        node = make_node(gpus=1, model=A100, state="DRAIN", cpus=1)
        job = make_job(1, gpus=4, gpu_model=H100, cpus=8)
        assert first_failure(STATIC, node, job) == "node DRAIN"
        assert first_failure(CAPACITY, node, job) == f"no {H100} GPU"

    def test_first_failure_skips_filters_that_pass(self) -> None:
        node = make_node(gpus=8, cpus=16, memory_mib=1000)
        job = make_job(1, gpus=2, cpus=4, memory_mib=2000)
        assert first_failure(STATIC, node, job) == "too little memory"

    def test_static_ignores_what_is_busy_and_dynamic_sees_it(self) -> None:
        node = make_node(gpus=4, free=(), cpus=8, free_cpus=0)
        job = make_job(1, gpus=4, cpus=8)
        assert first_failure(STATIC, node, job) is None
        assert first_failure(DYNAMIC, node, job) == "too few free GPUs"
