// The API client: the session's key, requests, streams that come back after the server
// does, and the connection state the header shows.

const TOKEN = "modelyard.token";

export const session = { token: localStorage.getItem(TOKEN), me: null };

export function keep(token) {
  session.token = token;
  if (token) localStorage.setItem(TOKEN, token);
  else localStorage.removeItem(TOKEN);
}

export class ApiError extends Error {
  constructor(status, body) {
    // Ollama's routes answer errors as {"error": "message"}.
    super(body?.error?.message || (typeof body?.error === "string" && body.error)
      || (status ? `HTTP ${status}` : "The server cannot be reached"));
    this.status = status;
    this.code = body?.error?.code;
  }
}

// What the caller may do, from its role.
export function can(what) {
  const role = session.me?.role ?? "admin";
  if (what === "admin") return role === "admin";
  if (what === "monitor") return role === "admin" || role === "monitor";
  if (what === "inference") return role === "admin" || role === "user";
  if (what === "keys") return session.me?.kind !== "local";
  return true;
}

// Called with the server's reason when it refuses the session's key (revoked, expired).
let refused = () => {};
export function onRefused(handler) {
  refused = handler;
}

// ---- the connection ---------------------------------------------------------------------
// Lost when a request cannot reach the server (or a live stream ends); then /health is asked
// every second until it answers, and whatever waits (live streams, pages) comes back.

const link = { up: true, since: null, probe: null, waiting: [] };

function show(text, state) {
  const badge = document.getElementById("conn");
  badge.textContent = text;
  badge.dataset.state = state;
  document.body.classList.toggle("offline", state === "down");
}

export function lost() {
  if (!link.up) return;
  link.up = false;
  link.since = new Date();
  show(`Server unreachable since ${link.since.toLocaleTimeString()}; reconnecting…`, "down");
  link.probe = setInterval(probe, 1000);
}

async function probe() {
  if (await answers()) found();
}

async function answers() {
  try {
    return (await fetch("/health", { cache: "no-store" })).ok;
  } catch {
    return false;
  }
}

function found() {
  if (link.up) return;
  link.up = true;
  clearInterval(link.probe);
  show("Reconnected", "up");
  setTimeout(() => { if (link.up) show("", ""); }, 5000);
  for (const resume of link.waiting.splice(0)) resume();
  window.dispatchEvent(new Event("modelyard:online"));
}

// Resolves once the server answers again (at once when it does now).
export function online() {
  return link.up ? Promise.resolve() : new Promise((resume) => link.waiting.push(resume));
}

async function send(path, { method = "GET", body, signal, accept }) {
  const headers = {};
  if (session.token) headers.Authorization = `Bearer ${session.token}`;
  if (accept) headers.Accept = accept;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  try {
    return await fetch(path, { method, signal, headers,
      body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    lost();
    throw new ApiError(0, null);
  }
}

function failed(response, data) {
  const error = new ApiError(response.status, data);
  if (response.status === 401) refused(error.message);
  return error;
}

export async function api(path, options = {}) {
  const response = await send(path, options);
  const text = await response.text();
  const data = text && response.headers.get("content-type")?.includes("json")
    ? JSON.parse(text) : text;
  if (!response.ok) throw failed(response, data);
  return data;
}

// Server-sent events over fetch (EventSource cannot send a key): calls onData for each
// `data:` payload until the stream ends or signal aborts.
export async function stream(path, { method = "GET", body, signal, onData }) {
  const response = await send(path, { method, body, signal, accept: "text/event-stream" });
  if (!response.ok) throw failed(response, await response.json().catch(() => null));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (error) {
      if (error.name !== "AbortError") lost();
      throw error;
    }
    if (chunk.done) return;
    buffer += decoder.decode(chunk.value, { stream: true });
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

// A live stream that outlives the server's restarts: reopened (at `path()` then, so that a
// page can ask for what it missed) each time the server answers again; `onOpen` before each.
// Ends when `signal` aborts or the server refuses it (an ApiError with a status, thrown).
export async function follow(path, { signal, onData, onOpen }) {
  while (!signal.aborted) {
    try {
      await onOpen?.();
      await stream(path(), { signal, onData });
    } catch (error) {
      if (signal.aborted || error.name === "AbortError") return;
      if (error instanceof ApiError && error.status) throw error;
    }
    if (signal.aborted) return;
    // The stream ended: a server shutting down ends its streams, a lagging reader is cut off.
    if (!(await answers())) lost();
    await new Promise((resume) => setTimeout(resume, 1000));
    await online();
  }
}
