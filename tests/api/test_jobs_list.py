"""The queue listing (built from columns, not ORM objects) shows what `show` shows."""

from __future__ import annotations

from tests.api.conftest import Api


def test_listing_matches_show_for_every_kind_of_job(api: Api) -> None:
    alice = api.user("alice", "lab1")
    bob = api.user("bob", "lab2")
    node = api.node("gpu01", gpus=4)
    running = api.submit(alice, gpus=2, environment={"A": "1"})
    waiting = api.submit(bob, gpus=4, nice=5)
    done = api.submit(alice, gpus=1, command=None, script="#!/bin/sh\necho hi\n")
    api.cycle()
    gpus = [{"index": i, "utilization_pct": 50.0, "memory_used_mib": 1000.0, "power_w": 200.0,
             "energy_j": 2000.0, "energy_method": "counter"} for i in (0, 1)]
    for _ in range(2):
        sample = {"gpus": gpus, "energy_j": 4000.0}
        api.ok("POST", "/v1/nodes/gpu01/heartbeat", node, json={
            "jobs": [{"job_id": j, "attempt": 1, "state": "RUNNING", "sample": sample}
                     for j in (running["id"], done["id"])], "gpus": []})
        api.clock.advance(30)
    api.ok("POST", f"/v1/nodes/gpu01/jobs/{done['id']}/events", node,
           json={"attempt": 1, "state": "COMPLETED", "exit_code": 0})
    api.cycle()
    for who in (alice, bob, api.admin):
        listed = api.ok("GET", "/v1/jobs", who)
        assert [j["id"] for j in listed] == [done["id"], waiting["id"], running["id"]]
        for j in listed:
            shown = api.ok("GET", f"/v1/jobs/{j['id']}", who)
            shown.pop("events")
            # The listing leaves out the script and the environment (the job's page has
            # them); the rest is the same.
            assert j == {**shown, "events": None, "script": None, "environment": None}
    assert api.job(running["id"])["accounting"]["gpus"]
    assert api.job(waiting["id"])["priority_factors"] is not None
