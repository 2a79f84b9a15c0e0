// Templates: the saved job parameters; "Use" opens the create form filled from one.
import { api } from "./api.js";
import { h, table, when } from "./dom.js";
import { t } from "./i18n.js";

export async function templatesView() {
  const error = h("p", { class: "error", role: "alert" });
  let templates = [];
  try { templates = (await api("GET", "/templates")).templates; } catch (err) { error.textContent = err.message; }
  templates.sort((a, b) => a.name.localeCompare(b.name));
  const rows = templates.map((tpl) => h("tr", { dataset: { template: tpl.name } },
    h("td", {}, h("a", { href: `#/create?template=${encodeURIComponent(tpl.name)}` }, tpl.name)),
    h("td", {}, tpl.description),
    h("td", {}, tpl.spec.name || ""),
    h("td", {}, `${t(`source.${tpl.spec.algorithm.source}`)} ${tpl.spec.algorithm.engine || tpl.spec.algorithm.preset || ""}`),
    h("td", {}, `${tpl.spec.resources.pool}${tpl.spec.resources.flavor ? ` / ${tpl.spec.resources.flavor}` : ""} × ` +
      `${tpl.spec.resources.node_count}`),
    h("td", {}, tpl.source_job ? h("a", { href: `#/jobs/${encodeURIComponent(tpl.source_job)}` }, tpl.source_job) : ""),
    h("td", {}, when(tpl.updated_at)),
    h("td", {}, h("a", { class: "button small", href: `#/create?template=${encodeURIComponent(tpl.name)}` },
      t("templates.use")))));
  const el = h("section", { class: "card templates" },
    h("h1", {}, t("nav.templates")), h("p", { class: "help" }, t("templates.help")), error,
    table("templates", [t("templates.name"), t("description"), t("jobs.name"), t("algorithm"), t("pool"),
      t("templates.source_job"), t("jobs.updated"), ""], rows, t("templates.none")));
  return { el };
}
