// The job list (status filter, search by name, paging, auto-refresh) and a job's page (status
// history, placements, failure, billing, live logs, Stop).
import { api, stream } from "./api.js";
import { h, money, when } from "./dom.js";
import { t } from "./i18n.js";

const STATUSES = ["Initializing", "Pending", "Scheduled", "Running", "Stopping", "Succeeded", "Failed", "Stopped"];
const PAGE = 20;
const REFRESH_MS = 3000;

const badge = (status) => h("span", { class: `status s-${status}`, dataset: { status } }, t(`status.${status}`));

export async function jobsView() {
  const query = new URLSearchParams(location.hash.split("?")[1] || "");
  let offset = Number(query.get("offset")) || 0;
  const status = h("select", { id: "status-filter" });
  status.append(h("option", { value: "" }, t("jobs.all")), ...STATUSES.map((s) => h("option", { value: s }, t(`status.${s}`))));
  const search = h("input", { id: "name-search", type: "search" });
  const auto = h("input", { id: "auto-refresh", type: "checkbox", checked: true });
  const body = h("tbody");
  const pager = h("span", { class: "pager-text" });
  const error = h("p", { class: "error", role: "alert" });
  const prev = h("button", { type: "button", onclick: () => { offset = Math.max(0, offset - PAGE); load(); } }, t("jobs.prev"));
  const nextPage = h("button", { type: "button", onclick: () => { offset += PAGE; load(); } }, t("jobs.next"));

  async function load() {
    const params = new URLSearchParams({ limit: PAGE, offset });
    if (status.value) params.set("status", status.value);
    if (search.value.trim()) params.set("name", search.value.trim());
    try {
      const reply = await api("GET", `/jobs?${params}`);
      error.textContent = "";
      body.replaceChildren(...(reply.jobs.length ? reply.jobs.map((job) => h("tr", {},
        h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.name)),
        h("td", {}, job.version), h("td", {}, badge(job.status)),
        h("td", {}, when(job.created_at)), h("td", {}, when(job.updated_at)),
        h("td", { class: "reason" }, job.failure_reason || ""))) : [h("tr", {}, h("td", { colspan: 6 }, t("jobs.none")))]));
      const total = reply.total ?? reply.jobs.length;
      pager.textContent = `${t("jobs.page")} ${Math.floor(offset / PAGE) + 1} / ${Math.max(1, Math.ceil(total / PAGE))}`;
      prev.disabled = offset === 0;
      nextPage.disabled = offset + PAGE >= total;
    } catch (err) {
      error.textContent = err.message;
    }
  }
  status.addEventListener("change", () => { offset = 0; load(); });
  let typing = null;
  search.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(() => { offset = 0; load(); }, 300); });
  const timer = setInterval(() => { if (auto.checked) load(); }, REFRESH_MS);
  await load();
  const el = h("section", { class: "card jobs" },
    h("div", { class: "titlebar" }, h("h1", {}, t("jobs.title")), h("a", { class: "button", href: "#/create" }, t("nav.create"))),
    h("div", { class: "filters" },
      h("label", { for: "status-filter" }, t("jobs.status")), status,
      h("label", { for: "name-search" }, t("jobs.search")), search,
      h("label", { for: "auto-refresh", class: "inline" }, auto, t("jobs.auto"))),
    error,
    h("table", { class: "list" }, h("thead", {}, h("tr", {}, ["jobs.name", "jobs.version", "jobs.status", "jobs.created",
      "jobs.updated", "job.failure"].map((k) => h("th", {}, t(k))))), body),
    h("div", { class: "pager" }, prev, pager, nextPage));
  return { el, leave: () => { clearInterval(timer); clearTimeout(typing); } };
}

