"""gpuq submit --array: one request for the whole array, its answer, and bad indices."""

from __future__ import annotations

import json
from pathlib import Path

from cli_fakeapi import FakeApi


def test_an_array_is_one_request(api: FakeApi, gpuq) -> None:
    r = gpuq("submit", "--array", "0-3", "-G", "1", "--", "python", "train.py")
    assert r.exit_code == 0, r.output
    assert r.stdout == "Submitted array job 1: 4 jobs (ids 1-4)\n"
    assert len(api.posts) == 1
    body = api.posts[0]
    assert body["array"] == "0-3" and body["command"] == ["python", "train.py"]
    assert body["idempotency_key"]
    assert [j["name"] for j in api.jobs.values()] == [f"job[{i}]" for i in range(4)]


def test_parsable_and_json(api: FakeApi, gpuq) -> None:
    r = gpuq("submit", "--array", "1,3", "--parsable", "--", "true")
    assert r.exit_code == 0, r.output
    assert r.stdout == "1\n"
    r = gpuq("submit", "-a", "5", "--json", "--", "true")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"array_job_id": 3, "name": "job", "indices": [5],
                                    "ids": [3]}


def test_array_in_a_script_directive(api: FakeApi, gpuq, tmp_path: Path) -> None:
    script = tmp_path / "sweep.sh"
    script.write_text("#!/bin/bash\n#GPUQ --array 0-9:5\necho $GPUQ_ARRAY_TASK_ID\n")
    r = gpuq("submit", str(script))
    assert r.exit_code == 0, r.output
    assert api.posts[0]["array"] == "0-9:5"
    assert r.stdout == "Submitted array job 1: 2 jobs (ids 1-2)\n"


def test_bad_indices_name_the_field(api: FakeApi, gpuq) -> None:
    r = gpuq("submit", "--array", "9-1", "--", "true")
    assert r.exit_code != 0
    assert "array" in r.output and "ends before it starts" in r.output
    assert not api.jobs
