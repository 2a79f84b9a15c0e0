"""Who may call which of job-intake's verbs: the decisions on a caller (``trainmaster.access``) and
the project a request, a job, a template or a dataset belongs to.  Pure: the handlers resolve the
caller and read the records, then ask these.

A thing's project: a job's and a template's ``spec.account``, a dataset's ``project``, an
account's name.  Reading takes viewer, changing takes member; a quota and the audit trail take
admin; crediting takes the cluster admin.  What a caller may not even see is answered as missing
(the handlers raise the same ``not_found`` as for a name nobody used), so a refusal never tells
that something exists."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

import msgspec

from trainmaster import audit
from trainmaster.access import Caller, Denied, Role, require, require_cluster_admin
from trainmaster.messages import JobRequest

T = TypeVar("T")
# the account of a spec that names none
SPEC_DEFAULT_ACCOUNT: str = next(f.default for f in msgspec.structs.fields(JobRequest) if f.name == "account")


def visible(caller: Caller, project: str) -> bool:
    return caller.may(project, Role.VIEWER)


def only_visible(caller: Caller, items: Iterable[T], project_of: Callable[[T], str]) -> list[T]:
    """The items of the projects ``caller`` views (all of them for the cluster admin)."""
    projects = caller.projects(Role.VIEWER)
    return list(items) if projects is None else [item for item in items if project_of(item) in projects]


def require_job_account(caller: Caller, account: str, what: str = "creating a job") -> None:
    """A job goes to ``account``: the caller must be a member of it.  A spec without an account
    goes to the default project; a person outside it is told to name one of its own."""
    if caller.may(account, Role.MEMBER):
        return
    if account == SPEC_DEFAULT_ACCOUNT and account not in caller.roles:
        mine = ", ".join(sorted(caller.projects(Role.MEMBER) or ())) or "none: ask an admin to add you to one"
        raise Denied("forbidden", f"the job goes to project {account!r} (a spec without an `account` goes there) "
                                  f"and you are not a member of it: set `account` to one of your projects ({mine})",
                     "account")
    require(caller, account, Role.MEMBER, what)


def require_save_as(caller: Caller, name: str, current_account: str | None, field: str = "save_as.name") -> None:
    """``save_as`` replaces the template of that name: only one the caller may change (None: no
    template of that name yet).  Template names are shared by every project, so the name is taken
    whoever holds it; the refusal does not say whose it is."""
    if current_account is not None and not caller.may(current_account, Role.MEMBER):
        raise Denied("forbidden", f"a template named {name!r} exists and you may not change it: "
                                  "choose another name", field)


def audit_scope(caller: Caller, project: str | None) -> frozenset[str] | None:
    """Which entries of ``tm.audit.list`` the caller reads.  With a project: that project's (admin
    of it; ``@cluster``: the cluster admin only), None meaning no filter beyond the project.
    Without: every entry for the cluster admin (None), else those of the projects it administers."""
    if project == audit.CLUSTER:
        require_cluster_admin(caller, "reading the cluster's audit entries (project @cluster)")
        return None
    if project is not None:
        require(caller, project, Role.ADMIN, "reading a project's audit trail", "project")
        return None
    return caller.projects(Role.ADMIN)
