"""Preset algorithms and datasets through the whole pipeline (job-intake, validator, scheduler and a
real executor agent): each preset really trains on the iris sample and writes its model and
metrics.json; a dataset job trains on exactly its version's files; a job that ran is billed."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from support import IRIS, Services, call, eventually

from trainmaster.topology import Topology

pytestmark = pytest.mark.integration
TOPO = Topology()
AGENT = "preset-agent"


@pytest.fixture(scope="module")
def stack(module_nats_server: str, module_services: Services) -> str:
    module_services.start(module_nats_server, "job_intake", "validator", "scheduler", "executor_agent",
                          per_service_env={"executor_agent": {"TM_AGENT_ID": AGENT}})
    return module_nats_server


@pytest.fixture
async def nc(stack: str) -> AsyncIterator[NATS]:
    client = await nats.connect(stack, connect_timeout=5)
    try:
        yield client
    finally:
        await client.close()



def preset_job(tmp_path: Path, preset: str, data: list[dict] | None = None, **parameters: object) -> dict:
    name = f"{preset}-{uuid.uuid4().hex[:6]}"
    return {
        "name": name,
        "data": data or [{"path": str(IRIS / "data")}],
        "algorithm": {"source": "preset", "preset": preset},
        "parameters": {"label_column": "species", **parameters},
        "output_path": str(tmp_path / "out" / name),
        "log_path": str(tmp_path / "logs" / name),
    }


async def run_to_end(nc: NATS, spec: dict, timeout_s: float = 25) -> dict:
    created = await call(nc, TOPO.jobs("create"), spec)
    assert created.get("status") == "Pending", created

    async def ended():
        job = await call(nc, TOPO.jobs("get"), {"id": created["id"]})
        return job if job["status"] in ("Succeeded", "Failed", "Stopped") else None

    return await eventually(ended, timeout_s, 0.2, what=f"{spec['name']} to end")


@pytest.mark.parametrize(("preset", "params", "model"), [
    ("sklearn-classifier", {"n_estimators": 20}, "model.joblib"),
    ("xgboost-classifier", {"n_estimators": 20, "max_depth": 3}, "model.json"),
    ("torch-mlp", {"epochs": 15, "hidden_units": 16}, "model.pt"),
])
async def test_a_preset_trains_for_real_through_the_stack(nc, tmp_path, preset, params, model):
    spec = preset_job(tmp_path, preset, **params)
    job = await run_to_end(nc, spec)
    assert job["status"] == "Succeeded", job.get("failure_reason")
    out = Path(spec["output_path"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["algorithm"] == preset and metrics["metrics"]["accuracy"] > 0.6
    assert metrics["parameters"]["label_column"] == "species"
    assert (out / model).stat().st_size > 0


async def test_a_dataset_job_trains_on_exactly_the_published_files_and_is_billed(nc, tmp_path):
    folder = tmp_path / "iris-ds"
    folder.mkdir()
    rows = (IRIS / "data" / "iris.csv").read_text().splitlines()
    (folder / "part1.csv").write_text("\n".join(rows[:80]) + "\n")
    (folder / "part2.csv").write_text("\n".join([rows[0], *rows[80:]]) + "\n")
    name = f"iris-{uuid.uuid4().hex[:6]}"
    await call(nc, TOPO.datasets("create"), {"name": name, "location": str(folder)})
    v1 = await call(nc, TOPO.datasets("publish"), {"name": name})
    assert len(v1["files"]) == 2
    # the folder changes after the version: a broken file that would fail the job if it were read
    (folder / "zz-broken.csv").write_text("other,columns\n1,2\n")

    spec = preset_job(tmp_path, "sklearn-classifier", data=[{"dataset": name, "version": "V001"}], n_estimators=10)
    job = await run_to_end(nc, spec)
    assert job["status"] == "Succeeded", job.get("failure_reason")
    metrics = json.loads((Path(spec["output_path"]) / "metrics.json").read_text())
    assert metrics["rows"]["train"] + metrics["rows"]["test"] == 150

    async def billed():
        record = await call(nc, TOPO.jobs("get"), {"id": job["id"]})
        return record.get("billing")

    billing = await eventually(billed, 15, what="billing of the dataset job")
    assert billing["account"] == "default" and billing["price_per_hour"] == 0.05 and billing["duration_s"] > 0
    account = await call(nc, TOPO.accounts("get"), {"name": "default"})
    assert f"charge:{job['id']}" in [e["id"] for e in account["ledger"]]

    # a file of the version changed since it was published: the node is refused with that reason
    (folder / "part1.csv").write_text("sepal_length,species\n1,setosa\n")
    failed = await run_to_end(nc, spec | {"name": f"{spec['name']}-b", "output_path": spec["output_path"] + "-b"})
    assert failed["status"] == "Failed" and "changed since the version was published" in failed["failure_reason"]


async def test_a_preset_with_a_bad_label_column_fails_with_the_scripts_reason(nc, tmp_path):
    spec = preset_job(tmp_path, "sklearn-classifier", label_column="kind")
    job = await run_to_end(nc, spec)
    assert job["status"] == "Failed" and "no column 'kind'" in job["failure_reason"]
    await asyncio.sleep(0)