export async function jobView(id) {
  const abort = new AbortController();
  const head = h("div", { class: "titlebar" });
  const facts = h("div", { class: "facts" });
  const history = h("tbody");
  const placements = h("tbody");
  const logs = h("pre", { id: "logs", class: "logs" });
  const follow = h("input", { id: "follow", type: "checkbox", checked: true });
  const logSearch = h("input", { id: "log-search", type: "search" });
  const error = h("p", { class: "error", role: "alert" });
  let job = null;

  // "Save as template": the job's spec under a name (PUT /templates/{name}); no job is made
  const templateName = h("input", { type: "text", id: "template-name", autocomplete: "off", required: true });
  const templateDescription = h("input", { type: "text", id: "template-description" });
  const saved = h("p", { role: "status", class: "saved" });
  const saving = h("form", { class: "save-template", hidden: true, onsubmit: async (e) => {
    e.preventDefault();
    saved.textContent = "";
    try {
      const template = await api("PUT", `/templates/${encodeURIComponent(templateName.value.trim())}`,
                                 { spec: job.spec, description: templateDescription.value });
      saved.replaceChildren(`${t("job.template_saved")}: `,
        h("a", { href: `#/create?template=${encodeURIComponent(template.name)}` }, template.name));
      error.textContent = "";
    } catch (err) { error.textContent = err.message; }
  } },
  h("label", { for: "template-name" }, t("template.name")), templateName,
  h("label", { for: "template-description" }, t("description")), templateDescription,
  h("button", { type: "submit" }, t("template.save")), saved);

  function render() {
    const stop = h("button", { type: "button", id: "stop", class: "danger", disabled: job.status === "Stopping" || isOver(job),
      onclick: async () => {
        stop.disabled = true;
        try { await api("POST", `/jobs/${encodeURIComponent(id)}/stop`, {}); await refresh(); } catch (err) { error.textContent = err.message; }
      } }, t("job.stop"));
    const newVersion = h("a", { class: "button secondary", id: "new-version",
                                href: `#/create?version=${encodeURIComponent(id)}` }, t("job.new_version"));
    const save = h("button", { type: "button", class: "secondary", id: "save-template",
                               onclick: () => { saving.hidden = !saving.hidden; if (!saving.hidden) templateName.focus(); } },
                   t("job.save_template"));
    head.replaceChildren(h("h1", {}, `${job.name} ${job.version}`), badge(job.status),
      h("div", { class: "buttons" }, newVersion, save, stop));
    const spec = job.spec;
    facts.replaceChildren(h("dl", {},
      fact("ID", job.id), fact(t("description"), spec.description),
      fact(t("algorithm"), [t(`source.${spec.algorithm.source}`), spec.algorithm.preset, spec.algorithm.engine,
        spec.algorithm.engine_version, spec.algorithm.image].filter(Boolean).join(" ")),
      fact(t("pool"), `${spec.resources.pool}${spec.resources.flavor ? ` / ${spec.resources.flavor}` : ""} × ${spec.resources.node_count}`),
      fact(t("output_path"), spec.output_path), fact(t("log_path"), spec.log_path),
      job.pending_reason && fact(t("job.pending"), job.pending_reason),
      job.failure_reason && fact(t("job.failure"), job.failure_reason, "failure"),
      job.violations.length > 0 && fact(t("job.violations"), job.violations.map((v) => `${v.field}: ${v.message}`).join("; ")),
      job.billing && fact(t("job.billing"), `${money(job.billing.cost, job.billing.currency)} (${t("job.duration")} ` +
        `${Math.round(job.billing.duration_s)} s)`)));
    history.replaceChildren(...job.history.map((e) => h("tr", {}, h("td", {}, when(e.at)), h("td", {}, e.change),
      h("td", {}, badge(e.status)), h("td", {}, e.reason || ""))));
    placements.replaceChildren(...job.placements.map((p) => {
      const node = job.nodes.find((n) => n.node === p.node);
      return h("tr", {}, h("td", {}, p.node), h("td", {}, p.agent_id), h("td", {}, p.host),
        h("td", {}, node ? `${node.state}${node.exit_code !== null && node.exit_code !== undefined ? ` (${node.exit_code})` : ""}` : ""));
    }));
  }

  async function refresh() {
    try { job = await api("GET", `/jobs/${encodeURIComponent(id)}`); render(); } catch (err) { error.textContent = err.message; }
  }

  function showLogs() {
    const needle = logSearch.value.trim().toLowerCase();
    for (const line of logs.children) line.hidden = Boolean(needle) && !line.textContent.toLowerCase().includes(needle);
  }

  async function readLogs() {
    try {
      await stream(`/jobs/${encodeURIComponent(id)}/logs?follow=true`, (type, data) => {
        if (type !== "line") return;
        const line = h("div", { class: `line ${data.stream}` }, h("span", { class: "node" }, `[${data.node}] `), data.text);
        logs.append(line);
        if (logSearch.value) showLogs();
        if (follow.checked) logs.scrollTop = logs.scrollHeight;
      }, abort.signal);
    } catch (err) { if (!abort.signal.aborted) error.textContent = err.message; }
  }

  async function readEvents() {
    try {
      await stream(`/jobs/${encodeURIComponent(id)}/events?follow=true`, (type) => { if (type === "event") refresh(); }, abort.signal);
    } catch (err) { if (!abort.signal.aborted) error.textContent = err.message; }
    if (!abort.signal.aborted) refresh();
  }

  await refresh();
  if (!job) return { el: h("section", { class: "card" }, error) };
  logSearch.addEventListener("input", showLogs);
  readLogs();
  readEvents();
  const el = h("section", { class: "card job" }, head, saving, error, facts,
    h("h2", {}, t("job.history")),
    h("table", { class: "list", id: "history" }, h("thead", {}, h("tr", {},
      ["job.at", "job.change", "jobs.status", "job.reason"].map((k) => h("th", {}, t(k))))), history),
    h("h2", {}, t("job.placements")),
    h("table", { class: "list", id: "placements" }, h("thead", {}, h("tr", {},
      ["job.node", "job.agent", "job.host", "jobs.status"].map((k) => h("th", {}, t(k))))), placements),
    h("div", { class: "titlebar" }, h("h2", {}, t("job.logs")),
      h("label", { for: "follow", class: "inline" }, follow, t("job.follow")),
      h("label", { for: "log-search" }, t("job.logsearch")), logSearch),
    logs);
  return { el, leave: () => abort.abort() };
}

function isOver(job) { return ["Succeeded", "Failed", "Stopped"].includes(job.status); }

function fact(label, value, cls) {
  return [h("dt", {}, label), h("dd", { class: cls }, value ?? "")];
}
