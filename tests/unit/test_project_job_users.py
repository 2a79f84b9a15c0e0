"""Who a node runs as (executor_agent.jobuser): its project's own user by default, a name derived
from the project (short enough for Linux, whatever the project's name), and never a stranger's
account of that name nor root; with ``shared``, the one TM_AGENT_JOB_USER."""

from __future__ import annotations

import hashlib
import re

from services.executor_agent.jobuser import (
    JobUsers,
    WantedUser,
    account_problem,
    project_user_comment,
    project_user_name,
    wanted_user,
)
from trainmaster.procs import JobIdentity

# what useradd accepts on every distribution (the strictest NAME_REGEX) and at most 32 characters
PORTABLE_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def test_a_project_user_is_named_after_a_digest_of_the_project() -> None:
    assert project_user_name("team-a") == "tmj-" + hashlib.sha256(b"team-a").hexdigest()[:12]
    assert project_user_name("team-a") == project_user_name("team-a")  # every agent derives the same
    assert project_user_name("team-a") != project_user_name("team-b")
    assert project_user_name("Team-A") != project_user_name("team-a")  # project names are case-sensitive


def test_any_project_name_gives_a_portable_user_name() -> None:
    for project in ("default", "team.ml", "x" * 64, "A.b_C-9." * 8, "_"):
        name = project_user_name(project)
        assert PORTABLE_USER.match(name) and len(name) == 16, (project, name)


def test_per_project_wants_the_projects_user_with_its_comment() -> None:
    assert wanted_user("per-project", "tm-job", "team.ml") == WantedUser(
        project_user_name("team.ml"), "trainmaster jobs of project team.ml")
    assert project_user_comment("team.ml") == "trainmaster jobs of project team.ml"


def test_shared_wants_the_one_job_user_whatever_its_comment() -> None:
    assert wanted_user("shared", "tm-job", "team-a") == WantedUser("tm-job")
    assert wanted_user("shared", "tm-job", "team-b") == WantedUser("tm-job")
    assert account_problem(WantedUser("tm-job"), 990, "") is None
    assert account_problem(WantedUser("site-jobs"), 2001, "managed by the site") is None


def test_an_existing_project_user_must_be_ours() -> None:
    wanted = wanted_user("per-project", "tm-job", "team-a")
    assert account_problem(wanted, 991, "trainmaster jobs of project team-a") is None
    stranger = account_problem(wanted, 991, "Alice")
    assert stranger and "not trainmaster's" in stranger and wanted.name in stranger
    # a digest shared by two projects would show here too: the comment names the other one
    assert account_problem(wanted, 991, "trainmaster jobs of project team-b")


def test_root_is_never_a_job_user() -> None:
    assert "never run as root" in (account_problem(wanted_user("per-project", "tm-job", "p"), 0,
                                                   project_user_comment("p")) or "")
    assert "never run as root" in (account_problem(WantedUser("toor"), 0, "") or "")


def test_shared_mode_hands_every_project_the_shared_identity() -> None:
    shared = JobIdentity("tm-job", 990, 990)
    users = JobUsers("shared", shared)
    assert users.for_project("team-a") is shared and users.for_project("team-b") is shared
