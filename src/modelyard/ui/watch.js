// Events, logs and activity: what the server decided, wrote and served, live.
import { api, follow } from "/ui/client.js";
import { el } from "/ui/util.js";

const MAX_ROWS = 500;

function clock(t) {
  return new Date(t * 1000).toLocaleTimeString();
}

// Rows put on top of `body` (the newest first, at most MAX_ROWS), shown while their
// data-model contains what `filter` says; returns the function that adds one.
function liveRows(body, filter) {
  const shown = (row) => !filter.value || row.dataset.model.includes(filter.value);
  filter.addEventListener("input", () => {
    for (const row of body.children) row.hidden = !shown(row);
  });
  return (row) => {
    row.hidden = !shown(row);
    body.prepend(row);
    while (body.children.length > MAX_ROWS) body.lastChild.remove();
  };
}

export async function events(main, signal) {
  const filter = el("input", { name: "model", placeholder: "all models" });
  const body = el("tbody");
  main.append(el("h1", {}, "Events"),
    el("label", {}, "Model", filter),
    el("div", { class: "scroll", tabindex: 0 }, el("table", {}, el("thead", {}, el("tr", {},
      ["#", "Time", "Model", "Event", "What happened"].map((h) => el("th", { scope: "col" }, h)))),
      body)));
  const put = liveRows(body, filter);
  // The last hour's, then each as it happens; back from a lost connection (the server
  // restarted, or the network dropped), those since the last one shown, each once.
  const seen = new Set();
  let last = null;
  const add = (e) => {
    const key = `${e.id}@${e.time}`;
    if (seen.has(key)) return;
    seen.add(key);
    last = Math.max(last ?? 0, e.time);
    put(el("tr", { "data-kind": e.type, "data-model": e.model ?? "" },
      el("td", {}, e.id), el("td", {}, clock(e.time)), el("td", {}, e.model ?? "-"),
      el("td", {}, e.type), el("td", {}, e.message)));
  };
  follow(() => `/api/events?follow=true&since=${last === null ? "1h" : last}`,
    { signal, onData: add }).catch(() => {});
}

export async function logs(main, signal) {
  const catalog = await api("/api/models", { signal });
  const source = el("select", { name: "source" }, el("option", { value: "" }, "the server"),
    catalog.models.map((m) => el("option", { value: m.name }, m.name)));
  const search = el("input", { name: "search", placeholder: "text to look for" });
  const pause = el("button", { type: "button", "aria-pressed": "false" }, "Pause");
  const view = el("div", { class: "log", role: "log", "aria-live": "off", tabindex: 0 });
  main.append(el("h1", {}, "Logs"), el("div", { class: "row" }, el("label", {}, "Log", source),
    el("label", {}, "Search", search), pause), view);
  let paused = false;
  let lines = [];
  let following = null;
  const draw = () => {
    if (paused) return;
    const shown = search.value ? lines.filter((l) => l.includes(search.value)) : lines;
    view.textContent = shown.join("\n");
    view.scrollTop = view.scrollHeight;
  };
  // Each (re)connection sends the last 200 lines again: they replace what is shown.
  const open = () => {
    following?.abort();
    following = new AbortController();
    signal.addEventListener("abort", () => following.abort());
    const path = source.value ? `/api/logs/${encodeURIComponent(source.value)}` : "/api/logs";
    follow(() => `${path}?n=200&follow=true`, { signal: following.signal,
      onOpen: () => { lines = []; },
      onData: (line) => {
        lines.push(line);
        if (lines.length > 2000) lines.splice(0, lines.length - 2000);
        draw();
      } }).catch((error) => { view.textContent = error.message; });
  };
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    pause.setAttribute("aria-pressed", String(paused));
    draw();
  });
  search.addEventListener("input", draw);
  source.addEventListener("change", open);
  open();
}

export async function activity(main, signal) {
  const filter = el("input", { name: "model", placeholder: "all models" });
  const body = el("tbody");
  const columns = ["Time", "Model", "Route", "Key", "Status", "Tokens", "TTFT ms", "Tokens/s",
    "Total ms"];
  main.append(el("h1", {}, "Activity"), el("label", {}, "Model", filter),
    el("div", { class: "scroll", tabindex: 0 }, el("table", {}, el("thead", {}, el("tr", {},
      columns.map((h) => el("th", { scope: "col" }, h)))), body)));
  const put = liveRows(body, filter);
  const add = (r) => put(el("tr", { "data-model": r.model ?? "" }, el("td", {}, clock(r.time)),
    el("td", {}, r.model ?? "-"), el("td", {}, r.route ?? "-"),
    el("td", {}, r.key ?? r.user ?? "-"),
    el("td", {}, r.cancelled ? `${r.status} (cancelled)` : r.status),
    el("td", {}, `${r.prompt_tokens} + ${r.completion_tokens}`), el("td", {}, r.ttft_ms ?? "-"),
    el("td", {}, r.tokens_per_s ?? "-"), el("td", {}, r.total_ms)));
  const past = await api("/api/activity?limit=100", { signal });
  for (const r of past.requests) add(r);
  // A busy server finishes hundreds of requests a second: drawn in batches, four a second.
  let waiting = [];
  let timer = null;
  const later = (r) => {
    waiting.push(r);
    timer ??= setTimeout(() => {
      timer = null;
      for (const item of waiting.splice(0).slice(-MAX_ROWS)) add(item);
    }, 250);
  };
  signal.addEventListener("abort", () => clearTimeout(timer));
  follow(() => "/api/activity?follow=true&every=0.5", { signal, onData: later })
    .catch(() => {});
}
