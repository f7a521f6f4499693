"""Per-job accounting from known power and utilisation traces, idle GPUs (flag, notify,
cancel), the usage report (totals = the sum over jobs), and /metrics."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import Api, bearer

HOUR = 3600.0


@pytest.fixture
def node(api: Api) -> dict[str, str]:
    api.ctx.settings.carbon_intensity_by_node = {"gpu01": 200.0}  # g CO2e per kWh
    return api.node("gpu01", gpus=4, model="A100-80GB")  # billed 4.8 per GPU-second


def beat(api: Api, node: dict[str, str], runs: dict[int, list[dict[str, Any]]],
         gpus: list[dict[str, Any]] | None = None) -> Any:
    """A heartbeat from gpu01: each job (attempt 1) running with these per-GPU samples."""
    jobs = [{"job_id": j, "attempt": 1, "state": "RUNNING",
             "sample": {"gpus": g, "energy_j": sum(x.get("energy_j") or 0 for x in g)}}
            for j, g in runs.items()]
    return api.ok("POST", "/v1/nodes/gpu01/heartbeat", node, json={"jobs": jobs,
                                                                    "gpus": gpus or []})


def gpu(index: int, util: float, power: float, t: float, *, method: str = "counter",
        mem: float = 1000.0) -> dict[str, Any]:
    return {"index": index, "utilization_pct": util, "memory_used_mib": mem,
            "power_w": power, "energy_j": power * t, "energy_method": method}


def end(api: Api, node: dict[str, str], job_id: int) -> None:
    api.ok("POST", f"/v1/nodes/gpu01/jobs/{job_id}/events", node,
           json={"attempt": 1, "state": "COMPLETED", "exit_code": 0})


def run_trace(api: Api, node: dict[str, str], traces: dict[int, Any], seconds: float,
              step: float = 60.0) -> None:
    """Heartbeats every ``step`` s for ``seconds``; ``traces[job](t)`` gives its GPUs."""
    t = 0.0
    while True:
        beat(api, node, {j: f(t) for j, f in traces.items()})
        api.cycle()
        if t >= seconds:
            break
        api.clock.advance(step)
        t += step


def test_known_traces_give_exact_energy_carbon_utilisation(api: Api, node: dict) -> None:
    alice = api.user("alice", "lab1")
    job = api.submit(alice, gpus=2, time_limit_s=4 * 3600)
    api.cycle()
    a, b = api.job(job["id"])["gpu_indices"]
    # GPU a works at 80% drawing 250 W (energy counter); GPU b stays at 0% at 50 W, on a
    # card without a counter (the worker integrates its power). One hour.
    run_trace(api, node, {job["id"]: lambda t: [gpu(a, 80, 250, t),
                                                gpu(b, 0, 50, t, method="power")]}, HOUR)
    end(api, node, job["id"])
    api.clock.advance(30)
    api.cycle()  # charges the end and closes the accounting
    acct = api.job(job["id"])["accounting"]
    assert acct["final"] is True
    assert acct["gpu_hours"] == pytest.approx(2.0)
    assert acct["billed_gpu_hours"] == pytest.approx(2 * 4.8)
    assert acct["energy_kwh"] == pytest.approx(0.3)  # (250 + 50) W x 1 h
    assert acct["energy_method"] == "mixed"
    assert acct["carbon_kg"] == pytest.approx(0.3 * 200 / 1000)
    assert acct["carbon_intensity_g_per_kwh"] == 200.0
    assert acct["utilization_mean_pct"] == pytest.approx(40.0)
    assert acct["utilization_peak_pct"] == 80.0
    assert acct["idle_gpu_hours"] == pytest.approx(1.0)  # GPU b, the whole hour
    per_gpu = {g["index"]: g for g in acct["gpus"]}
    assert per_gpu[a]["utilization_mean_pct"] == pytest.approx(80.0)
    assert per_gpu[b]["utilization_mean_pct"] == 0.0
    assert per_gpu[b]["memory_mib"] == 81920 and per_gpu[a]["memory_peak_mib"] == 1000.0
    assert acct["idle"] is False, "one GPU busy: the job is not idle"


def test_usage_totals_equal_the_sum_over_jobs(api: Api, node: dict) -> None:
    alice, bob = api.user("alice", "lab1"), api.user("bob", "lab2")
    j1 = api.submit(alice, gpus=2)["id"]
    j2 = api.submit(bob, gpus=1)["id"]
    api.cycle()
    g1, g2 = api.job(j1)["gpu_indices"], api.job(j2)["gpu_indices"]
    run_trace(api, node, {
        j1: lambda t: [gpu(g1[0], 60, 200, t), gpu(g1[1], 30, 150, t)],
        j2: lambda t: [gpu(g2[0], 3, 70, t)]}, 1800, step=45)
    end(api, node, j1)
    api.clock.advance(600)
    beat(api, node, {j2: [gpu(g2[0], 3, 70, 2400)]})
    end(api, node, j2)
    api.clock.advance(30)
    api.cycle()
    jobs = [api.job(j)["accounting"] for j in (j1, j2)]
    report = api.ok("GET", "/v1/usage", api.admin, params={"by": "user"})
    total = report["total"]
    for key in ("gpu_hours", "billed_gpu_hours", "energy_kwh", "carbon_kg", "idle_gpu_hours"):
        assert total[key] == pytest.approx(sum(j[key] for j in jobs), abs=1e-6), key
        assert total[key] == pytest.approx(sum(r[key] for r in report["rows"]), abs=1e-6), key
    assert total["jobs"] == 2
    assert [r["user"] for r in report["rows"]] == ["alice", "bob"]
    assert jobs[0]["gpu_hours"] == pytest.approx(1.0)
    assert jobs[1]["gpu_hours"] == pytest.approx(2400 / 3600)
    # A user sees the accounts it is in; by day and account for the plot.
    mine = api.ok("GET", "/v1/usage", alice, params={"by": "day,account", "since": "30d"})
    assert {r["account"] for r in mine["rows"]} == {"lab1"}
    assert mine["total"]["gpu_hours"] == pytest.approx(1.0)
    r = api.client.get("/v1/usage", headers=alice, params={"account": "lab2"})
    assert r.status_code == 403, r.text


def test_an_idle_job_is_flagged_then_cancelled_as_its_qos_says(api: Api, node: dict) -> None:
    s = api.ctx.settings
    s.idle_window_s, s.idle_cancel_grace_s = 600, 300
    s.idle_actions = {"normal": "cancel"}
    alice = api.user("alice", "lab1")
    job = api.submit(alice, gpus=1)["id"]
    api.cycle()
    (g,) = api.job(job)["gpu_indices"]
    run_trace(api, node, {job: lambda t: [gpu(g, 2, 60, t)]}, 540)
    assert api.job(job)["accounting"]["idle"] is False, "not yet the whole window"
    run_trace(api, node, {job: lambda t: [gpu(g, 2, 60, 600 + t)]}, 60)
    acct = api.job(job)["accounting"]
    assert acct["idle"] is True and acct["idle_action"] == "cancel-pending"
    listed = api.ok("GET", "/v1/jobs", alice, params={"active": "true"})
    assert listed[0]["accounting"]["idle"] is True
    run_trace(api, node, {job: lambda t: [gpu(g, 2, 60, 660 + t)]}, 240)
    assert api.job(job)["cancel_requested"] is False, "the grace period is not over"
    api.clock.advance(60)
    reply = beat(api, node, {job: [gpu(g, 2, 60, 960)]})
    api.cycle()
    after = api.job(job)
    assert after["cancel_requested"] and after["accounting"]["idle_action"] == "cancelled"
    assert ("kill", "gpu01", job) in api.dispatcher.calls
    reply = beat(api, node, {job: [gpu(g, 2, 60, 960)]})
    assert [k["job_id"] for k in reply["kill"]] == [job]
    events = [e["reason"] for e in api.ok("GET", f"/v1/jobs/{job}", alice)["events"]]
    assert any(r.startswith("idle: every GPU under 5% for 10 min; alice notified")
               for r in events)
    assert any(r.startswith("idle: cancelled") for r in events)


def test_notify_flags_and_a_busy_gpu_clears_the_flag(api: Api, node: dict) -> None:
    api.ctx.settings.idle_window_s = 300  # the default action: notify
    alice = api.user("alice", "lab1")
    job = api.submit(alice, gpus=1)["id"]
    api.cycle()
    (g,) = api.job(job)["gpu_indices"]
    run_trace(api, node, {job: lambda t: [gpu(g, 0, 60, t)]}, 300)
    acct = api.job(job)["accounting"]
    assert acct["idle"] and acct["idle_action"] == "notified"
    run_trace(api, node, {job: lambda t: [gpu(g, 90, 300, 400 + t)]}, 0)
    acct = api.job(job)["accounting"]
    assert not acct["idle"] and acct["idle_action"] == ""
    reasons = [e["reason"] for e in api.job(job)["events"] or api.ok(
        "GET", f"/v1/jobs/{job}", alice)["events"]]
    assert "idle: its GPUs are busy again" in reasons
    assert api.job(job)["cancel_requested"] is False


def test_metrics_parse_and_need_a_token(api: Api, node: dict) -> None:
    alice = api.user("alice", "lab1")
    job = api.submit(alice, gpus=2)["id"]
    api.submit(alice, gpus=4)
    api.cycle()
    (a, b) = api.job(job)["gpu_indices"]
    beat(api, node, {job: [gpu(a, 50, 200, 0), gpu(b, 50, 200, 0)]},
         gpus=[{"index": i, "power_w": 100.0 + i} for i in range(4)])
    api.cycle()
    assert api.client.get("/metrics").status_code == 401
    assert api.client.get("/metrics", headers=alice).status_code == 403
    r = api.client.get("/metrics", headers=api.admin)
    assert r.status_code == 200, r.text
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    samples = {(f.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    assert samples[("gpuq_jobs", (("account", "lab1"), ("state", "PENDING")))] == 1
    assert samples[("gpuq_jobs", (("account", "lab1"), ("state", "RUNNING")))] == 1
    assert samples[("gpuq_gpus", (("state", "allocated"),))] == 2
    assert samples[("gpuq_gpus", (("state", "free"),))] == 2
    assert samples[("gpuq_account_running_gpus", (("account", "lab1"),))] == 2
    assert samples[("gpuq_node_power_watts", (("node", "gpu01"),))] == pytest.approx(406.0)
    assert ("gpuq_fairshare_factor", (("account", "lab1"), ("user", "alice"))) in samples
    assert families["gpuq_schedule_cycle_seconds"].type == "histogram"
    assert families["gpuq_dispatch_latency_seconds"].type == "histogram"
    api.ctx.settings.metrics_token = "scrape-secret"
    assert api.client.get("/metrics", headers=bearer("scrape-secret")).status_code == 200
    api.ctx.settings.metrics_public = True
    assert api.client.get("/metrics").status_code == 200


def test_the_final_reports_end_sample_is_charged_up_to_the_end_once(
        api: Api, node: dict) -> None:
    """Issue 16 item 7: heartbeats every minute, the job ends 45 s after the last one; its
    final report's end sample brings those 45 s (energy and sampled GPU-seconds). A
    repeat of the report charges nothing more."""
    alice = api.user("alice", "lab1")
    job = api.submit(alice, gpus=2)["id"]
    api.cycle()
    a, b = api.job(job)["gpu_indices"]

    def gpus(t: float) -> list[dict[str, Any]]:
        return [gpu(a, 90, 400, t), gpu(b, 0, 400, t)]

    run_trace(api, node, {job: gpus}, 600)
    api.clock.advance(45)
    report = {"attempt": 1, "state": "COMPLETED", "exit_code": 0,
              "end_sample": {"sample": {"energy_j": 800 * 645, "gpus": gpus(645)},
                             "ended_s_ago": 0.0}}
    url = f"/v1/nodes/gpu01/jobs/{job}/events"
    assert api.ok("POST", url, node, json=report)["state"] == "COMPLETED"
    api.clock.advance(30)
    api.cycle()
    api.ok("POST", url, node, json=report)  # a resent report
    api.clock.advance(30)
    api.cycle()
    acct = api.job(job)["accounting"]
    assert acct["final"] is True
    assert acct["energy_kwh"] == pytest.approx(800 * 645 / 3.6e6, abs=1e-6)
    assert acct["gpu_hours"] == pytest.approx(2 * 645 / HOUR, abs=1e-6)
    assert acct["idle_gpu_hours"] == pytest.approx(645 / HOUR, abs=1e-6)  # GPU b, to the end
    assert {g["index"]: g["energy_j"] for g in acct["gpus"]} == {a: 400 * 645, b: 400 * 645}
    total = api.ok("GET", "/v1/usage", api.admin)["total"]
    assert total["energy_kwh"] == pytest.approx(acct["energy_kwh"], abs=1e-6)


def test_an_older_workers_report_without_an_end_sample_stops_at_the_last_beat(
        api: Api, node: dict) -> None:
    alice = api.user("alice", "lab1")
    job = api.submit(alice, gpus=1)["id"]
    api.cycle()
    (g,) = api.job(job)["gpu_indices"]
    run_trace(api, node, {job: lambda t: [gpu(g, 90, 400, t)]}, 600)
    api.clock.advance(45)
    end(api, node, job)
    api.clock.advance(30)
    api.cycle()
    acct = api.job(job)["accounting"]
    assert acct["final"] is True
    assert acct["energy_kwh"] == pytest.approx(400 * 600 / 3.6e6, abs=1e-6)
    assert acct["gpu_hours"] == pytest.approx(645 / HOUR, abs=1e-6)
