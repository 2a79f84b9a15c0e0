"""Project roles on job-intake's verbs, on a secured bus with real processes: alice (member of
team-a), victor (viewer of team-a), bob (member of team-b), anna (admin of team-a) and the cluster
admin.  Every attack fails to do harm and says why: a job created for another project is stored
nowhere, another project's jobs, templates, datasets and accounts answer as missing ones do, a
viewer cannot change anything, money and quotas take the cluster admin and the project's admin,
and the audit trail names the person who tried."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from people_fixtures import TOPO, PeopleStack, people  # noqa: F401
from support import assert_error, call, eventually, iris_job, unique

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def known(nc: NATS) -> None:
    """job-intake follows tm_users: a person just written is known within moments."""
    async def answered() -> bool:
        return "error" not in await call(nc, TOPO.algorithms("list"), {})

    await eventually(answered, what="job-intake to know the person")


async def team(people: PeopleStack) -> dict[str, NATS]:  # noqa: F811
    admin = await people.admin()
    for project in ("team-a", "team-b"):  # the validator wants the account to exist
        await call(admin, TOPO.accounts("credit"), {"name": project, "amount": 10, "credit_id": "start"})
    them = {"admin": admin,
            "alice": await people.person("alice", {"team-a": "member"}),
            "victor": await people.person("victor", {"team-a": "viewer"}),
            "bob": await people.person("bob", {"team-b": "member"}),
            "anna": await people.person("anna", {"team-a": "admin"})}
    for name in ("alice", "victor", "bob", "anna"):
        await known(them[name])
    return them


def same_reply(reply: dict, other: dict, name: str, other_name: str) -> None:
    """Two replies equal but for the name each asked about."""
    assert json.dumps(reply).replace(name, "?") == json.dumps(other).replace(other_name, "?")


async def trail(nc: NATS, **query: Any) -> list[dict]:
    return (await call(nc, TOPO.audit_list, {"limit": 1000, **query}))["entries"]


async def test_jobs_of_a_project_are_its_own(people: PeopleStack, tmp_path: Path) -> None:  # noqa: F811
    them = await team(people)
    admin, alice, victor, bob = them["admin"], them["alice"], them["victor"], them["bob"]
    name = unique("iris")
    job = await call(alice, TOPO.jobs("create"), iris_job(tmp_path, name, account="team-a"),
                     headers={"Nats-Msg-Id": "alice-req-1"})
    assert job["name"] == name and "error" not in job, job

    # bob creates a job for team-a: refused, and nothing is stored (no job, no version taken)
    stolen = unique("stolen")
    refused = await call(bob, TOPO.jobs("create"), iris_job(tmp_path, stolen, account="team-a"))
    error = assert_error(refused, "forbidden", "account")
    assert "not a member of project 'team-a'" in error["message"]
    assert (await call(admin, TOPO.jobs("list"), {"name": stolen}))["total"] == 0
    plan = await call(admin, TOPO.jobs("plan"), iris_job(tmp_path, stolen, account="team-b"))
    assert plan["next_version"] == "V001"
    # without an account the job would go to "default": bob is told to name one of his projects
    nameless = iris_job(tmp_path, stolen)
    nameless.pop("account", None)
    error = assert_error(await call(bob, TOPO.jobs("create"), nameless), "forbidden", "account")
    assert "set `account` to one of your projects (team-b)" in error["message"]
    assert_error(await call(bob, TOPO.jobs("plan"), iris_job(tmp_path, stolen, account="team-a")),
                 "forbidden", "account")

    # alice's job does not exist for bob: exactly the reply to a job that does not exist
    missing_id = "job-000000000000deadbeef"
    for verb, body in (("get", {}), ("stop", {"reason": "mine now"})):
        theirs = await call(bob, TOPO.jobs(verb), {"id": job["id"], **body})
        missing = await call(bob, TOPO.jobs(verb), {"id": missing_id, **body})
        assert_error(theirs, "not_found", "id")
        same_reply(theirs, missing, job["id"], missing_id)
    assert_error(await call(bob, TOPO.jobs("new_version"), {"name": name}), "not_found", "name")
    # a request id bob reuses is his own: he gets a job of his, never alice's
    his = await call(bob, TOPO.jobs("create"), iris_job(tmp_path, unique("bobs"), account="team-b"),
                     headers={"Nats-Msg-Id": "alice-req-1"})
    assert his["id"] != job["id"] and "error" not in his, his
    listed = await call(bob, TOPO.jobs("list"), {})
    assert [j["id"] for j in listed["jobs"]] == [his["id"]] and listed["total"] == 1

    # victor, viewer of team-a, reads the job but cannot stop it or make a new version
    assert (await call(victor, TOPO.jobs("get"), {"id": job["id"]}))["id"] == job["id"]
    assert job["id"] in {j["id"] for j in (await call(victor, TOPO.jobs("list"), {}))["jobs"]}
    error = assert_error(await call(victor, TOPO.jobs("stop"), {"id": job["id"]}), "forbidden", "id")
    assert "viewer of project 'team-a'" in error["message"]
    assert_error(await call(victor, TOPO.jobs("new_version"), {"name": name}), "forbidden", "name")
    # alice may not move her job to bob's project; the cluster admin sees every job
    moved = await call(alice, TOPO.jobs("new_version"), {"name": name, "overrides": {"account": "team-b"}})
    assert_error(moved, "forbidden", "overrides.account")
    assert (await call(admin, TOPO.jobs("get"), {"id": his["id"]}))["spec"]["account"] == "team-b"
    assert (await call(admin, TOPO.jobs("list"), {}))["total"] == 2
    stopped = await call(alice, TOPO.jobs("stop"), {"id": job["id"], "reason": "done"})
    assert stopped["status"] in ("Stopped", "Stopping"), stopped

    # the trail names the people by their records, the refused attempts with why
    async def bobs_attempt() -> list[dict] | None:
        found = [e for e in await trail(admin, project="team-a") if e["actor"] == "user/bob"]
        return found if any(e["action"] == "job_create" for e in found) else None

    attempts = await eventually(bobs_attempt, what="bob's refused create in team-a's trail")
    create = next(e for e in attempts if e["action"] == "job_create")
    assert create["outcome"] == "refused" and "not a member" in create["reason"]
    actors = {(e["actor"], e["action"], e["outcome"]) for e in await trail(admin, project="team-a")}
    assert ("user/alice", "job_create", "done") in actors and ("user/victor", "job_stop", "refused") in actors


async def test_accounts_datasets_templates_and_the_audit_trail(people: PeopleStack, tmp_path: Path) -> None:  # noqa: F811
    them = await team(people)
    admin, alice, victor, bob, anna = them["admin"], them["alice"], them["victor"], them["bob"], them["anna"]

    # money is the cluster admin's, a quota the project admin's
    error = assert_error(await call(bob, TOPO.accounts("credit"), {"name": "team-b", "amount": 1000}), "forbidden")
    assert "cluster admin" in error["message"]
    assert (await call(admin, TOPO.accounts("get"), {"name": "team-b"}))["balance"] == 10
    assert_error(await call(alice, TOPO.accounts("quota"), {"name": "team-a", "gpus": 99}), "forbidden", "name")
    quota = await call(anna, TOPO.accounts("quota"), {"name": "team-a", "cpus": 8})
    assert quota["quota"]["cpus"] == 8, quota
    assert [a["name"] for a in (await call(bob, TOPO.accounts("list"), {}))["accounts"]] == ["team-b"]
    same_reply(await call(bob, TOPO.accounts("get"), {"name": "team-a"}),
               await call(bob, TOPO.accounts("get"), {"name": "team-zz"}), "team-a", "team-zz")

    # a dataset of team-a: its members make it, its viewers read it, nobody else sees it
    folder = tmp_path / "iris-data"
    folder.mkdir()
    (folder / "iris.csv").write_text("a,b\n1,2\n")
    dataset = unique("iris-ds")
    made = await call(alice, TOPO.datasets("create"), {"name": dataset, "location": str(folder), "project": "team-a"})
    assert made["project"] == "team-a", made
    assert (await call(alice, TOPO.datasets("publish"), {"name": dataset}))["version"] == "V001"
    assert (await call(victor, TOPO.datasets("get"), {"name": dataset}))["project"] == "team-a"
    assert_error(await call(victor, TOPO.datasets("publish"), {"name": dataset}), "forbidden", "name")
    nobody = unique("none")
    same_reply(await call(bob, TOPO.datasets("get"), {"name": dataset}),
               await call(bob, TOPO.datasets("get"), {"name": nobody}), dataset, nobody)
    assert_error(await call(bob, TOPO.datasets("version"), {"name": dataset, "version": "V001"}), "not_found")
    assert_error(await call(bob, TOPO.datasets("publish"), {"name": dataset}), "not_found", "name")
    assert dataset not in {d["name"] for d in (await call(bob, TOPO.datasets("list"), {}))["datasets"]}
    intruder = unique("bobs-ds")
    error = assert_error(await call(bob, TOPO.datasets("create"), {"name": intruder, "location": str(folder),
                                                                   "project": "team-a"}), "forbidden", "project")
    assert intruder not in {d["name"] for d in (await call(admin, TOPO.datasets("list"), {}))["datasets"]}
    # bob's own job cannot train on team-a's dataset: the validator names the dataset's project
    on_theirs = iris_job(tmp_path, unique("on-theirs"), account="team-b",
                         data=[{"dataset": dataset, "version": "V001"}])
    failed = await call(bob, TOPO.jobs("create"), on_theirs)
    error = assert_error(failed, "validation_failed", "data[0].dataset", "dataset_not_allowed")
    assert "project 'team-a'" in json.dumps(error["details"])

    # a template is its spec's project's: saved by alice's job, invisible to bob, read-only to victor
    template = unique("tpl")
    spec = iris_job(tmp_path, unique("saved"), account="team-a", save_as={"name": template})
    assert "error" not in await call(alice, TOPO.jobs("create"), spec)
    assert (await call(victor, TOPO.templates("get"), {"name": template}))["spec"]["account"] == "team-a"
    assert_error(await call(victor, TOPO.templates("delete"), {"name": template}), "forbidden", "name")
    same_reply(await call(bob, TOPO.templates("get"), {"name": template}),
               await call(bob, TOPO.templates("get"), {"name": nobody}), template, nobody)
    assert_error(await call(bob, TOPO.templates("delete"), {"name": template}), "not_found", "name")
    assert_error(await call(bob, TOPO.templates("update"), {"name": template, "description": "mine"}),
                 "not_found", "name")
    assert template not in {t["name"] for t in (await call(bob, TOPO.templates("list"), {}))["templates"]}
    overwrite = iris_job(tmp_path, unique("over"), account="team-b", save_as={"name": template})
    assert_error(await call(bob, TOPO.jobs("create"), overwrite), "forbidden", "save_as.name")
    moved = await call(alice, TOPO.templates("update"), {"name": template, "overrides": {"account": "team-b"}})
    assert_error(moved, "forbidden", "overrides.account")
    assert (await call(admin, TOPO.templates("get"), {"name": template}))["spec"]["account"] == "team-a"

    # the audit trail: a project's for its admin, the cluster's for the cluster admin
    error = assert_error(await call(bob, TOPO.audit_list, {"project": "team-a"}), "forbidden", "project")
    assert_error(await call(alice, TOPO.audit_list, {"project": "team-a"}), "forbidden", "project")
    assert_error(await call(anna, TOPO.audit_list, {"project": "@cluster"}), "forbidden")
    assert await trail(bob) == []  # he administers nothing

    async def annas_view() -> list[dict] | None:
        entries = await trail(anna)
        return entries if any(e["action"] == "dataset_create" and e["actor"] == "user/bob" for e in entries) else None

    entries = await eventually(annas_view, what="bob's refused dataset create in team-a's trail")
    assert {e["project"] for e in entries} == {"team-a"}
    assert {(e["action"], e["actor"], e["outcome"]) for e in entries} >= {
        ("account_quota", "user/alice", "refused"), ("account_quota", "user/anna", "done"),
        ("dataset_create", "user/alice", "done"), ("dataset_publish", "user/victor", "refused"),
        ("dataset_create", "user/bob", "refused")}
    credits = await trail(admin, project="team-b")
    assert ("account_credit", "user/bob", "refused") in {(e["action"], e["actor"], e["outcome"]) for e in credits}


async def test_unknown_credentials_are_refused_everywhere(people: PeopleStack) -> None:  # noqa: F811
    creds, _ = people.secured.person_creds("mallory")  # a key of the people's account no user record holds
    mallory = await people.connect_as("mallory", creds)
    for subject in (TOPO.algorithms("list"), TOPO.jobs("list"), TOPO.datasets("list")):
        error = assert_error(await call(mallory, subject, {}), "unauthorized")
        assert "belong to no user" in error["message"]
