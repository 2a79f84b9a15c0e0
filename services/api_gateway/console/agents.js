// Agents: each pool's capacity (its agents' CPUs, memory and GPUs) and what runs there; every
// agent with its running nodes; the lost ones.
import { api } from "./api.js";
import { bytes, h, table, when } from "./dom.js";
import { t } from "./i18n.js";

const REFRESH_MS = 5000;

// "<job_id>/<node>/<attempt>" as a link to the job
function runningLink(entry) {
  const [job, node, attempt] = entry.split("/");
  return h("a", { href: `#/jobs/${encodeURIComponent(job)}`, class: "running" }, `${job} #${node} (${attempt})`);
}

export async function agentsView() {
  const error = h("p", { class: "error", role: "alert" });
  const body = h("div");

  async function load() {
    try {
      const [{ agents, lost }, { pools }] = await Promise.all([api("GET", "/agents"),
        api("GET", "/pools").catch(() => ({ pools: [] }))]);
      error.textContent = "";
      const names = [...new Set([...pools.map((p) => p.name), ...agents.map((a) => a.pool)])];
      const poolRows = names.map((name) => {
        const pool = pools.find((p) => p.name === name);
        const here = agents.filter((a) => a.pool === name);
        const sum = (f) => here.reduce((n, a) => n + f(a), 0);
        return h("tr", { dataset: { pool: name } }, h("td", {}, name), h("td", {}, pool ? pool.description : ""),
          h("td", {}, pool ? `${t(`agents.${pool.kind}`)}, ${pool.accelerator.toUpperCase()}` : ""),
          h("td", {}, pool ? pool.flavors.map((f) => f.name).join(", ") : ""),
          h("td", { class: "numbers" }, here.length), h("td", { class: "numbers" }, sum((a) => a.cpus)),
          h("td", { class: "numbers" }, bytes(sum((a) => a.memory_mb) * 1024 * 1024)),
          h("td", { class: "numbers" }, sum((a) => a.gpus.length)), h("td", { class: "numbers" }, sum((a) => a.running.length)));
      });
      const agentRows = agents.map((a) => h("tr", { dataset: { agent: a.agent_id } },
        h("td", {}, a.agent_id), h("td", {}, a.host), h("td", {}, a.pool), h("td", { class: "numbers cpus" }, a.cpus),
        h("td", { class: "numbers" }, bytes(a.memory_mb * 1024 * 1024)),
        h("td", {}, a.gpus.map((g) => `${g.index}: ${g.model}`).join(", ") || "—"),
        h("td", { class: "subtle" }, Object.entries(a.labels).map(([k, v]) => `${k}=${v}`).join(" ")),
        h("td", {}, a.running.length ? a.running.map(runningLink) : "—"),
        h("td", {}, when(a.sent_at)), h("td", {}, when(a.started_at))));
      body.replaceChildren(
        h("h2", {}, t("agents.pools")),
        table("pools", [t("pool"), t("description"), t("agents.kind"), t("flavor"), t("agents.count"), "CPU",
          t("agents.memory"), "GPU", t("agents.running")], poolRows, t("agents.no_pools")),
        h("h2", {}, t("agents.agents")),
        table("agents", [t("job.agent"), t("job.host"), t("pool"), "CPU", t("agents.memory"), "GPU", t("agents.labels"),
          t("agents.running"), t("agents.heartbeat"), t("agents.started")], agentRows, t("agents.none")),
        h("h2", {}, t("agents.lost")),
        table("lost", [t("job.agent")], lost.map((id) => h("tr", {}, h("td", {}, id))), t("agents.no_lost")));
    } catch (err) { error.textContent = err.message; }
  }
  await load();
  const timer = setInterval(load, REFRESH_MS);
  return { el: h("section", { class: "card agents" }, h("h1", {}, t("nav.agents")), error, body),
           leave: () => clearInterval(timer) };
}
