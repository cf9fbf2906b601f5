// Models: the catalog with state, memory against the budget, queue; load, unload, show, pull.
import { api, can, stream } from "/ui/app.js";
import { el, relative, size, total } from "/ui/util.js";

export async function models(main, signal) {
  const status = el("p", { class: "muted", role: "status" });
  const body = el("tbody");
  const table = el("div", { class: "scroll" }, el("table", {},
    el("thead", {}, el("tr", {}, ["Model", "Kind", "State", "Memory", "Queue", "Expires", ""]
      .map((h) => el("th", { scope: "col" }, h)))), body));
  main.append(el("h1", {}, "Models"), status, table);
  if (can("admin")) main.append(pullForm(signal));

  let rows = [];
  let budgets = {};
  async function refresh() {
    if (can("monitor")) {
      const [catalog, ps] = await Promise.all([api("/api/models", { signal }),
        api("/api/ps", { signal })]);
      rows = catalog.models;
      budgets = ps.memory.budget;
      status.textContent = `${rows.length} models · budget ` + Object.entries(budgets)
        .map(([d, n]) => `${d} ${size(n)}`).join(", ") + ` · in use ${size(total(ps.memory.reserved))}`;
    } else {
      const listed = await api("/v1/models", { signal });
      rows = listed.data.map((m) => ({ name: m.id, kind: m.kind, state: m.state,
        aliases: m.aliases, memory: null }));
      status.textContent = `${rows.length} models you may use`;
    }
    render();
  }

  function render() {
    body.replaceChildren(...rows.map((m) => row(m)));
  }

  function row(m) {
    // One bar per device (RAM, gpu0, …) against that device's budget.
    const footprint = m.memory ? (m.memory.measured ?? m.memory.estimate) : null;
    const memory = footprint ? el("div", { class: "grid" }, Object.entries(footprint).map(
      ([device, bytes]) => {
        const budget = budgets[device] ?? 0;
        const share = budget ? Math.min(100, (100 * bytes) / budget) : 0;
        return el("div", { class: "bar", role: "img", "data-device": device,
          "data-bytes": bytes, "aria-label": `${device}: ${size(bytes)} of ${size(budget)}` },
        el("span", { style: `width:${share.toFixed(1)}%` }));
      }),
      el("span", { class: "muted" }, m.memory.measured ? `${size(total(footprint))} measured ` +
        `(estimate ${size(total(m.memory.estimate))})` : `${size(total(footprint))} estimated`))
      : "-";
    const actions = el("td", { class: "row" });
    if (can("admin")) {
      const resident = ["ready", "loading", "sleeping"].includes(m.state);
      actions.append(el("button", { type: "button", "data-action": resident ? "unload" : "load",
        onclick: (e) => act(e.target, resident ? "unload" : "load", m.name) },
        resident ? "Unload" : "Load"));
      actions.append(el("button", { type: "button", "aria-pressed": String(Boolean(m.pinned)),
        onclick: (e) => act(e.target, "pin", m.name, { pinned: !m.pinned }) },
        m.pinned ? "Unpin" : "Pin"));
    }
    if (can("monitor")) {
      actions.append(el("button", { type: "button", onclick: () => show(m.name, actions) },
        "Show"));
    }
    return el("tr", { "data-model": m.name },
      el("td", {}, el("strong", {}, m.name), m.aliases?.length ?
        el("div", { class: "muted" }, m.aliases.join(", ")) : null,
        m.last_error ? el("div", { class: "error" }, m.last_error) : null),
      el("td", {}, m.kind, m.ctx ? el("div", { class: "muted" },
        `ctx ${m.ctx} × ${m.parallel}`) : null),
      el("td", {}, el("span", { class: `badge ${m.state}`, "data-state": m.state }, m.state),
        m.pinned ? el("div", { class: "muted" }, "pinned") : null),
      el("td", {}, memory),
      el("td", {}, m.queued === undefined ? "-" : `${m.in_flight} running, ${m.queued} queued`),
      el("td", { "data-expires": m.expires_at ?? "" }, m.expires_at ? relative(m.expires_at) :
        "-"),
      actions);
  }

  async function act(button, action, name, extra = {}) {
    button.disabled = true;
    status.textContent = `${{ load: "Loading", unload: "Unloading", pin: "Pinning" }[action]} ` +
      `${name}…`;
    try {
      await api(`/api/${action}`, { method: "POST", body: { model: name, ...extra }, signal });
      await refresh();
    } catch (error) {
      status.textContent = error.message;
    } finally {
      button.disabled = false;
    }
  }

  async function show(name, cell) {
    const details = await api("/api/show", { method: "POST", body: { model: name }, signal });
    cell.append(el("details", { open: true }, el("summary", {}, "Details"),
      el("pre", { class: "log", style: "height:auto;max-height:20rem" },
        JSON.stringify(details, null, 2))));
  }

  await refresh();
  // Live: the scheduler's events say when something changed; an idle page sends nothing
  // but the countdowns' redraw, which needs no request.
  const tick = setInterval(() => {
    for (const cell of body.querySelectorAll("td[data-expires]")) {
      if (cell.dataset.expires) cell.textContent = relative(cell.dataset.expires);
    }
  }, 1000);
  signal.addEventListener("abort", () => clearInterval(tick));
  if (can("monitor")) {
    let pending = null;
    stream("/api/events?follow=true&since=0s", { signal, onData: () => {
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
  const form = el("form", { class: "row", onsubmit: async (event) => {
    event.preventDefault();
    progress.textContent = "Starting…";
    try {
      await stream("/api/pull", { method: "POST", body: { model: input.value, stream: true },
        signal, onData: (d) => {
          progress.textContent = d.error ? d.error.message : d.total ?
            `${d.status ?? ""} ${size(d.completed ?? 0)} of ${size(d.total)}` : (d.status ?? "");
        } });
    } catch (error) {
      progress.textContent = error.message;
    }
  } }, el("label", {}, "Pull a model from the hub", input),
    el("button", { type: "submit" }, "Pull"));
  return el("section", {}, el("h2", {}, "Pull"), form, progress);
}
