// "Create training job": the seed's form.  While the user edits, the spec is planned
// (POST /jobs/plan, debounced) and every violation shows beside its field; "Next" shows the
// normalised spec and its price to confirm; "Submit" creates the job and opens its page.
import { api, Problem } from "./api.js";
import { h, money } from "./dom.js";
import { t } from "./i18n.js";
import { fieldKeys, overridesOf, parentField, parseValue, requestOf, withBase } from "./spec.js";

const EVENTS = ["OnJobRunning", "OnJobSucceeded", "OnJobFailed", "OnJobStopped"];
const PLAN_DELAY_MS = 400;

async function catalogs() {
  const quiet = (p, fallback) => p.catch(() => fallback);
  const [algorithms, engines, pools, datasets] = await Promise.all([
    quiet(api("GET", "/algorithms"), { algorithms: [] }), quiet(api("GET", "/engines"), { engines: [] }),
    quiet(api("GET", "/pools"), { pools: [], currency: "" }), quiet(api("GET", "/datasets"), { datasets: [] }),
  ]);
  return { presets: algorithms.algorithms, engines: engines.engines, pools: pools.pools,
           currency: pools.currency, datasets: datasets.datasets };
}

// A labelled field: <label for=id>, the control, an optional help line, and the list its
// violations go to (data-for: the field path the validator names).
function field(id, labelKey, control, { help, path } = {}) {
  control.id = id;
  return h("div", { class: "field" },
    h("label", { for: id }, t(labelKey)), control,
    help ? h("p", { class: "help" }, help) : null,
    h("ul", { class: "violations", dataset: { for: path || id } }));
}

function options(select, items, selected) {
  select.replaceChildren(...items.map(([value, text]) => h("option", { value, selected: value === selected }, text)));
}

// The spec the form starts from: "?template=NAME" (a saved template) or "?version=JOB_ID" (the
// job's next version, made with POST /jobs/{name}/versions); none for an empty form.
async function startingPoint(query) {
  if (query.get("template")) {
    const template = await api("GET", `/templates/${encodeURIComponent(query.get("template"))}`);
    return { base: template.spec, note: `${t("create.from_template")}: ${template.name}` };
  }
  if (query.get("version")) {
    const job = await api("GET", `/jobs/${encodeURIComponent(query.get("version"))}`);
    return { base: job.spec, versionOf: job.name, note: `${t("create.from_job")}: ${job.name} ${job.version}` };
  }
  return {};
}

// Selects value, adding it as an option when the catalog does not list it (a spec of an older catalog).
function choose(select, value) {
  if (value === undefined || value === null) return;
  if (![...select.options].some((o) => o.value === String(value))) select.append(h("option", { value }, value));
  select.value = String(value);
}

