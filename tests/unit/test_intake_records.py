"""job-intake's decisions over the records it keeps (request claims, templates, dataset listings),
the latest job of a name, reading a job request, and the reply to a verdict: plain functions."""

from __future__ import annotations

import json

import msgspec
import pytest

from services.job_intake.core import (
    RequestClaim,
    claim_request,
    claim_version,
    latest_job,
    next_dataset_version,
    read_job_request,
    read_planned_request,
    saved_template,
    updated_template,
    with_listed_version,
)
from services.job_intake.verdict import verdict_reply
from trainmaster.decoding import RequestError
from trainmaster.messages import (
    Dataset,
    DatasetVersion,
    DatasetVersionInfo,
    JobRequest,
    JobSummary,
    ManifestFile,
    SaveAs,
    Status,
    Template,
    TemplateUpdate,
    Violation,
)
from trainmaster.statemachine import new_record


# ------------------------------------------------------------------------------ request claims
def test_a_request_is_claimed_once():
    first = claim_request(None, "job-1")
    assert first == RequestClaim("job-1")
    assert claim_request(first, "job-2") is None  # a redelivery keeps the first claim


def test_the_first_version_recorded_on_a_claim_stays():
    claim = RequestClaim("job-1")
    assert claim_version(claim, claim, "V002") == RequestClaim("job-1", "V002")
    assert claim_version(RequestClaim("job-1", "V001"), claim, "V002") is None  # a concurrent delivery was first
    assert claim_version(None, claim, "V003") == RequestClaim("job-1", "V003")  # the claim expired meanwhile


def test_a_claim_is_stored_as_before():
    assert msgspec.json.encode(RequestClaim("job-1")) == b'{"job_id":"job-1","version":null}'


# ------------------------------------------------------------------------------ templates
def test_saving_a_template_creates_or_replaces_it_without_save_as():
    spec = JobRequest(name="a", save_as=SaveAs("t"))
    created = saved_template(None, "t", "first", spec, "job-1", now=10.0)
    assert (created.spec.save_as, created.created_at, created.updated_at) == (None, 10.0, 10.0)
    replaced = saved_template(created, "t", "second", JobRequest(name="b"), None, now=20.0)
    assert (replaced.spec.name, replaced.description, replaced.source_job) == ("b", "second", None)
    assert (replaced.created_at, replaced.updated_at) == (10.0, 20.0)


def test_updating_a_template_applies_overrides_and_keeps_what_is_not_given():
    old = Template(name="t", spec=JobRequest(name="a", parameters={"x": "1"}), created_at=1.0, updated_at=1.0,
                   description="kept")
    new = updated_template(old, TemplateUpdate(name="t", overrides={"parameters.y": 2}), 10_000, now=5.0)
    assert new.spec.parameters == {"x": "1", "y": "2"}  # normalised: parameter values are strings
    assert (new.description, new.updated_at, new.created_at) == ("kept", 5.0, 1.0)
    described = updated_template(old, TemplateUpdate(name="t", description="new", spec=JobRequest(name="b")),
                                 10_000, now=6.0)
    assert (described.spec.name, described.description) == ("b", "new")
    with pytest.raises(RequestError) as err:
        updated_template(old, TemplateUpdate(name="t", overrides={"resources.node_count": "many"}), 10_000, now=7.0)
    assert err.value.body.details[0].field == "resources.node_count"


# ------------------------------------------------------------------------------ dataset versions
def _version(number: str, files: int = 2) -> DatasetVersion:
    return DatasetVersion(dataset="d", version=number, location="/d", created_at=3.0,
                          files=[ManifestFile(f"f{i}", 10) for i in range(files)], total_bytes=10 * files,
                          description="snap")


def test_the_next_dataset_version_follows_the_highest_listed():
    dataset = Dataset(name="d", location="/d", created_at=1.0, updated_at=1.0)
    assert next_dataset_version(dataset) == "V001"
    listed = msgspec.structs.replace(dataset, versions=[DatasetVersionInfo("V001", 1.0, 1, 1),
                                                        DatasetVersionInfo("V003", 1.0, 1, 1)])
    assert next_dataset_version(listed) == "V004"


def test_a_published_version_is_listed_once_in_order():
    dataset = Dataset(name="d", location="/d", created_at=1.0, updated_at=1.0,
                      versions=[DatasetVersionInfo("V002", 1.0, 1, 1)])
    listed = with_listed_version(dataset, _version("V001"), now=9.0)
    assert listed is not None
    assert [v.version for v in listed.versions] == ["V001", "V002"]
    assert listed.versions[0] == DatasetVersionInfo("V001", 3.0, 2, 20, "snap")
    assert listed.updated_at == 9.0
    assert with_listed_version(listed, _version("V001"), now=10.0) is None


# ------------------------------------------------------------------------------ jobs
def _summary(job_id: str, version: str, created_at: float, name: str = "a") -> JobSummary:
    return JobSummary(id=job_id, name=name, version=version, status=Status.PENDING, created_at=created_at,
                      updated_at=created_at)


def test_the_latest_job_of_a_name_is_its_highest_version():
    jobs = [_summary("j2", "V002", 1.0), _summary("j10", "V010", 0.5), _summary("jb", "V099", 9.0, name="b"),
            _summary("j10b", "V010", 0.7)]
    assert latest_job(jobs, "a") == "j10b"  # equal versions: the newer one
    assert latest_job(jobs, "none") is None


def test_reading_a_job_request_normalises_it_and_checks_the_name():
    spec = read_job_request(json.dumps({"name": " iris ", "parameters": {"k": 3}}).encode(), 10_000)
    assert (spec.name, spec.parameters) == ("iris", {"k": "3"})
    with pytest.raises(RequestError) as err:
        read_job_request(b'{"description": "no name"}', 10_000)
    assert err.value.body.details[0].code == "required"


def test_a_plan_reads_a_request_with_no_name_or_a_bad_one_and_leaves_it_to_the_validator():
    assert read_planned_request(b'{"description": "no name"}', 10_000).name is None
    assert read_planned_request(json.dumps({"name": " bad name! "}).encode(), 10_000).name == "bad name!"
    with pytest.raises(RequestError):
        read_planned_request(b'{"name": 5}', 10_000)


def test_the_reply_to_a_verdict():
    record = new_record(job_id="job-1", name="a", version="V001", spec=JobRequest(name="a"), request_id="r",
                        now=1.0)
    assert json.loads(verdict_reply(record))["id"] == "job-1"
    failed = msgspec.structs.replace(record, status=Status.FAILED, failure_reason="bad",
                                     violations=[Violation("name", "x", "y")])
    reply = json.loads(verdict_reply(failed))
    assert reply["error"]["code"] == "validation_failed" and reply["error"]["message"] == "bad"
    assert reply["job"]["status"] == "Failed" and reply["error"]["details"][0]["field"] == "name"
