"""The chaos suite's invariant checks really fail: each is fed a record of the breakage it
exists to catch (and a clean record, which passes)."""

from __future__ import annotations

from collections import Counter

from chaos import checks
from chaos.model import JobEvent, NodeRun, Observation, Receipt, RecordView, Submission
from chaos.table import Row, format_table


def ev(job: str, n: int, status: str, t: float, seq: int) -> JobEvent:
    kinds = {"Succeeded": "tm.job.succeeded", "Failed": "tm.job.failed", "Stopped": "tm.job.stopped"}
    return JobEvent(f"{job}.{n}", job, kinds.get(status, f"tm.job.{status.lower()}"), status, t, seq)


def clean() -> Observation:
    """Two jobs that ran and succeeded, billed once, notified once, each node run once."""
    obs = Observation()
    seq = 0
    for i, job in enumerate(("job-a", "job-b")):
        obs.submissions.append(Submission(f"req-{i}", "short", 100.0 + i, job))
        for n, status in enumerate(("Initializing", "Pending", "Scheduled", "Running", "Succeeded")):
            seq += 1
            obs.events.append(ev(job, n, status, 101.0 + i + n, seq))
        obs.records[job] = RecordView(job, "Succeeded", ran=True, billed=True)
        obs.charges[job] = 1
        obs.node_runs.append(NodeRun(job, 1, 0, 1000 + i, 104.0 + i, 105.0 + i, clash=False))
        obs.receipts.append(Receipt(f"msg_{i}", f"{job}.4", job, 106.0 + i))
    return obs


def found(obs: Observation) -> Counter[str]:
    return checks.count(checks.check_all(obs))


def test_a_clean_record_passes() -> None:
    assert checks.check_all(clean()) == []


def test_duplicate_terminal_events_are_flagged() -> None:
    obs = clean()
    obs.events.append(ev("job-a", 5, "Succeeded", 110.0, 99))
    assert found(obs)[checks.EVENT_DUPLICATE] == 1


def test_a_second_different_terminal_state_is_flagged() -> None:
    obs = clean()
    obs.events.append(ev("job-a", 5, "Failed", 110.0, 99))
    counts = found(obs)
    assert counts[checks.TERMINAL_MISMATCH] == 1 and counts[checks.EVENT_DUPLICATE] == 1


def test_a_terminal_record_without_its_event_is_flagged() -> None:
    obs = clean()
    obs.events = [e for e in obs.events if not (e.job_id == "job-b" and e.status == "Succeeded")]
    assert found(obs)[checks.EVENT_MISSING] == 1


def test_billed_event_is_not_a_terminal_event() -> None:
    obs = clean()
    obs.events.append(JobEvent("job-a.5", "job-a", "tm.job.billed", "Succeeded", 111.0, 100))
    assert checks.check_all(obs) == []


def test_lost_requests_and_unfinished_jobs_are_flagged() -> None:
    obs = clean()
    obs.submissions.append(Submission("req-lost", "short", 120.0))
    obs.submissions.append(Submission("req-3", "long", 121.0, "job-c"))
    obs.records["job-c"] = RecordView("job-c", "Running", ran=True, billed=False)
    counts = found(obs)
    assert counts[checks.REQUEST_LOST] == 1 and counts[checks.NOT_TERMINAL] == 1
    row = Row("x", "y", 3, 1, counts=counts, findings=checks.check_all(obs))
    assert row.lost == 2 and row.verdict == "FAIL"


def test_a_rejected_request_is_not_lost() -> None:
    obs = clean()
    obs.submissions.append(Submission("req-bad", "short", 120.0, rejected="validation_failed"))
    assert checks.check_all(obs) == []


def test_a_node_lock_clash_is_a_concurrent_run() -> None:
    obs = clean()
    obs.node_runs.append(NodeRun("job-a", 1, 0, 2000, 104.5, None, clash=True))
    assert found(obs)[checks.CONCURRENT_NODE] == 1


