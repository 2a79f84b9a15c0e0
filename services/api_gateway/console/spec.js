// The form's values as a job request (the body of POST /jobs and /jobs/plan), and the field
// paths the validator names.  Empty fields are left out, so that the validator reports each
// missing one by its own name.

const blank = (text) => text === undefined || text === null || String(text).trim() === "";
const given = (text) => (blank(text) ? undefined : String(text).trim());

// A run parameter's text as the value the code gets: numbers and booleans typed, else the text.
export function parseValue(text) {
  const s = String(text).trim();
  if (s === "true" || s === "false") return s === "true";
  if (/^-?\d+$/.test(s) && Math.abs(Number(s)) <= Number.MAX_SAFE_INTEGER) return Number(s);
  if (/^-?(\d+\.\d*|\.\d+|\d+)(e[-+]?\d+)?$/i.test(s)) return Number(s);
  return s;
}

// The paths a violation of run parameter `name` names: its value, and its name when the name is bad.
export function fieldKeys(name) {
  return [`parameters.${name}`, `parameters[${JSON.stringify(name)}]`];
}

// "data[0].path" -> "data[0]" -> "data" -> "": where a violation goes when no field has its path.
export function parentField(path) {
  const shorter = path.replace(/(\.[^.[\]]+|\[[^\]]*\])$/, "");
  return shorter === path ? "" : shorter;
}

export function requestOf(f) {
  const algorithm = { source: f.source };
  if (f.source === "preset") algorithm.preset = given(f.preset);
  if (f.source === "framework") {
    Object.assign(algorithm, { engine: given(f.engine), engine_version: given(f.engineVersion),
                               code_dir: given(f.codeDir), boot_file: given(f.bootFile) });
  }
  if (f.source === "custom") {
    algorithm.image = given(f.image);
    const command = String(f.command || "").split("\n").map((s) => s.trim()).filter(Boolean);
    if (command.length) algorithm.command = command;
  }
  const data = f.data.map((d) => (d.dataset !== undefined
    ? { dataset: given(d.dataset), version: given(d.version) } : { path: given(d.path) }))
    .filter((d) => Object.values(d).some((v) => v !== undefined));
  const parameters = {};
  for (const p of f.params) if (!blank(p.name)) parameters[p.name.trim()] = p.value;
  const nodes = Number(f.nodeCount);
  const body = {
    name: given(f.name), description: f.description || "", algorithm, data, parameters,
    output_path: given(f.outputPath), log_path: given(f.logPath),
    resources: { pool: f.pool, flavor: given(f.flavor),
                 node_count: Number.isInteger(nodes) && nodes >= 1 ? nodes : f.nodeCount },
  };
  if (!blank(f.topic) || f.events.length) body.subscription = { topic: given(f.topic) ?? "", events: f.events };
  if (f.saveAs) body.save_as = { name: given(f.saveAs.name) ?? "", description: f.saveAs.description || "" };
  return JSON.parse(JSON.stringify(body)); // drops the undefined fields
}

// The top-level fields the form edits; a spec the form starts from (a template's, or the job's
// whose new version it makes) keeps every other field (account, retry, env, ...) as it was.
export const FORM_FIELDS = ["description", "algorithm", "data", "parameters", "output_path", "log_path",
                            "resources", "subscription", "save_as"];

export function withBase(base, request) {
  const kept = { ...base };
  for (const key of FORM_FIELDS) delete kept[key];
  return { ...kept, ...request };
}

// The form's fields as the overrides of POST /jobs/{name}/versions: each replaced as a whole,
// a field the form left empty cleared.
export function overridesOf(spec) {
  return Object.fromEntries(FORM_FIELDS.map((key) => [key, spec[key] ?? null]));
}
