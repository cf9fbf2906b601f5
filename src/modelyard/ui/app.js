// The shell: who is logged in, the API client, the pages and the router.
import { el } from "/ui/util.js";
import { models } from "/ui/models.js";
import { playground } from "/ui/playground.js";
import { events, logs, activity } from "/ui/watch.js";
import { usage, keys } from "/ui/accounts.js";

const PAGES = { models, playground, events, logs, activity, usage, keys };
const NEEDS = { playground: "inference", events: "monitor", logs: "monitor",
  activity: "monitor", usage: "accounts", keys: "accounts" };
const TOKEN = "modelyard.token";

export const session = { token: localStorage.getItem(TOKEN), me: null };

export class ApiError extends Error {
  constructor(status, body) {
    // Ollama's routes answer errors as {"error": "message"}.
    super(body?.error?.message || (typeof body?.error === "string" && body.error)
      || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code;
  }
}

function headers(extra = {}) {
  const h = { ...extra };
  if (session.token) h.Authorization = `Bearer ${session.token}`;
  return h;
}

export async function api(path, { method = "GET", body, signal } = {}) {
  const response = await fetch(path, {
    method, signal,
    headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const data = text && response.headers.get("content-type")?.includes("json")
    ? JSON.parse(text) : text;
  if (!response.ok) {
    if (response.status === 401) showLogin();
    throw new ApiError(response.status, data);
  }
  return data;
}

// Server-sent events over fetch (EventSource cannot send a key): calls onData for each
// `data:` payload until the stream ends or signal aborts.
export async function stream(path, { method = "GET", body, signal, onData }) {
  const response = await fetch(path, {
    method, signal,
    headers: headers({ Accept: "text/event-stream",
      ...(body === undefined ? {} : { "Content-Type": "application/json" }) }),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) {
    const data = await response.json().catch(() => null);
    if (response.status === 401) showLogin();
    throw new ApiError(response.status, data);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        onData(JSON.parse(data));
      }
    }
  }
}

// What the caller may do, from its role.
export function can(what) {
  const role = session.me?.role ?? "admin";
  if (what === "admin") return role === "admin";
  if (what === "monitor") return role === "admin" || role === "monitor";
  if (what === "inference") return role === "admin" || role === "user";
  if (what === "accounts") return session.me?.kind !== "local";
  return true;
}

function showLogin(message = "") {
  const dialog = document.getElementById("login");
  document.getElementById("login-error").textContent = message;
  if (!dialog.open) dialog.showModal();
}

async function login(form) {
  const data = new FormData(form);
  try {
    if (data.get("key")) {
      session.token = data.get("key").trim();
    } else {
      const answer = await api("/api/login", { method: "POST",
        body: { username: data.get("username"), password: data.get("password") } });
      session.token = answer.token;
    }
    localStorage.setItem(TOKEN, session.token);
    await whoami();
    document.getElementById("login").close();
    route();
  } catch (error) {
    session.token = null;
    localStorage.removeItem(TOKEN);
    showLogin(error.message);
  }
}

async function whoami() {
  session.me = await api("/api/me");
  const who = document.getElementById("who");
  const me = session.me;
  who.textContent = me.kind === "local" ? "" :
    `${me.user?.name ?? me.key?.name ?? ""} (${me.role})`;
  document.getElementById("logout").hidden = me.kind === "local";
  for (const link of document.querySelectorAll("nav a[data-needs]")) {
    link.hidden = !can(link.dataset.needs);
  }
}

let current = null;

async function route() {
  const name = location.hash.replace(/^#\//, "").split("?")[0] || "models";
  const page = PAGES[name] ? name : "models";
  for (const link of document.querySelectorAll("nav a")) {
    link.toggleAttribute("aria-current", link.dataset.page === page);
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
  }
  current?.abort();
  current = new AbortController();
  const main = document.getElementById("page");
  main.replaceChildren();
  if (NEEDS[page] && !can(NEEDS[page])) {
    main.append(el("p", { class: "error", role: "alert" },
      `Your role (${session.me?.role}) may not use this page.`));
    return;
  }
  try {
    await PAGES[page](main, current.signal);
  } catch (error) {
    if (error.name !== "AbortError") main.append(el("p", { class: "error", role: "alert" },
      error.message));
  }
}

document.getElementById("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  login(event.target);
});
document.getElementById("logout").addEventListener("click", () => {
  session.token = null;
  localStorage.removeItem(TOKEN);
  location.reload();
});
window.addEventListener("hashchange", route);

try {
  await whoami();
  route();
} catch (error) {
  if (!(error instanceof ApiError && error.status === 401)) throw error;
}