def test_overlapping_intervals_of_one_node_are_a_concurrent_run() -> None:
    obs = clean()
    obs.node_runs.append(NodeRun("job-a", 1, 0, 2000, 104.5, 106.0, clash=False))
    assert found(obs)[checks.CONCURRENT_NODE] == 1


def test_sequential_runs_and_other_attempts_are_not_concurrent() -> None:
    obs = clean()
    obs.node_runs.append(NodeRun("job-a", 1, 0, 2000, 105.5, 106.0, clash=False))  # after the first ended
    obs.node_runs.append(NodeRun("job-b", 2, 0, 2001, 106.0, 107.0, clash=False))  # a retry, later
    assert found(obs)[checks.CONCURRENT_NODE] == 0


def test_overlapping_attempts_are_reported_but_do_not_fail() -> None:
    obs = clean()
    obs.node_runs.append(NodeRun("job-a", 2, 0, 2000, 104.2, 106.0, clash=False))
    findings = checks.check_all(obs)
    assert checks.count(findings)[checks.ATTEMPTS_OVERLAP] == 1 and not checks.failed(findings)


def test_double_missing_and_unexpected_charges_are_flagged() -> None:
    obs = clean()
    obs.charges["job-a"] = 2
    del obs.charges["job-b"]
    obs.submissions.append(Submission("req-3", "short", 121.0, "job-c"))
    obs.events.append(ev("job-c", 1, "Failed", 122.0, 50))
    obs.receipts.append(Receipt("msg_c", "job-c.1", "job-c", 123.0))
    obs.records["job-c"] = RecordView("job-c", "Failed", ran=False, billed=False)
    obs.charges["job-c"] = 1
    counts = found(obs)
    assert counts[checks.CHARGE_DUPLICATE] == 1
    assert counts[checks.CHARGE_MISSING] == 1
    assert counts[checks.CHARGE_UNEXPECTED] == 1


def test_webhooks_missing_or_with_a_changed_id_are_flagged() -> None:
    obs = clean()
    obs.receipts = [r for r in obs.receipts if r.job_id != "job-b"]
    obs.receipts.append(Receipt("msg_other", "job-a.4", "job-a", 107.0))  # a repeat with another id
    counts = found(obs)
    assert counts[checks.WEBHOOK_MISSING] == 1 and counts[checks.WEBHOOK_ID_CHANGED] == 1


def test_a_repeat_with_the_same_webhook_id_is_fine() -> None:
    obs = clean()
    obs.receipts.append(Receipt("msg_0", "job-a.4", "job-a", 107.0))
    assert checks.check_all(obs) == []


def test_leftover_processes_are_flagged() -> None:
    obs = clean()
    obs.leftovers = ["4242 python -m services.scheduler"]
    assert found(obs)[checks.LEFTOVER] == 1


def test_timing_in_flight_recover_and_settle() -> None:
    obs = clean()  # job-a: acked 100, ends 105; job-b: acked 101, ends 106
    assert checks.in_flight(obs, 100.5) == ["job-a"]
    assert checks.recover_s(obs, 100.5) == 106.0 - 100.5
    assert checks.settle_s(obs, 100.5) == 105.0 - 100.5
    obs.events = [e for e in obs.events if e.job_id != "job-a" or e.status != "Succeeded"]
    obs.records["job-a"] = RecordView("job-a", "Running", ran=True, billed=False)
    assert checks.settle_s(obs, 100.5) is None


def test_the_table_shows_duplicates_and_lost() -> None:
    obs = clean()
    obs.events.append(ev("job-a", 5, "Succeeded", 110.0, 99))
    obs.submissions.append(Submission("req-lost", "short", 120.0))
    findings = checks.check_all(obs)
    row = Row("kill-x", "x (pid 1)", 2, 1, counts=checks.count(findings), recover_s=1.25, findings=findings)
    text = format_table([row])
    assert "| kill-x | x (pid 1) | 2 | 1 | 1 | 1 / 0 / 0 |" in text and "| 1.2 | never | FAIL |" in text
