// Topics: the list (with a small form to create one); a topic's subscriptions, its deliveries and
// its dead letters (#/topics/NAME).
import { api } from "./api.js";
import { h, table, when } from "./dom.js";
import { t } from "./i18n.js";

export async function topicsView() {
  const error = h("p", { class: "error", role: "alert" });
  let topics = [];
  try { topics = (await api("GET", "/topics")).topics; } catch (err) { error.textContent = err.message; }
  const name = h("input", { type: "text", id: "topic-name", autocomplete: "off", required: true });
  const description = h("input", { type: "text", id: "topic-description" });
  const create = h("form", { class: "save-template", onsubmit: async (e) => {
    e.preventDefault();
    try {
      const made = await api("POST", "/topics", { name: name.value.trim(), description: description.value });
      location.hash = `#/topics/${encodeURIComponent(made.name)}`;
    } catch (err) { error.textContent = err.errors.length ? err.errors.map((v) => `${v.field}: ${v.message}`).join("; ") : err.message; }
  } },
  h("label", { for: "topic-name" }, t("topics.name")), name,
  h("label", { for: "topic-description" }, t("description")), description,
  h("button", { type: "submit" }, t("topics.create")));
  const rows = topics.map((topic) => h("tr", { dataset: { topic: topic.name } },
    h("td", {}, h("a", { href: `#/topics/${encodeURIComponent(topic.name)}` }, topic.name)),
    h("td", {}, topic.description), h("td", {}, topic.project),
    h("td", { class: "numbers" }, `${topic.active_subscriptions} / ${topic.subscriptions}`), h("td", {}, when(topic.created_at))));
  return { el: h("section", { class: "card topics" }, h("h1", {}, t("nav.topics")), create, error,
    table("topics", [t("topics.name"), t("description"), t("datasets.project"), t("topics.active"), t("jobs.created")],
      rows, t("topics.none"))) };
}

function deliveryRows(deliveries) {
  return deliveries.map((d) => h("tr", { dataset: { state: d.state } },
    h("td", {}, when(d.updated_at)), h("td", {}, d.notification),
    h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(d.job_id)}` }, d.job_id)),
    h("td", { class: "location" }, d.endpoint), h("td", {}, h("span", { class: `status d-${d.state}` }, d.state)),
    h("td", { class: "numbers" }, d.attempts), h("td", {}, d.last_status ?? ""), h("td", { class: "reason" }, d.last_error || "")));
}

export async function topicView(name) {
  const error = h("p", { class: "error", role: "alert" });
  const path = `/topics/${encodeURIComponent(name)}`;
  let topic = null, subscriptions = [], deliveries = null, dead = null;
  try {
    [topic, { subscriptions }, deliveries, dead] = await Promise.all([api("GET", path), api("GET", `${path}/subscriptions`),
      api("GET", `${path}/deliveries?limit=50`), api("GET", `${path}/deliveries?dead=true&limit=50`)]);
  } catch (err) { error.textContent = err.message; }
  if (!topic) return { el: h("section", { class: "card" }, h("h1", {}, name), error) };
  const subs = subscriptions.map((s) => h("tr", { dataset: { subscription: s.id } },
    h("td", {}, s.id), h("td", {}, s.protocol), h("td", { class: "location" }, s.endpoint),
    h("td", {}, h("span", { class: `status d-${s.state}` }, s.state)), h("td", {}, when(s.created_at)),
    h("td", { class: "reason" }, s.disabled_reason || "")));
  const headings = [t("job.at"), t("events"), t("topics.job"), t("topics.endpoint"), t("jobs.status"),
    t("topics.attempts"), t("topics.last_status"), t("topics.last_error")];
  return { el: h("section", { class: "card topic" },
    h("div", { class: "titlebar" }, h("h1", {}, topic.name), h("a", { class: "button secondary", href: "#/topics" }, t("nav.topics"))),
    error,
    h("dl", {}, h("dt", {}, t("description")), h("dd", {}, topic.description),
      h("dt", {}, t("datasets.project")), h("dd", {}, topic.project), h("dt", {}, t("jobs.created")), h("dd", {}, when(topic.created_at))),
    h("h2", {}, t("topics.subscriptions")),
    table("subscriptions", [t("topics.id"), t("topics.protocol"), t("topics.endpoint"), t("jobs.status"), t("jobs.created"),
      t("job.reason")], subs, t("topics.no_subscriptions")),
    h("h2", {}, `${t("topics.deliveries")} (${deliveries.total})`),
    table("deliveries", headings, deliveryRows(deliveries.deliveries), t("topics.no_deliveries")),
    h("h2", {}, `${t("topics.dead")} (${dead.total})`),
    table("dead-letters", headings, deliveryRows(dead.deliveries), t("topics.no_dead"))) };
}
