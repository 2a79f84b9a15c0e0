"""Whether a failed attempt of a job is retried: pure, read by the state machine.

A retry restarts the *whole* job as a new attempt (placed again, on any agents); the attempt
number is the fencing token that makes reports of the old attempt stale.  Retries used so far =
``record.attempt - 1`` (every placement is one attempt), so the decision needs nothing but the
record.
"""

from __future__ import annotations

from trainmaster.messages import JobRecord, RetryPolicy


def retries_used(record: JobRecord) -> int:
    return max(record.attempt - 1, 0)


def retries_left(record: JobRecord) -> int:
    return max(record.spec.retry.max_retries - retries_used(record), 0)


def exit_code_retryable(policy: RetryPolicy, exit_code: int) -> bool:
    """0 is success, never "retryable"; otherwise the code must be listed in the policy."""
    return exit_code != 0 and exit_code in policy.retry_exit_codes


def may_retry_exit(record: JobRecord, exit_code: int) -> bool:
    return exit_code_retryable(record.spec.retry, exit_code) and retries_left(record) > 0


def may_retry_agent_lost(record: JobRecord) -> bool:
    return record.spec.retry.retry_on_agent_lost and retries_left(record) > 0


def retry_note(record: JobRecord) -> str:
    """Appended to the reason of the entry that requeues the job: which retry this is."""
    return f"retrying (retry {retries_used(record) + 1} of {record.spec.retry.max_retries})"


def exhausted_note(record: JobRecord) -> str:
    """Appended to a failure that would have been retried had retries been left."""
    return f"no retries left ({record.attempt} attempts)"
