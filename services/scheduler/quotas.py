"""Pure quota arithmetic: what a project (account) holds, and whether a placement would take it
over its quota (``trainmaster.messages.AccountQuota``: at most so many CPUs, GPUs, nodes and jobs
at once, each optional).

A job whose placement would go over a limit stays Pending: the account's other jobs ending frees
room, or the quota is raised.  Only the limits the job adds to are checked, so an account held
over a limit lowered under it (the quota changed while its jobs ran) grows no further there, and
its jobs that need none of that resource still start.  No I/O and no clock here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.scheduler.placement import Demand
from trainmaster.accounts import QUOTA_LIMITS, amount
from trainmaster.messages import AccountQuota

EPSILON = 1e-6  # fractional CPUs add up with rounding crumbs


@dataclass(frozen=True, slots=True)
class Use:
    """What placed jobs hold, as the quota counts it."""

    cpus: float = 0.0
    gpus: int = 0
    nodes: int = 0
    jobs: int = 0

    def __add__(self, other: Use) -> Use:
        return Use(self.cpus + other.cpus, self.gpus + other.gpus, self.nodes + other.nodes, self.jobs + other.jobs)

    def __sub__(self, other: Use) -> Use:
        return Use(self.cpus - other.cpus, self.gpus - other.gpus, self.nodes - other.nodes, self.jobs - other.jobs)

    def empty(self) -> bool:
        return abs(self.cpus) < EPSILON and self.gpus == 0 and self.nodes == 0 and self.jobs == 0

    @staticmethod
    def of(per_node: Demand, nodes: int) -> Use:
        """One job of ``nodes`` nodes, each holding ``per_node``."""
        return Use(per_node.cpus * nodes, per_node.gpus * nodes, nodes, 1)


NOTHING = Use()


def quota_block(quota: AccountQuota, held: Use, wanted: Use) -> str | None:
    """The limit of ``quota`` (``cpus``, ``gpus``, ``nodes``, ``jobs``) that placing a job holding
    ``wanted`` would go over, for an account holding ``held``; None when it stays within."""
    for limit in QUOTA_LIMITS:
        most = getattr(quota, limit)
        want = getattr(wanted, limit)
        if most is not None and want > 0 and getattr(held, limit) + want > most + EPSILON:
            return limit
    return None


def quota_reason(account: str, quota: AccountQuota, limit: str, wanted: Use) -> str:
    """Why the job waits, naming the limit and the job's need, not what the account holds now: it
    stays the same while the job waits for the same limit, so it is written once."""
    most, want = getattr(quota, limit), getattr(wanted, limit)
    if want > most + EPSILON:
        return (f"the quota of account {account} allows at most {amount(most, limit)} at once and this job "
                f"needs {amount(want, limit)}: it waits until the quota is raised")
    need = "" if limit == "jobs" else f" (this job needs {amount(want, limit)})"
    return f"held by the quota of account {account}: at most {amount(most, limit)} at once{need}"


class QuotaBook:
    """The accounts' use during one pass: what they held before it plus what it placed for them."""

    def __init__(self, quotas: Mapping[str, AccountQuota], held: Mapping[str, Use]) -> None:
        self.quotas = quotas
        self.held = held
        self.placed: dict[str, Use] = {}

    def use(self, account: str) -> Use:
        return self.held.get(account, NOTHING) + self.placed.get(account, NOTHING)

    def block(self, account: str, wanted: Use) -> str | None:
        """The limit a job of ``account`` holding ``wanted`` would go over now, or None."""
        quota = self.quotas.get(account)
        return None if quota is None else quota_block(quota, self.use(account), wanted)

    def reason(self, account: str, limit: str, wanted: Use) -> str:
        return quota_reason(account, self.quotas[account], limit, wanted)

    def charge(self, account: str, wanted: Use) -> None:
        self.placed[account] = self.placed.get(account, NOTHING) + wanted
