// Models: the catalog (searched, filtered, sorted) with state, memory against the budget,
// queue; load, unload, pin, details, delete; pull.
import { api, can, follow, stream } from "/ui/client.js";
import { busy, confirmed, el, relative, size, total } from "/ui/util.js";

const COLUMNS = [["Model", "name"], ["Kind", null], ["State", "state"],
  ["Memory", "memory"], ["Queue", null], ["Expires", null], ["", null]];
const SHOWN = 200;  // rows drawn at once; the rest behind "Show more"
const ORDER = { failed: 0, loading: 1, ready: 2, sleeping: 3, unloading: 4, stopped: 5 };
const RESIDENT = ["ready", "loading", "sleeping"];

function footprintOf(m) {
  return m.memory ? (m.memory.measured ?? m.memory.estimate) : null;
}

const SORTS = {
  name: (a, b) => a.name.localeCompare(b.name),
  state: (a, b) => (ORDER[a.state] ?? 9) - (ORDER[b.state] ?? 9) || a.name.localeCompare(b.name),
  memory: (a, b) => total(footprintOf(b)) - total(footprintOf(a)) || a.name.localeCompare(b.name),
};

export async function models(main, signal) {
  const status = el("p", { class: "muted", role: "status" });
  const search = el("input", { name: "search", type: "search", placeholder: "name, alias, engine",
    autocomplete: "off" });
  const state = el("select", { name: "state" }, [["", "any state"], ["loaded", "loaded"],
    ["failed", "failed"], ["stopped", "stopped"]].map(([v, t]) => el("option", { value: v }, t)));
  const kind = el("select", { name: "kind" }, el("option", { value: "" }, "any kind"));
  const body = el("tbody");
  const more = el("button", { type: "button", hidden: true }, "Show more");
  const view = { sort: "name", shown: SHOWN };
  const head = el("tr", {}, COLUMNS.map(([title, key]) => el("th", { scope: "col",
    "aria-sort": key === view.sort ? "ascending" : null }, key ? el("button", { type: "button",
    class: "sort", "data-sort": key, onclick: () => sortBy(key) }, title) : title)));
  const nodesView = el("section", { class: "nodes", "aria-label": "Nodes", hidden: true });
  main.append(el("h1", {}, "Models"), status, nodesView,
    el("div", { class: "row tools" }, el("label", {}, "Search", search),
      el("label", {}, "State", state), el("label", {}, "Kind", kind)),
    el("div", { class: "scroll", tabindex: 0 }, el("table", { class: "models" }, el("thead", {}, head), body)),
    more);
  if (can("admin")) main.append(pullForm(signal));

  let rows = [];
  let budgets = {};
  let nodes = {};  // a cluster's: node → its budget and what is held there, per device
  const notes = new Map();  // model → what its last action said (an error)
  const open = new Map();  // model → its details row, kept across redraws

  // One read at a time, and one more when asked meanwhile: answers never land out of order.
  let reading = null;
  let again = false;
  function refresh() {
    if (reading) {
      again = true;
      return reading;
    }
    reading = (async () => {
      try {
        do {
          again = false;
          await read();
        } while (again);
      } finally {
        reading = null;
      }
    })();
    return reading;
  }

  async function read() {
    if (can("monitor")) {
      const [catalog, ps] = await Promise.all([api("/api/models", { signal }),
        api("/api/ps", { signal })]);
      rows = catalog.models;
      budgets = ps.memory.budget;
      nodes = ps.memory.nodes ?? {};
      drawNodes();
      const loaded = rows.filter((m) => RESIDENT.includes(m.state)).length;
      const failed = rows.filter((m) => m.state === "failed").length;
      status.textContent = `${rows.length} models · ${loaded} loaded` +
        (failed ? ` · ${failed} failed` : "") + " · budget " + Object.entries(budgets)
        .map(([d, n]) => `${d} ${size(n)}`).join(", ") + ` · in use ${size(total(ps.memory.reserved))}`;
    } else {
      const listed = await api("/v1/models", { signal });
      rows = listed.data.map((m) => ({ name: m.id, kind: m.kind, state: m.state,
        aliases: m.aliases, memory: null }));
      status.textContent = `${rows.length} models you may use`;
    }
    const kinds = [...new Set(rows.map((m) => m.kind))].sort();
    if (kinds.join() !== [...kind.options].slice(1).map((o) => o.value).join()) {
      const chosen = kind.value;
      kind.replaceChildren(el("option", { value: "" }, "any kind"),
        ...kinds.map((k) => el("option", { value: k }, k)));
      kind.value = kinds.includes(chosen) ? chosen : "";
    }
    render();
  }

  function matching() {
    const words = search.value.toLowerCase().split(/\s+/).filter(Boolean);
    return rows.filter((m) => {
      if (kind.value && m.kind !== kind.value) return false;
      if (state.value === "loaded" && !RESIDENT.includes(m.state)) return false;
      if (state.value && state.value !== "loaded" && m.state !== state.value) return false;
      const text = [m.name, ...(m.aliases ?? []), m.engine ?? "", m.kind].join(" ")
        .toLowerCase();
      return words.every((w) => text.includes(w));
    }).sort(SORTS[view.sort]);
  }

  function render() {
    const found = matching();
    const drawn = [];
    for (const m of found.slice(0, view.shown)) {
      drawn.push(row(m));
      if (open.has(m.name)) drawn.push(open.get(m.name));
    }
    body.replaceChildren(...drawn);
    if (!found.length) {
      body.append(el("tr", {}, el("td", { colspan: COLUMNS.length, class: "muted" },
        rows.length ? "No model matches." : "The catalog is empty: pull a model, or put a " +
        ".gguf file in the models directory.")));
    }
    more.hidden = found.length <= view.shown;
    more.textContent = `Show ${Math.min(SHOWN, found.length - view.shown)} more ` +
      `(${found.length} match)`;
  }

  function sortBy(key) {
    view.sort = key;
    for (const th of head.children) {
      const button = th.querySelector("button");
      if (button?.dataset.sort === key) th.setAttribute("aria-sort", "ascending");
      else th.removeAttribute("aria-sort");
    }
    render();
  }

  function bar(device, bytes, budget, label = device) {
    const share = budget ? Math.min(100, (100 * bytes) / budget) : 0;
    return el("div", { class: "bar", role: "img", "data-device": device,
      "data-bytes": bytes, "aria-label": `${label}: ${size(bytes)} of ${size(budget)}` },
    el("span", { style: `width:${share.toFixed(1)}%` }));
  }

  // In a cluster (more than one node): each node's memory, a bar per device.
  function drawNodes() {
    const listed = Object.entries(nodes);
    nodesView.hidden = listed.length < 2;
    if (nodesView.hidden) return;
    nodesView.replaceChildren(el("h2", {}, "Nodes"), el("div", { class: "grid nodes" },
      listed.map(([name, n]) => el("div", { class: "node", "data-node": name },
        el("strong", {}, name),
        ...Object.entries(n.budget).map(([device, budget]) =>
          bar(device, n.reserved[device] ?? 0, budget, `${name} ${device}`)),
        el("span", { class: "muted" },
          `${size(total(n.reserved))} of ${size(total(n.budget))} in use`)))));
  }

  function placedOn(m) {
    return Object.keys(m.memory?.nodes ?? {});
  }

  function memoryCell(m) {
    const footprint = footprintOf(m);
    if (!footprint) return "-";
    if (!Object.keys(footprint).length) return el("span", { class: "muted" }, "unknown");
    // Against its node's budget when it runs on one node; else the budget of all of them.
    const on = placedOn(m);
    const budget = on.length === 1 && nodes[on[0]] ? nodes[on[0]].budget : budgets;
    return el("div", { class: "grid" }, Object.entries(footprint).map(([device, bytes]) =>
      bar(device, bytes, budget[device] ?? 0)),
    el("span", { class: "muted" }, m.memory.measured ? `${size(total(footprint))} ` +
      `measured (estimate ${size(total(m.memory.estimate))})` :
      `${size(total(footprint))} estimated`));
  }

  function row(m) {
    const actions = el("td", { class: "actions", "data-label": "" });
    if (can("admin")) {
      const resident = RESIDENT.includes(m.state);
      const action = resident ? "unload" : "load";
      const label = resident ? "Unload" : m.state === "failed" ? "Retry" : "Load";
      actions.append(el("button", { type: "button", "data-action": action,
        class: m.state === "failed" ? "primary" : null,
        onclick: (e) => act(e.target, action, m) }, label));
      actions.append(el("button", { type: "button", "aria-pressed": String(Boolean(m.pinned)),
        onclick: (e) => act(e.target, "pin", m, { pinned: !m.pinned }) },
        m.pinned ? "Unpin" : "Pin"));
    }
    if (can("monitor")) {
      actions.append(el("button", { type: "button", "aria-expanded": String(open.has(m.name)),
        onclick: () => toggle(m) }, "Details"));
    }
    const note = notes.get(m.name);
    const error = m.state === "failed" ? m.last_error : note;
    return el("tr", { "data-model": m.name },
      el("td", { "data-label": "Model" }, el("strong", {}, m.name), m.aliases?.length ?
        el("div", { class: "muted" }, m.aliases.join(", ")) : null),
      el("td", { "data-label": "Kind" }, m.kind, m.ctx ? el("div", { class: "muted" },
        `ctx ${m.ctx} × ${m.parallel}`) : null),
      el("td", { "data-label": "State" }, el("span", { class: `badge ${m.state}`,
        "data-state": m.state }, m.state),
      m.pinned ? el("div", { class: "muted" }, "pinned") : null,
      Object.keys(nodes).length > 1 && placedOn(m).length ? el("div", { class: "muted",
        "data-nodes": placedOn(m).join(" ") }, `on ${placedOn(m).join(", ")}`) : null,
      error ? el("div", { class: "error reason" }, error) : null),
      el("td", { "data-label": "Memory" }, memoryCell(m)),
      el("td", { "data-label": "Queue" }, m.queued === undefined ? "-" :
        `${m.in_flight} running, ${m.queued} queued`),
      el("td", { "data-label": "Expires", "data-expires": m.expires_at ?? "" },
        m.expires_at ? relative(m.expires_at) : "-"),
      actions);
  }

  async function act(button, action, m, extra = {}) {
    const doing = { load: "Loading…", unload: "Unloading…", pin: "…" }[action];
    notes.delete(m.name);
    await busy(button, doing, async () => {
      try {
        await api(`/api/${action}`, { method: "POST", body: { model: m.name, ...extra },
          signal });
      } catch (error) {
        if (error.name === "AbortError") return;
        notes.set(m.name, error.message);
      }
      await refresh().catch(() => {});
    });
  }

  async function toggle(m) {
    if (open.has(m.name)) {
      open.delete(m.name);
      render();
      return;
    }
    const cell = el("td", { colspan: COLUMNS.length }, el("p", { class: "muted" }, "Reading…"));
    open.set(m.name, el("tr", { class: "details", "data-details": m.name }, cell));
    render();
    try {
      const details = await api("/api/show", { method: "POST", body: { model: m.name },
        signal });
      cell.replaceChildren(...detailsView(m, details));
    } catch (error) {
      cell.replaceChildren(el("p", { class: "error" }, error.message));
    }
  }

  function detailsView(m, d) {
    const facts = [["Engine", d.engine], ["Path", d.path], ["Serves", d.serves?.join(", ")],
      ["Architecture", d.details?.family ?? d.architecture], ["Parameters",
        d.details?.parameter_size], ["Quantization", d.details?.quantization_level],
      ["Trained context", d.context_length],
      ["Estimate", d.memory?.estimate ? size(total(d.memory.estimate)) : null],
      ["Estimate counts", d.memory?.parts ? Object.entries(d.memory.parts)
        .map(([part, n]) => `${part} ${size(n)}`).join(", ") : null],
      ["Measured peak", d.memory?.measured ? size(total(d.memory.measured)) : null],
      ["Pulled from", d.pulled ? `${d.pulled.reference} (${d.pulled.at ?? ""})` : null],
      ...Object.entries(d.settings ?? {}).map(([k, v]) => [k, typeof v === "object" ?
        JSON.stringify(v) : String(v)])].filter(([, v]) => v !== null && v !== undefined &&
        v !== "");
    const parts = [el("dl", { class: "facts" }, facts.map(([k, v]) => [el("dt", {}, k),
      el("dd", {}, v)])),
    el("details", {}, el("summary", {}, "Everything (JSON)"),
      el("pre", { class: "log short" }, JSON.stringify(d, null, 2)))];
    if (can("admin") && d.pulled) {
      parts.push(el("button", { type: "button", class: "danger", onclick: (e) =>
        remove(e.target, m) }, "Delete files"));
    }
    return parts;
  }

  async function remove(button, m) {
    if (!(await confirmed(`Delete the files of ${m.name}? It is unloaded first, and pulling ` +
      "it again downloads it again.", "Delete"))) return;
    await busy(button, "Deleting…", async () => {
      try {
        await api("/api/delete", { method: "DELETE", body: { model: m.name, force: true },
          signal });
        open.delete(m.name);
      } catch (error) {
        notes.set(m.name, error.message);
      }
      await refresh().catch(() => {});
    });
  }

  search.addEventListener("input", () => { view.shown = SHOWN; render(); });
  state.addEventListener("change", () => { view.shown = SHOWN; render(); });
  kind.addEventListener("change", () => { view.shown = SHOWN; render(); });
  more.addEventListener("click", () => { view.shown += SHOWN; render(); });

  await refresh();
  // Live: the scheduler's events say when something changed; an idle page sends nothing
  // but the countdowns' redraw, which needs no request. Back after a lost connection, the
  // page reads the catalog again.
  const tick = setInterval(() => {
    for (const cell of body.querySelectorAll("td[data-expires]")) {
      if (cell.dataset.expires) cell.textContent = relative(cell.dataset.expires);
    }
  }, 1000);
  signal.addEventListener("abort", () => clearInterval(tick));
  if (can("monitor")) {
    let pending = null;
    let first = true;
    follow(() => "/api/events?follow=true&since=0s", { signal,
      onOpen: () => (first ? (first = false) : refresh()),
      onData: () => {
        pending ??= setTimeout(() => { pending = null; refresh().catch(() => {}); }, 300);
      } }).catch(() => {});
  } else {
    const poll = setInterval(() => refresh().catch(() => {}), 10000);
    signal.addEventListener("abort", () => clearInterval(poll));
  }
}

function pullForm(signal) {
  const progress = el("p", { class: "muted", role: "status" });
  const input = el("input", { name: "model", placeholder: "owner/repo:Q4_K_M" });
  const button = el("button", { type: "submit" }, "Pull");
  const form = el("form", { class: "row", onsubmit: async (event) => {
    event.preventDefault();
    progress.textContent = "Starting…";
    await busy(button, "Pulling…", async () => {
      try {
        await stream("/api/pull", { method: "POST", body: { model: input.value, stream: true },
          signal, onData: (d) => {
            progress.textContent = d.error ? d.error.message : d.total ?
              `${d.status ?? ""} ${size(d.completed ?? 0)} of ${size(d.total)}` :
              (d.status ?? "");
          } });
      } catch (error) {
        progress.textContent = error.message;
      }
    });
  } }, el("label", {}, "Pull a model from the hub", input), button);
  return el("section", {}, el("h2", {}, "Pull"), form, progress);
}
