// HTTP to this server's /v1 API, the API key that goes with it, and the status line where answers and errors show.
// Every request of the page goes through api() (relative paths, so the page works behind any proxy prefix); the key
// the user types is sent as `Authorization: Bearer` and kept for the tab only (sessionStorage). `$` is the page's
// element lookup by id, shared by all modules.

export const $ = (id) => document.getElementById(id);
const KEY_STORE = "sam2-serve-api-key";

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// The key typed in the page ("" when none).
export function apiKey() {
  return $("api-key").value.trim();
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function apiError(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch (_) { /* not JSON: keep the status line */ }
  if (response.status === 401) message += " (enter the API key at the top of the page)";
  const retry = response.headers.get("Retry-After");
  if (retry) message += ` (retry in ${retry} s)`;
  return new ApiError(response.status, message);
}

// POST (or another method) to a path relative to this page; `json` or `form` is the body. Throws ApiError.
export async function api(path, { json, form, method = "POST", signal, keepalive = false } = {}) {
  const init = { method, headers: authHeaders(), signal, keepalive };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, `the server cannot be reached (${err.message})`);
  }
  if (!response.ok) throw await apiError(response);
  return response;
}

export function setStatus(text, kind = "") {
  const el = $("status");
  el.textContent = text;
  el.className = kind;
}

export function showError(err) {
  if (err && err.name === "AbortError") return;
  setStatus(err instanceof ApiError ? err.message : `error: ${err && err.message ? err.message : err}`, "error");
  if (!(err instanceof ApiError)) console.error(err);  // a bug of the page, not a refused request
}

// NDJSON stream -> one parsed object per line, in order, as lines arrive.
export async function* ndjson(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl).trim();
        buffer = buffer.slice(nl + 1);
        if (line) yield JSON.parse(line);
      }
    }
    if (buffer.trim()) yield JSON.parse(buffer);
  } finally {
    reader.cancel().catch(() => {});
  }
}

// The key field: filled from this tab's storage at start, stored again on each edit (removed when emptied).
export function setupApiKey() {
  const key = $("api-key");
  key.value = sessionStorage.getItem(KEY_STORE) || "";
  key.addEventListener("input", () => {
    if (key.value) sessionStorage.setItem(KEY_STORE, key.value);
    else sessionStorage.removeItem(KEY_STORE);
  });
}