export async function createView(query = new URLSearchParams()) {
  const cat = await catalogs();
  let start;
  try { start = await startingPoint(query); } catch (err) {
    return { el: h("section", { class: "card" }, h("p", { class: "error", role: "alert" }, err.message)) };
  }
  const { base, versionOf, note } = start;
  const el = {};
  const input = (attrs = {}) => h("input", { type: "text", ...attrs });
  const root = h("div", { class: "create" });
  const form = h("form", { class: "card", novalidate: true, onsubmit: (e) => e.preventDefault() });
  const confirm = h("section", { class: "card confirm", hidden: true });
  const general = h("ul", { class: "violations general", dataset: { for: "" } });
  const priceBox = h("p", { class: "price", id: "price" });
  const planState = h("p", { class: "plan-state", role: "status" });

  el.name = input({ autocomplete: "off" });
  el.description = h("textarea", { rows: 2 });
  el.source = h("select");
  options(el.source, [["preset", t("source.preset")], ["framework", t("source.framework")],
                      ["custom", t("source.custom")]], "framework");
  el.preset = h("select");
  options(el.preset, [["", "—"], ...cat.presets.map((p) => [p.name, `${p.name} — ${p.description}`])], "");
  el.engine = h("select");
  options(el.engine, [["", "—"], ...cat.engines.map((e) => [e.name, e.name])], "");
  el.engineVersion = h("select");
  el.codeDir = input();
  el.bootFile = input();
  el.image = input();
  el.command = h("textarea", { rows: 3 });
  el.dataMode = h("select");
  options(el.dataMode, [["paths", t("data.paths")], ["datasets", t("data.datasets")]], "paths");
  el.outputPath = input();
  el.logPath = input();
  el.pool = h("select");
  options(el.pool, cat.pools.map((p) => [p.name, p.description ? `${p.name} — ${p.description}` : p.name]),
          cat.pools[0] && cat.pools[0].name);
  el.flavor = h("select");
  el.nodeCount = h("input", { type: "number", min: 1, max: 1024, value: 1 });
  el.topic = input();
  el.events = EVENTS.map((name) => h("input", { type: "checkbox", value: name, id: `event-${name}` }));
  el.saveAs = h("input", { type: "checkbox" });
  el.saveName = input();
  el.saveDescription = input();

  // ---- rows: data sources and run parameters
  const data = [{ path: "", dataset: "", version: "" }];
  let params = [];
  const dataRows = h("div", { class: "rows" });
  const paramRows = h("div", { class: "rows" });

  function renderData() {
    const byDataset = el.dataMode.value === "datasets";
    dataRows.replaceChildren(...data.map((row, i) => {
      const remove = h("button", { type: "button", class: "remove", onclick: () => { data.splice(i, 1); renderData(); changed(); } },
        t("remove"));
      if (!byDataset) {
        const path = input({ value: row.path, oninput: (e) => { row.path = e.target.value; changed(); } });
        return h("div", { class: "row" }, field(`data-${i}-path`, "data.path", path, { path: `data[${i}].path` }),
          data.length > 1 ? remove : null, h("ul", { class: "violations", dataset: { for: `data[${i}]` } }));
      }
      const ds = h("select", { onchange: (e) => { row.dataset = e.target.value; row.version = ""; renderData(); changed(); } });
      options(ds, [["", "—"], ...cat.datasets.map((d) => [d.name, d.name])], row.dataset);
      const chosen = cat.datasets.find((d) => d.name === row.dataset);
      const version = h("select", { onchange: (e) => { row.version = e.target.value; changed(); } });
      options(version, [["", "—"], ...(chosen ? chosen.versions : []).map((v) => [v.version, `${v.version} (${v.files})`])],
              row.version);
      return h("div", { class: "row" }, field(`data-${i}-dataset`, "data.dataset", ds, { path: `data[${i}].dataset` }),
        field(`data-${i}-version`, "data.version", version, { path: `data[${i}].version` }),
        data.length > 1 ? remove : null, h("ul", { class: "violations", dataset: { for: `data[${i}]` } }));
    }));
  }

  function presetParams() {
    const preset = cat.presets.find((p) => p.name === el.preset.value);
    return preset ? preset.parameters : [];
  }

  function renderParams() {
    const typed = new Map(presetParams().map((p) => [p.name, p]));
    paramRows.replaceChildren(...params.map((row, i) => {
      const spec = typed.get(row.name);
      let value;
      if (spec && spec.choices) {
        value = h("select", { onchange: (e) => { row.value = e.target.value; changed(); } });
        options(value, spec.choices.map((c) => [c, c]), String(row.value));
      } else if (spec && spec.type === "bool") {
        value = h("input", { type: "checkbox", checked: row.value === true || row.value === "true",
                             onchange: (e) => { row.value = e.target.checked; changed(); } });
      } else {
        const numeric = spec && (spec.type === "int" || spec.type === "float");
        value = h("input", { type: numeric ? "number" : "text", value: row.value ?? "",
                             step: spec && spec.type === "float" ? "any" : undefined, min: spec?.min ?? undefined,
                             max: spec?.max ?? undefined,
                             oninput: (e) => { row.value = e.target.value; changed(); } });
      }
      const name = input({ value: row.name, readonly: Boolean(spec),
                           oninput: (e) => { row.name = e.target.value; changed(); } });
      const keys = fieldKeys(row.name);
      return h("div", { class: "row param" },
        field(`param-${i}-name`, "param.name", name, { path: keys[1] }),
        field(`param-${i}-value`, "param.value", value, { path: keys[0], help: spec ? spec.doc : undefined }),
        h("button", { type: "button", class: "remove", onclick: () => { params.splice(i, 1); renderParams(); changed(); } },
          t("remove")));
    }));
  }

  function renderFlavors() {
    const pool = cat.pools.find((p) => p.name === el.pool.value);
    options(el.flavor, (pool ? pool.flavors : []).map((f) => [f.name,
      `${f.name} — ${f.cpus} CPU, ${f.memory_mb} MiB${f.gpus ? `, ${f.gpus} GPU ${f.gpu_type || ""}` : ""} — ` +
      `${money(f.price_per_hour, cat.currency)} ${t("per_hour")}`]), pool && pool.flavors[0] && pool.flavors[0].name);
  }

  function renderVersions() {
    const engine = cat.engines.find((e) => e.name === el.engine.value);
    const versions = engine ? engine.versions.map((v) => v.version) : [];
    options(el.engineVersion, versions.map((v) => [v, v]), versions[versions.length - 1]);
  }

  const groups = {
    preset: h("div", { class: "group" }, field("preset", "preset", el.preset, { path: "algorithm.preset" })),
    framework: h("div", { class: "group" },
      field("engine", "engine", el.engine, { path: "algorithm.engine" }),
      field("engine-version", "engine_version", el.engineVersion, { path: "algorithm.engine_version" }),
      field("code-dir", "code_dir", el.codeDir, { path: "algorithm.code_dir" }),
      field("boot-file", "boot_file", el.bootFile, { path: "algorithm.boot_file" })),
    custom: h("div", { class: "group" },
      field("image", "image", el.image, { path: "algorithm.image" }),
      field("command", "command", el.command, { path: "algorithm.command", help: t("command.help") })),
  };

  function showSource() {
    for (const [name, group] of Object.entries(groups)) group.hidden = name !== el.source.value;
  }

  el.source.addEventListener("change", () => { showSource(); changed(); });
  el.preset.addEventListener("change", () => {
    params = presetParams().map((p) => ({ name: p.name, value: p.default ?? "" }));
    renderParams(); changed();
  });
  el.engine.addEventListener("change", () => { renderVersions(); changed(); });
  el.pool.addEventListener("change", () => { renderFlavors(); changed(); });
  el.dataMode.addEventListener("change", () => { data.splice(0, data.length, { path: "", dataset: "", version: "" });
                                                 renderData(); changed(); });
  const saveFields = h("div", { class: "group", hidden: true },
    field("save-name", "save_as.name", el.saveName, { path: "save_as.name" }),
    field("save-description", "save_as.description", el.saveDescription, { path: "save_as.description" }));
  el.saveAs.addEventListener("change", () => { saveFields.hidden = !el.saveAs.checked; changed(); });

  form.append(
    h("h1", {}, versionOf ? t("version.title") : t("create.title")),
    note ? h("p", { class: "help", id: "starting-point" }, note) : null,
    h("fieldset", {}, h("legend", {}, t("section.basic")),
      h("div", { class: "field" }, h("span", { class: "label" }, t("billing")), h("span", {}, t("billing.value"))),
      field("name", "name", el.name, { help: t("name.rule") }),
      field("description", "description", el.description)),
    h("fieldset", {}, h("legend", {}, t("section.params")),
      field("source", "algorithm", el.source, { path: "algorithm.source" }),
      groups.preset, groups.framework, groups.custom,
      field("data-mode", "data", el.dataMode, { path: "data" }), dataRows,
      h("button", { type: "button", class: "add", onclick: () => {
        data.push({ path: "", dataset: "", version: "" }); renderData(); changed(); } }, t("data.add")),
      h("div", { class: "field" }, h("span", { class: "label" }, t("parameters")), paramRows,
        h("ul", { class: "violations", dataset: { for: "parameters" } }),
        h("button", { type: "button", class: "add", id: "add-parameter",
                      onclick: () => { params.push({ name: "", value: "" }); renderParams(); changed(); } }, t("param.add"))),
      field("output-path", "output_path", el.outputPath, { path: "output_path" }),
      field("log-path", "log_path", el.logPath, { path: "log_path" })),
    h("fieldset", {}, h("legend", {}, t("section.resources")),
      field("pool", "pool", el.pool, { path: "resources.pool" }),
      field("flavor", "flavor", el.flavor, { path: "resources.flavor" }),
      field("node-count", "node_count", el.nodeCount, { path: "resources.node_count" })),
    h("fieldset", {}, h("legend", {}, t("section.more")),
      field("topic", "topic", el.topic, { path: "subscription.topic" }),
      h("div", { class: "field" }, h("span", { class: "label", id: "events-label" }, t("events")),
        h("div", { class: "checks", role: "group", "aria-labelledby": "events-label" },
          el.events.map((box) => h("label", { for: box.id }, box, box.value))),
        h("ul", { class: "violations", dataset: { for: "subscription.events" } })),
      h("div", { class: "field inline" }, el.saveAs, h("label", { for: "save-as" }, t("save_as"))),
      saveFields),
    general, priceBox, planState,
    h("div", { class: "actions" }, h("button", { type: "button", id: "next", onclick: next }, t("next"))));
  el.saveAs.id = "save-as";

  function request() {
    const own = requestOf({
      name: el.name.value, description: el.description.value, source: el.source.value,
      preset: el.preset.value, engine: el.engine.value, engineVersion: el.engineVersion.value,
      codeDir: el.codeDir.value, bootFile: el.bootFile.value, image: el.image.value, command: el.command.value,
      data: el.dataMode.value === "datasets" ? data.map((d) => ({ dataset: d.dataset, version: d.version }))
                                              : data.map((d) => ({ path: d.path })),
      params: params.map((p) => ({ name: p.name, value: typeof p.value === "string" ? parseValue(p.value) : p.value })),
      outputPath: el.outputPath.value, logPath: el.logPath.value,
      pool: el.pool.value, flavor: el.flavor.value, nodeCount: el.nodeCount.value,
      topic: el.topic.value, events: el.events.filter((b) => b.checked).map((b) => b.value),
      saveAs: el.saveAs.checked ? { name: el.saveName.value, description: el.saveDescription.value } : null,
    });
    return base ? withBase(base, own) : own;
  }

  function fill(spec) {
    el.name.value = spec.name || "";
    el.description.value = spec.description || "";
    const algo = spec.algorithm || {};
    el.source.value = algo.source || "framework";
    choose(el.preset, algo.preset || "");
    choose(el.engine, algo.engine || "");
    renderVersions();
    choose(el.engineVersion, algo.engine_version);
    el.codeDir.value = algo.code_dir || "";
    el.bootFile.value = algo.boot_file || "";
    el.image.value = algo.image || "";
    el.command.value = (algo.command || []).join("\n");
    const sources = spec.data || [];
    el.dataMode.value = sources.some((d) => d.dataset) ? "datasets" : "paths";
    data.splice(0, data.length, ...(sources.length ? sources : [{}]).map((d) => (
      { path: d.path || "", dataset: d.dataset || "", version: d.version || "" })));
    params = Object.entries(spec.parameters || {}).map(([name, value]) => ({ name, value: String(value) }));
    el.outputPath.value = spec.output_path || "";
    el.logPath.value = spec.log_path || "";
    const res = spec.resources || {};
    choose(el.pool, res.pool);
    renderFlavors();
    choose(el.flavor, res.flavor);
    el.nodeCount.value = res.node_count || 1;
    el.topic.value = spec.subscription ? spec.subscription.topic : "";
    for (const box of el.events) box.checked = Boolean(spec.subscription && spec.subscription.events.includes(box.value));
    renderData();
    renderParams();
    showSource();
  }

  function showViolations(violations, warnings = []) {
    const lists = new Map([...form.querySelectorAll("ul.violations")].map((ul) => [ul.dataset.for, ul]));
    for (const ul of lists.values()) ul.replaceChildren();
    for (const control of form.querySelectorAll("[aria-invalid]")) control.removeAttribute("aria-invalid");
    const place = (v, kind) => {
      let key = v.field || "";
      while (key && !lists.has(key)) key = parentField(key);
      const ul = lists.get(key) || general;
      ul.append(h("li", { class: kind, dataset: { field: v.field, code: v.code } }, key ? v.message : `${v.field}: ${v.message}`));
      const control = ul.parentElement && ul.parentElement.querySelector("input, select, textarea");
      if (kind === "violation" && control && ul !== general) control.setAttribute("aria-invalid", "true");
    };
    violations.forEach((v) => place(v, "violation"));
    warnings.forEach((v) => place(v, "warning"));
  }

  let planned = null;
  let asked = 0;
  let timer = null;
  async function plan() {
    const mine = ++asked;
    planState.textContent = t("plan.checking");
    try {
      const reply = await api("POST", "/jobs/plan", request());
      if (mine !== asked) return null;
      planned = reply;
      showViolations(reply.violations, reply.warnings);
      priceBox.textContent = `${t("price")}: ${money(reply.price_per_hour, reply.currency)} ${t("per_hour")}`;
      planState.textContent = reply.valid ? t("plan.ok") : `${t("plan.problems")}: ${reply.violations.length}`;
      return reply;
    } catch (err) {
      if (mine !== asked) return null;
      planned = null;
      showViolations(err instanceof Problem && err.errors.length ? err.errors : [{ field: "", code: "error", message: err.message }]);
      planState.textContent = err.message;
      return null;
    }
  }
  function changed() {
    planned = null;
    clearTimeout(timer);
    timer = setTimeout(plan, PLAN_DELAY_MS);
  }
  form.addEventListener("input", changed);
  form.addEventListener("change", changed);

  async function next() {
    clearTimeout(timer);
    const reply = planned || await plan();
    if (!reply || !reply.valid) return;
    showConfirm(reply);
  }

  function showConfirm(reply) {
    const spec = reply.spec;
    const algo = spec.algorithm;
    const rows = [
      ["name", spec.name], [null, t("confirm.version"), reply.next_version], ["description", spec.description],
      ["algorithm", t(`source.${algo.source}`)],
      algo.preset && ["preset", algo.preset], algo.engine && ["engine", `${algo.engine} ${algo.engine_version || ""}`],
      algo.code_dir && ["code_dir", algo.code_dir], algo.boot_file && ["boot_file", algo.boot_file],
      algo.image && ["image", algo.image], algo.command && ["command", algo.command.join(" ")],
      ["data", spec.data.map((d) => d.path || `${d.dataset} ${d.version || ""}`).join(", ")],
      ["parameters", Object.entries(spec.parameters).map(([k, v]) => `${k}=${v}`).join(" ")],
      ["output_path", spec.output_path], ["log_path", spec.log_path],
      ["pool", spec.resources.pool], ["flavor", reply.flavor || spec.resources.flavor],
      ["node_count", spec.resources.node_count],
      spec.subscription && ["topic", spec.subscription.topic],
      spec.subscription && ["events", spec.subscription.events.join(", ")],
      spec.save_as && ["save_as", spec.save_as.name],
      [null, t("confirm.price"), `${money(reply.price_per_hour, reply.currency)} ${t("per_hour")}`],
      reply.account_balance !== null && reply.account_balance !== undefined &&
        [null, t("confirm.balance"), money(reply.account_balance, reply.currency)],
    ].filter(Boolean).map(([key, label, value]) => key === null ? [label, value] : [t(key), label]);
    const error = h("ul", { class: "violations general" });
    const submit = h("button", { type: "button", id: "submit", onclick: async () => {
      submit.disabled = true;
      try {
        const job = versionOf
          ? await api("POST", `/jobs/${encodeURIComponent(versionOf)}/versions`, { overrides: overridesOf(reply.spec) })
          : await api("POST", "/jobs", reply.spec);
        location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
      } catch (err) {
        submit.disabled = false;
        error.replaceChildren(...(err.errors && err.errors.length ? err.errors : [{ field: "", message: err.message }])
          .map((v) => h("li", { class: "violation" }, v.field ? `${v.field}: ${v.message}` : v.message)));
      }
    } }, t("submit"));
    confirm.replaceChildren(
      h("h1", {}, t("confirm.title")),
      h("table", { class: "spec" }, h("tbody", {}, rows.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v ?? ""))))),
      h("details", {}, h("summary", {}, t("job.spec")), h("pre", {}, JSON.stringify(spec, null, 2))),
      error,
      h("div", { class: "actions" },
        h("button", { type: "button", class: "secondary", onclick: () => { confirm.hidden = true; form.hidden = false; } },
          t("back")), submit));
    form.hidden = true;
    confirm.hidden = false;
    window.scrollTo(0, 0);
  }

  renderVersions();
  renderFlavors();
  renderData();
  renderParams();
  showSource();
  if (base) {
    fill(base);
    el.name.readOnly = Boolean(versionOf); // a new version keeps the job's name
    changed();
  }
  root.append(form, confirm);
  return { el: root, leave: () => clearTimeout(timer) };
}
