"""The web console of ``trainmaster up`` in a real browser (Debian's chromium, driven by
Playwright): the admin logs in with the token the stack wrote, fills "Create training job" for the
sample scikit-learn job, sees the validator's violation beside the field it names, fixes it,
confirms the spec and its price, and watches the job reach Succeeded with its log lines; then
stops a second job from its page; saves the first job as a template, makes its next version from
its page, and opens the pages of templates, datasets, topics and agents.  Each page is saved under
.trainmaster/screenshots/."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import httpx
import pytest
from support import CHROMIUM, IRIS, REPO, require_browser, script_job
from up_harness import Up, answering, free_port, printed

pytestmark = pytest.mark.e2e

SHOTS = REPO / ".trainmaster" / "screenshots"


async def test_the_console_creates_watches_and_stops_jobs(stacks, client_of, tmp_path: Path) -> None:
    require_browser()
    from playwright.async_api import async_playwright, expect

    up = Up(tmp_path / "data", free_port())
    stacks.append(up)
    up.start()
    await up.ready(await client_of(up))
    api_url, token_file = printed(up)
    await answering(api_url)
    console = api_url.removesuffix("/api/v1") + "/"
    assert f"web console at {console}" in up.output()
    token = token_file.read_text().strip()
    SHOTS.mkdir(parents=True, exist_ok=True)
    name = f"iris-console-{uuid.uuid4().hex[:4]}"

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1280, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(console)
        await page.get_by_label("API token").fill("tmu_not-a-token")
        await page.get_by_role("button", name="Log in").click()
        await expect(page.get_by_role("alert")).to_contain_text("not accepted")
        await page.get_by_label("API token").fill(token)
        await page.screenshot(path=SHOTS / "login.png")
        await page.get_by_role("button", name="Log in").click()
        await expect(page.get_by_role("heading", name="Training jobs")).to_be_visible()
        await expect(page.locator("#who")).to_have_text("admin")

        # the form, as the sample job (examples/sklearn-iris/job.yaml), with a name the rules refuse
        await page.get_by_role("link", name="Create training job").first.click()
        await expect(page.get_by_role("heading", name="Create training job")).to_be_visible()
        await expect(page.get_by_text("Letters, digits, '-' and '_', 1-64 characters")).to_be_visible()
        await page.get_by_label("Name", exact=True).fill("iris with spaces!")
        await page.get_by_label("Description", exact=True).fill("Logistic regression on the iris flowers")
        await page.get_by_label("Algorithm source").select_option("framework")
        await page.get_by_label("Engine", exact=True).select_option("scikit-learn")
        await page.get_by_label("Engine version").select_option("1.5")
        await page.get_by_label("Code directory").fill(str(IRIS / "code"))
        await page.get_by_label("Data", exact=True).select_option("paths")
        await page.get_by_label("Path", exact=True).fill(str(IRIS / "data"))
        for i, (param, value) in enumerate((("max_iter", "200"), ("C", "1.0"))):
            await page.get_by_role("button", name="Add parameter").click()
            await page.locator(f"#param-{i}-name").fill(param)
            await page.locator(f"#param-{i}-value").fill(value)
        await page.get_by_label("Output path").fill(str(tmp_path / "out" / name))
        await page.get_by_label("Log path").fill(str(tmp_path / "logs" / name))
        await page.get_by_label("Resource pool").select_option("cpu")
        await expect(page.get_by_label("Flavor")).to_contain_text("per hour")
        await page.get_by_label("Node count").fill("1")
        for label in ("Topic", "Events"):
            await expect(page.get_by_text(label, exact=True)).to_be_visible()

        beside_name = page.locator('ul.violations[data-for="name"] li.violation')
        await expect(beside_name).to_have_count(1)
        await expect(beside_name).to_have_attribute("data-code", "invalid_name")
        await expect(page.get_by_label("Name", exact=True)).to_have_attribute("aria-invalid", "true")
        beside_boot_file = page.locator('ul.violations[data-for="algorithm.boot_file"] li.violation')
        await expect(beside_boot_file).to_have_count(1)  # every violation at once, each beside its field
        await expect(page.locator("ul.violations.general li.violation")).to_have_count(0)
        await page.screenshot(path=SHOTS / "create-violation.png", full_page=True)

        await page.get_by_label("Name", exact=True).fill(name)
        await page.get_by_label("Boot file").fill("train.py")
        await expect(page.locator("li.violation")).to_have_count(0)
        await expect(page.locator("#price")).to_contain_text("per hour")
        await page.screenshot(path=SHOTS / "create-valid.png", full_page=True)
        await page.get_by_role("button", name="Next").click()
        await expect(page.get_by_role("heading", name="Confirm the specification")).to_be_visible()
        spec = page.locator("table.spec")
        await expect(spec).to_contain_text(name)
        await expect(spec).to_contain_text("V001")
        await expect(spec).to_contain_text("max_iter=200")
        await expect(spec).to_contain_text("Price per hour")
        await page.screenshot(path=SHOTS / "confirm.png", full_page=True)
        await page.get_by_role("button", name="Submit").click()

        # the job page: the status as it changes, the log lines as they come
        await page.wait_for_url(re.compile(r"#/jobs/"))
        status = page.locator(".job .titlebar .status").first
        await expect(status).to_have_attribute("data-status", "Succeeded", timeout=240_000)
        await expect(page.locator("#logs")).to_contain_text("held-out accuracy", timeout=30_000)
        await expect(page.locator("#history")).to_contain_text("Succeeded")
        await expect(page.locator("#placements tbody tr")).to_have_count(1)
        await page.screenshot(path=SHOTS / "job-succeeded.png", full_page=True)
        await page.get_by_label("Language").select_option("zh")
        await expect(status).to_have_text("运行成功")
        await page.screenshot(path=SHOTS / "job-succeeded-zh.png", full_page=True)
        await page.get_by_label("语言").select_option("en")

        # a second job, made over the API, stopped from its page
        long = script_job(tmp_path, f"console-stop-{uuid.uuid4().hex[:4]}",
                          "import time\nprint('working', flush=True)\ntime.sleep(600)\n")
        async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
            made = await http.post("/jobs", headers={"Authorization": f"Bearer {token}"}, json=long)
            assert made.status_code == 201, made.text
        await page.goto(f"{console}#/jobs/{made.json()['id']}")
        await expect(page.locator("#logs")).to_contain_text("working", timeout=120_000)
        await page.get_by_role("button", name="Stop").click()
        await expect(page.locator(".job .titlebar .status").first).to_have_attribute("data-status", "Stopped",
                                                                                      timeout=60_000)
        await page.screenshot(path=SHOTS / "job-stopped.png", full_page=True)

        # the list: both jobs, a filter by status
        await page.get_by_role("link", name="Training jobs").first.click()
        await expect(page.get_by_role("heading", name="Training jobs")).to_be_visible()
        await expect(page.locator("table.list")).to_contain_text(name)
        await page.get_by_label("Status", exact=True).select_option("Succeeded")
        await expect(page.locator("table.list tbody tr")).to_have_count(1)
        await expect(page.locator("table.list tbody")).to_contain_text(name)
        await page.get_by_label("Status", exact=True).select_option("")
        await page.screenshot(path=SHOTS / "jobs.png", full_page=True)
        await the_other_pages(page, api_url, token, name, tmp_path)
        assert not errors, errors
        await browser.close()


async def the_other_pages(page, api_url: str, token: str, name: str, tmp_path: Path) -> None:
    """The first job saved as a template and continued as V002 from its page; the pages of
    templates, datasets (versions, a manifest), topics (subscriptions, deliveries) and agents."""
    from playwright.async_api import expect

    # "Save as template" on the job page: no job is made, the template lists it
    await page.get_by_role("link", name=name).first.click()
    await expect(page.get_by_role("heading", name=f"{name} V001")).to_be_visible()
    template = f"{name}-tpl"
    await page.get_by_role("button", name="Save as template").click()
    await page.get_by_label("Template name").fill(template)
    await page.get_by_role("button", name="Save", exact=True).click()
    await expect(page.locator("form.save-template .saved")).to_contain_text(template)
    await page.screenshot(path=SHOTS / "job-save-template.png", full_page=True)

    # "New version": the form filled from the job, the name kept, one parameter changed
    await page.get_by_role("link", name="New version").click()
    await expect(page.get_by_role("heading", name="New version of a training job")).to_be_visible()
    await expect(page.get_by_label("Name", exact=True)).to_have_value(name)
    await expect(page.get_by_label("Engine", exact=True)).to_have_value("scikit-learn")
    await expect(page.locator("#param-0-value")).to_have_value("200")
    await page.locator("#param-0-value").fill("300")
    await expect(page.get_by_label("Output path")).to_have_value(str(tmp_path / "out" / name))
    await expect(page.locator("#price")).to_contain_text("per hour")
    await expect(page.locator("li.violation")).to_have_count(0)
    await page.screenshot(path=SHOTS / "new-version.png", full_page=True)
    await page.get_by_role("button", name="Next").click()
    spec = page.locator("table.spec")
    await expect(spec).to_contain_text("V002")
    await expect(spec).to_contain_text("max_iter=300")
    await page.get_by_role("button", name="Submit").click()
    await expect(page.get_by_role("heading", name=f"{name} V002")).to_be_visible(timeout=30_000)

    # Templates: the one saved above; opening it fills the create form
    await page.get_by_role("link", name="Templates").first.click()
    row = page.locator(f'#templates tr[data-template="{template}"]')
    await expect(row).to_contain_text(name)
    await page.screenshot(path=SHOTS / "templates.png", full_page=True)
    await row.get_by_role("link", name=template).click()
    await expect(page.get_by_role("heading", name="Create training job")).to_be_visible()
    await expect(page.locator("#starting-point")).to_contain_text(template)
    await expect(page.get_by_label("Name", exact=True)).to_have_value(name)
    await expect(page.get_by_label("Code directory")).to_have_value(str(IRIS / "code"))
    await expect(page.locator("#price")).to_contain_text("per hour")
    await page.screenshot(path=SHOTS / "create-from-template.png", full_page=True)

    # Datasets: one made over the API, its version, the version's manifest
    dataset, topic = f"iris-{uuid.uuid4().hex[:4]}", f"console-{uuid.uuid4().hex[:4]}"
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=api_url, timeout=30, headers=auth) as http:
        made = await http.post("/datasets", json={"name": dataset, "location": str(IRIS / "data"),
                                                  "description": "the iris flowers"})
        assert made.status_code == 201, made.text
        published = await http.post(f"/datasets/{dataset}/versions", json={})
        assert published.status_code == 201, published.text
    await page.get_by_role("link", name="Datasets").first.click()
    await expect(page.locator(f'#datasets tr[data-dataset="{dataset}"]')).to_contain_text("V001")
    await page.screenshot(path=SHOTS / "datasets.png", full_page=True)
    await page.get_by_role("link", name=dataset).click()
    await page.get_by_role("link", name="V001").click()
    await expect(page.locator("#manifest")).to_contain_text("iris.csv")
    await page.screenshot(path=SHOTS / "dataset-manifest.png", full_page=True)

    # Topics: one made on the page, a subscription, its deliveries and dead letters
    await page.get_by_role("link", name="Topics").first.click()
    await page.get_by_label("Topic", exact=True).fill(topic)
    await page.get_by_role("button", name="Create topic").click()
    await expect(page.get_by_role("heading", name=topic)).to_be_visible()
    async with httpx.AsyncClient(base_url=api_url, timeout=30, headers=auth) as http:
        subscribed = await http.post(f"/topics/{topic}/subscriptions",
                                     json={"protocol": "email", "endpoint": "ops@example.com"})
        assert subscribed.status_code == 201, subscribed.text
    await page.reload()
    await expect(page.locator("#subscriptions")).to_contain_text("ops@example.com")
    await expect(page.get_by_role("heading", name="Dead letters (0)")).to_be_visible()
    await expect(page.locator("#deliveries")).to_contain_text("No deliveries.")
    await page.screenshot(path=SHOTS / "topic.png", full_page=True)
    await page.get_by_role("link", name="Topics").first.click()
    await expect(page.locator(f'#topics tr[data-topic="{topic}"]')).to_contain_text("1 / 1")
    await page.screenshot(path=SHOTS / "topics.png", full_page=True)

    # Agents: the stack's one agent with its CPUs, in its pool
    await page.get_by_role("link", name="Agents").first.click()
    agent = page.locator('#agents tr[data-agent="local-1"]')
    await expect(agent).to_contain_text("cpu")
    await expect(agent.locator("td.cpus")).to_have_text(re.compile(r"^[1-9]\d*$"))
    await expect(page.locator('#pools tr[data-pool="cpu"]')).to_be_visible()
    await expect(page.locator("#lost")).to_contain_text("No lost agents.")
    await page.screenshot(path=SHOTS / "agents.png", full_page=True)
    await page.get_by_label("Language").select_option("zh")
    await expect(page.get_by_role("heading", name="计算节点").first).to_be_visible()
    await page.screenshot(path=SHOTS / "agents-zh.png", full_page=True)
    await page.get_by_label("语言").select_option("en")
