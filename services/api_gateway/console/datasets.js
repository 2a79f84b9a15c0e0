// Datasets: the list; a dataset's versions; a version's manifest (#/datasets/NAME/VERSION).
import { api } from "./api.js";
import { bytes, h, table, when } from "./dom.js";
import { t } from "./i18n.js";

const link = (name, version) => `#/datasets/${encodeURIComponent(name)}${version ? `/${encodeURIComponent(version)}` : ""}`;

export async function datasetsView() {
  const error = h("p", { class: "error", role: "alert" });
  let datasets = [];
  try { datasets = (await api("GET", "/datasets")).datasets; } catch (err) { error.textContent = err.message; }
  const rows = datasets.map((d) => {
    const latest = d.versions[d.versions.length - 1];
    return h("tr", { dataset: { dataset: d.name } },
      h("td", {}, h("a", { href: link(d.name) }, d.name)), h("td", {}, d.description), h("td", {}, d.project),
      h("td", { class: "location" }, d.location), h("td", {}, latest ? latest.version : "—"),
      h("td", { class: "numbers" }, d.versions.length), h("td", {}, when(d.updated_at)));
  });
  return { el: h("section", { class: "card datasets" }, h("h1", {}, t("nav.datasets")), error,
    table("datasets", [t("datasets.name"), t("description"), t("datasets.project"), t("datasets.location"),
      t("datasets.latest"), t("datasets.versions"), t("jobs.updated")], rows, t("datasets.none"))) };
}

export async function datasetView(name, version) {
  const error = h("p", { class: "error", role: "alert" });
  let dataset = null;
  let manifest = null;
  try {
    dataset = await api("GET", `/datasets/${encodeURIComponent(name)}`);
    if (version) manifest = await api("GET", `/datasets/${encodeURIComponent(name)}/versions/${encodeURIComponent(version)}`);
  } catch (err) { error.textContent = err.message; }
  if (!dataset) return { el: h("section", { class: "card" }, h("h1", {}, name), error) };
  const versions = [...dataset.versions].reverse().map((v) => h("tr", { class: v.version === version ? "chosen" : null },
    h("td", {}, h("a", { href: link(name, v.version) }, v.version)), h("td", {}, v.description),
    h("td", { class: "numbers" }, v.files), h("td", { class: "numbers" }, bytes(v.bytes)), h("td", {}, when(v.created_at))));
  const parts = [
    h("div", { class: "titlebar" }, h("h1", {}, dataset.name),
      h("a", { class: "button secondary", href: "#/datasets" }, t("nav.datasets"))),
    error,
    h("dl", {}, h("dt", {}, t("description")), h("dd", {}, dataset.description),
      h("dt", {}, t("datasets.project")), h("dd", {}, dataset.project),
      h("dt", {}, t("datasets.location")), h("dd", {}, dataset.location),
      h("dt", {}, t("jobs.created")), h("dd", {}, when(dataset.created_at))),
    h("h2", {}, t("datasets.versions")),
    table("versions", [t("jobs.version"), t("description"), t("datasets.file_count"), t("datasets.size"), t("jobs.created")],
      versions, t("datasets.no_versions")),
  ];
  if (manifest) {
    parts.push(h("section", { class: "part" },
      h("h2", {}, `${t("datasets.manifest")} ${manifest.version}`),
      h("p", { class: "subtle" }, `${manifest.files.length} ${t("datasets.files")}, ${bytes(manifest.total_bytes)} — ` +
        `${manifest.location}`),
      table("manifest", [t("datasets.path"), t("datasets.size"), t("datasets.checksum")],
        manifest.files.map(([path, size, checksum]) => h("tr", {}, h("td", {}, path),
          h("td", { class: "numbers" }, bytes(size)), h("td", { class: "subtle" }, checksum || ""))), t("datasets.empty"))));
  }
  return { el: h("section", { class: "card dataset" }, parts) };
}
