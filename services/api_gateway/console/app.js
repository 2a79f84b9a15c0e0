// The console: hash routes (#/login, #/jobs, #/create[?template=|?version=], #/jobs/<id>, #/templates,
// #/datasets[/<name>[/<version>]], #/topics[/<name>], #/agents), a view each.
import { api, setToken, token } from "./api.js";
import { h } from "./dom.js";
import { language, setLanguage, t, translate } from "./i18n.js";
import { createView } from "./create.js";
import { jobView, jobsView } from "./jobs.js";
import { templatesView } from "./templates.js";
import { datasetView, datasetsView } from "./datasets.js";
import { topicView, topicsView } from "./topics.js";
import { agentsView } from "./agents.js";

const view = document.getElementById("view");
let leaving = null; // the current view's clean-up (streams, timers)

function loginView() {
  const input = h("input", { id: "token", type: "password", autocomplete: "off", required: true });
  const error = h("p", { class: "error", role: "alert" });
  const form = h("form", { class: "card login", onsubmit: async (e) => {
    e.preventDefault();
    setToken(input.value.trim());
    try {
      await api("GET", "/whoami");
      location.hash = sessionStorage.getItem("tm.after") || "#/jobs";
    } catch (err) {
      setToken(null);
      error.textContent = `${t("login.bad")}: ${err.message}`;
    }
  } },
  h("h1", {}, t("login.title")),
  h("label", { for: "token" }, t("login.token")), input,
  h("p", { class: "help" }, t("login.help")),
  error,
  h("button", { type: "submit" }, t("login.submit")));
  return form;
}

async function route() {
  if (leaving) { leaving(); leaving = null; }
  const path = location.hash.replace(/^#/, "") || "/jobs";
  document.getElementById("logout").hidden = !token();
  if (!token() && path !== "/login") {
    sessionStorage.setItem("tm.after", "#" + path);
    location.hash = "#/login";
    return;
  }
  view.replaceChildren();
  const [where, query] = path.split("?");
  const parts = where.split("/").slice(1).map(decodeURIComponent);
  let shown;
  if (where === "/login") shown = { el: loginView() };
  else if (where === "/create") shown = await createView(new URLSearchParams(query || ""));
  else if (parts[0] === "jobs" && parts[1]) shown = await jobView(parts[1]);
  else if (where === "/templates") shown = await templatesView();
  else if (parts[0] === "datasets") shown = parts[1] ? await datasetView(parts[1], parts[2]) : await datasetsView();
  else if (parts[0] === "topics") shown = parts[1] ? await topicView(parts[1]) : await topicsView();
  else if (where === "/agents") shown = await agentsView();
  else shown = await jobsView();
  view.replaceChildren(shown.el);
  leaving = shown.leave || null;
  if (token()) showWho();
}

async function showWho() {
  try {
    const me = await api("GET", "/whoami");
    document.getElementById("who").textContent = me.user || "";
  } catch { /* shown by the view */ }
}

const langSelect = document.getElementById("lang");
langSelect.value = language();
setLanguage(language());
translate();
langSelect.addEventListener("change", () => { setLanguage(langSelect.value); translate(); route(); });
document.getElementById("logout").addEventListener("click", () => {
  setToken(null);
  document.getElementById("who").textContent = "";
  location.hash = "#/login";
});
window.addEventListener("tm-unauthorized", () => { setToken(null); location.hash = "#/login"; });
window.addEventListener("hashchange", route);
route();
