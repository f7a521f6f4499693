"""QOS and preemption as users see them: gpuq submit --qos, gpuq show, gpuq q."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from cli_fakeapi import T0, FakeApi, make_job

from gpuq.cli.render import BORROW_NOTE, claim_text, job_detail, jobs_table, render, state_label

NOW = T0 + timedelta(hours=1)


def event(old: str | None, new: str, reason: str, minutes: int = 0) -> dict:
    return {"time": (T0 + timedelta(minutes=minutes)).isoformat(), "old_state": old,
            "new_state": new, "reason": reason}


def test_submit_qos(api: FakeApi, gpuq, tmp_path: Path) -> None:
    r = gpuq("submit", "--qos", "preemptible", "--", "true")
    assert r.exit_code == 0, r.stderr
    assert api.posts[0]["qos"] == "preemptible"
    assert gpuq("submit", "--", "true").exit_code == 0
    assert "qos" not in api.posts[1]  # the account's default QOS
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\n#GPUQ --qos high\necho\n")
    assert gpuq("submit", str(script)).exit_code == 0
    assert gpuq("submit", "--qos", "NORMAL", str(script)).exit_code == 0  # command line wins
    assert [p.get("qos") for p in api.posts[2:]] == ["high", "normal"]
    r = gpuq("submit", "--qos", "urgent", "--", "true")
    assert r.exit_code == 2 and "'urgent' is not one of 'normal', 'preemptible', 'high'" \
        in r.stderr
    script.write_text("#!/bin/sh\n#GPUQ --qos urgent\necho\n")
    r = gpuq("submit", str(script))
    assert r.exit_code == 2 and r.stderr.startswith("gpuq: #GPUQ line 2: ")


def test_submit_says_the_qos_the_job_got(api: FakeApi, gpuq) -> None:
    r = gpuq("submit", "--qos", "preemptible", "--idempotency-key", "k", "--", "true")
    assert r.stdout == "Submitted job 1\n"  # the fake ignores the QOS: normal
    api.jobs[1]["qos"] = "preemptible"
    r = gpuq("submit", "--qos", "preemptible", "--idempotency-key", "k", "--", "true")
    assert r.stdout == "Submitted job 1 (QOS preemptible)\n"


def test_show_a_borrowing_job_being_preempted() -> None:
    job = make_job(5, state="RUNNING", reason="", node="gpu01", gpu_indices=[0, 1],
                   started_at=T0, qos="preemptible", borrowed_grant=3, borrowed_gpus=2,
                   preempt_requested=True, preempt_reason="grant 3 of qlab needs its GPUs",
                   preemptions=1, attempt=2, events=[
                       event(None, "PENDING", "submitted"),
                       event("PENDING", "DISPATCHED", "", 1),
                       event("DISPATCHED", "PREEMPTED", "grant 3 of qlab needs its GPUs", 5),
                       event("PREEMPTED", "REQUEUED", "preempted; requeued", 5),
                       event("REQUEUED", "PENDING", "back in the queue; keeps its submit "
                                                    "time", 5),
                       event("PENDING", "DISPATCHED", "", 6),
                       event("DISPATCHED", "RUNNING", "", 7)])
    text = job_detail(job, NOW).splitlines()
    assert "State:       PREEMPTING" in text
    assert "Attempt:     2 (requeued after 1 preemption)" in text
    assert "QOS:         preemptible (may use idle reserved GPUs; preempted first)" in text
    assert "Borrowing:   borrowing 2 reserved GPUs of grant 3: may be preempted" in text
    assert ("Preemption:  being preempted: grant 3 of qlab needs its GPUs (SIGTERM, SIGKILL "
            "after the grace period; then requeued)") in text
    assert "Preemptions: 1" in text
    events = [line.split()[2:4] for line in text[text.index("Events:") + 2:]]
    assert ["DISPATCHED", "PREEMPTED"] in events
    assert ["PREEMPTED", "REQUEUED"] in events and ["REQUEUED", "PENDING"] in events


def test_show_a_job_waiting_for_preemption(api: FakeApi, gpuq) -> None:
    api.jobs[9] = make_job(9, reason="Preempting", qos="high", claim={
        "node": "gpu01", "gpus": [0, 1], "victims": [5, 6], "grant": None})
    out = gpuq("show", "9").stdout.splitlines()
    assert "Preemption:  waiting for jobs 5, 6 to stop (preemption) to free GPUs 0,1 on " \
           "gpu01" in out
    assert "QOS:         high" in out
    assert claim_text({"node": "gpu02", "gpus": [3], "victims": [5], "grant": 4}) == \
        "waiting for job 5 to stop (preemption) to free GPUs 3 on gpu02 for grant 4"


def test_show_a_job_preempted_twice_and_a_node_failure() -> None:
    events = [event("RUNNING", "PREEMPTED", "x"), event("PREEMPTED", "REQUEUED", "x"),
              event("RUNNING", "NODE_FAIL", "y"), event("NODE_FAIL", "REQUEUED", "y"),
              event("RUNNING", "PREEMPTED", "z"), event("PREEMPTED", "REQUEUED", "z")]
    text = job_detail(make_job(1, attempt=4, preemptions=2, events=events), NOW)
    assert "Attempt:     4 (requeued after 2 preemptions, 1 node failure)" in text
    assert "Preemptions: 2" in text
    ended = make_job(2, state="PREEMPTED", reason="a high-QOS job needed the GPUs",
                     requeue=False, preemptions=1, ended_at=T0)
    text = job_detail(ended, NOW)
    assert "State:       PREEMPTED  (a high-QOS job needed the GPUs)" in text
    assert "Borrowing" not in text and "Preemption:" not in text


def test_cancel_wins_over_preemption_in_the_label() -> None:
    job = make_job(1, state="RUNNING", cancel_requested=True, preempt_requested=True)
    assert state_label(job) == "CANCELLING"
    assert state_label(make_job(1, state="PENDING", preempt_requested=True)) == "PENDING"


def test_q_marks_borrowing_jobs_and_shows_qos(api: FakeApi, gpuq) -> None:
    api.jobs[1] = make_job(1, state="RUNNING", reason="", node="gpu01", gpu_indices=[0],
                           started_at=T0, qos="preemptible", borrowed_grant=3, borrowed_gpus=1)
    api.jobs[2] = make_job(2, state="PENDING", reason="Preempting", qos="high")
    api.jobs[3] = make_job(3, state="PENDING", reason="Priority", priority=1)
    out = [line.split() for line in gpuq("q").stdout.splitlines()]
    del out[1][6]  # the running job's time
    assert out == [
        ["JOBID", "NAME", "USER", "ACCOUNT", "QOS", "STATE", "TIME", "GPUS",
         "NODE(GPUS)/REASON"],
        ["1", "train", "alice", "lab1", "preemptible", "RUNNING", "1", "gpu01(0)*"],
        ["2", "train", "alice", "lab1", "high", "PENDING", "0:00", "1", "(Preempting)"],
        ["3", "train", "alice", "lab1", "PENDING", "0:00", "1", "(Priority)"],
        BORROW_NOTE.split(),
    ]


def test_q_without_qos_or_borrowing_is_as_before() -> None:
    jobs = [make_job(1, state="RUNNING", node="gpu01", gpu_indices=[0], started_at=T0)]
    out = render(jobs_table(jobs, NOW)).splitlines()
    assert out[0].split() == ["JOBID", "NAME", "USER", "ACCOUNT", "STATE", "TIME", "GPUS",
                              "NODE(GPUS)/REASON"]
    assert out[1].split()[-1] == "gpu01(0)"


def test_q_state_filter_knows_preempted(api: FakeApi, gpuq) -> None:
    assert gpuq("q", "--state", "preempted").exit_code == 0
    assert api.queries == [[("state", "PREEMPTED"), ("view", "brief")]]
