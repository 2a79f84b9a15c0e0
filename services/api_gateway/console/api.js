// The HTTP API as the logged-in token; errors are the API's problem documents.
const BASE = "/api/v1";

export function token() { return sessionStorage.getItem("tm.token"); }
export function setToken(value) {
  if (value) sessionStorage.setItem("tm.token", value); else sessionStorage.removeItem("tm.token");
}

export class Problem extends Error {
  constructor(status, doc) {
    super(doc.detail || doc.title || `HTTP ${status}`);
    this.status = status;
    this.doc = doc;
    this.errors = doc.errors || [];
  }
}

export async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(BASE + path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const doc = text ? JSON.parse(text) : {};
  if (!response.ok) {
    if (response.status === 401) window.dispatchEvent(new CustomEvent("tm-unauthorized"));
    throw new Problem(response.status, doc);
  }
  return doc;
}

// Server-Sent Events over fetch (an EventSource cannot send the Authorization header):
// calls onEvent(type, data, id) per event until the stream ends or signal aborts.
export async function stream(path, onEvent, signal) {
  const response = await fetch(BASE + path, {
    headers: { Authorization: `Bearer ${token()}`, Accept: "text/event-stream" }, signal,
  });
  if (!response.ok) throw new Problem(response.status, await response.json());
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let type = "message", data = "", id = null;
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const [field, ...rest] = line.split(":");
        const text = rest.join(":").replace(/^ /, "");
        if (field === "event") type = text;
        else if (field === "data") data += (data ? "\n" : "") + text;
        else if (field === "id") id = text;
      }
      if (data || type !== "message") onEvent(type, data ? JSON.parse(data) : null, id);
    }
  }
}
