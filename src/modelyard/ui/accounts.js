// Usage (charts and CSV) and keys (make, revoke, change limits), as the role allows.
import { api, can, session } from "/ui/client.js";
import { busy, confirmed, el } from "/ui/util.js";

export async function usage(main, signal) {
  const by = el("select", { name: "by" }, ["day", "model", "key", "user"].map((g) =>
    el("option", { value: g }, `by ${g}`)));
  const since = el("input", { name: "since", value: "168h" });
  const chart = el("div");
  const problem = el("p", { class: "error", role: "alert" });
  const csv = el("a", { href: "#", download: "usage.csv" }, "Export CSV");
  main.append(el("h1", {}, "Usage"), el("div", { class: "row" }, el("label", {}, "Totals", by),
    el("label", {}, "Since (ISO time, or 24h, 168h…)", since)), problem, chart, csv);
  const draw = async () => {
    const query = `by=${by.value}&since=${encodeURIComponent(since.value)}`;
    let data;
    try {
      data = await api(`/api/usage?${query}`, { signal });
    } catch (error) {
      // Old numbers under a new question would mislead: none are shown, and why.
      if (error.name === "AbortError") return;
      chart.replaceChildren();
      since.setAttribute("aria-invalid", "true");
      problem.textContent = error.message;
      return;
    }
    since.removeAttribute("aria-invalid");
    problem.textContent = "";
    const top = Math.max(1, ...data.rows.map((r) => r.prompt_tokens + r.completion_tokens));
    chart.replaceChildren(el("table", {}, el("thead", {}, el("tr", {},
      [by.value, "Requests", "Tokens", "Cost", ""].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, data.rows.map((r) => {
        const tokens = r.prompt_tokens + r.completion_tokens;
        return el("tr", {}, el("td", {}, r[by.value] ?? "-"), el("td", {}, r.requests),
          el("td", {}, tokens), el("td", {}, r.cost), el("td", { style: "width:40%" },
            el("div", { class: "bar", role: "img", "aria-label": `${tokens} tokens` },
              el("span", { style: `width:${(100 * tokens / top).toFixed(1)}%` }))));
      }))));
  };
  csv.addEventListener("click", async (event) => {
    event.preventDefault();
    const response = await fetch(`/api/usage?format=csv&limit=1000000&since=` +
      encodeURIComponent(since.value), { headers: { Authorization: `Bearer ${session.token}` } });
    const url = URL.createObjectURL(await response.blob());
    const link = el("a", { href: url, download: "usage.csv" });
    link.click();
    URL.revokeObjectURL(url);
  });
  by.addEventListener("change", draw);
  since.addEventListener("change", draw);
  await draw();
}

export async function keys(main, signal) {
  main.append(el("h1", {}, "Keys"));
  if (!can("keys")) {
    main.append(el("p", {}, "This server runs without keys: anyone who reaches it may use " +
      "it, as an admin. To hand out keys with roles, models, limits and balances, start it " +
      "with keys required (MODELYARD_AUTH=keys, or auth = \"keys\" in modelyard.toml)."));
    return;
  }
  const admin = can("admin");
  const body = el("tbody");
  const made = el("div", { role: "status" });
  const name = el("input", { name: "name", placeholder: "what it is for" });
  const fields = admin ? {
    role: el("select", { name: "role" }, ["user", "monitor", "admin"].map((r) =>
      el("option", { value: r }, r))),
    models: el("input", { name: "models", placeholder: "all, or qwen*, demo" }),
    rpm: el("input", { name: "rpm", type: "number", min: 1 }),
    tpm: el("input", { name: "tpm", type: "number", min: 1 }),
    balance: el("input", { name: "balance", type: "number", min: 0 }),
  } : {};
  const form = el("form", { class: "row", onsubmit: async (event) => {
    event.preventDefault();
    const request = { name: name.value || "key" };
    for (const [field, input] of Object.entries(fields)) {
      if (!input.value) continue;
      request[field] = field === "models" ? input.value.split(",").map((m) => m.trim()) :
        field === "role" ? input.value : Number(input.value);
    }
    try {
      const key = await api("/api/keys", { method: "POST", body: request, signal });
      const box = el("div", { class: "keybox", "data-key": "" }, key.key);
      made.replaceChildren(el("p", {}, `Key ${key.name} made. It is shown only now:`), box,
        el("button", { type: "button", onclick: () => navigator.clipboard?.writeText(key.key) },
          "Copy"));
      await list();
    } catch (error) {
      made.replaceChildren(el("p", { class: "error" }, error.message));
    }
  } }, el("label", {}, "Name", name),
    Object.entries(fields).map(([field, input]) => el("label", {}, field, input)),
    el("button", { type: "submit", class: "primary" }, "Make a key"));
  // Only admins and users logged in with their password make keys (a key cannot).
  const makes = admin || session.me?.kind === "session";
  const note = el("p", {}, "Log in with your user name and password to make keys.");
  main.append(makes ? form : note, made, el("div", { class: "scroll", tabindex: 0 }, el("table", {},
    el("thead", {}, el("tr", {}, ["Key", "Name", "User", "Role", "Models", "Limits", "Balance",
      "Status", ""].map((h) => el("th", { scope: "col" }, h)))), body)));

  const editing = new Map();  // key id → its editor row, kept across redraws
  async function list() {
    const data = await api("/api/keys", { signal });
    // The last admin key cannot be revoked (the server says so too): no button offers it.
    const admins = data.keys.filter((k) => k.enabled && k.role === "admin");
    const last = admins.length === 1 ? admins[0].id : null;
    const rows = [];
    for (const k of data.keys) {
      rows.push(keyRow(k, k.id !== last));
      if (editing.has(k.id)) rows.push(editing.get(k.id));
    }
    body.replaceChildren(...rows);
  }
  async function revoke(button, k) {
    if (!(await confirmed(`Revoke the key ${k.name} (${k.prefix}…)? Whatever uses it stops ` +
      "working within a second; this cannot be undone.", "Revoke"))) return;
    await busy(button, "Revoking…", async () => {
      try {
        await api(`/api/keys/${k.id}`, { method: "DELETE", signal });
      } catch (error) {
        made.replaceChildren(el("p", { class: "error" }, error.message));
      }
    });
    await list();
  }
  function edit(k) {
    if (editing.has(k.id)) editing.delete(k.id);
    else {
      editing.set(k.id, el("tr", { class: "details", "data-editor": k.id },
        el("td", { colspan: 9 }, editor(k, signal, async () => {
          editing.delete(k.id);
          await list();
        }))));
    }
    list();
  }
  function keyRow(k, revocable) {
    return el("tr", { "data-key-id": k.id },
      el("td", {}, k.prefix), el("td", {}, k.name), el("td", {}, k.user ?? "-"),
      el("td", {}, k.role), el("td", {}, k.models.join(", ") || "all"),
      el("td", {}, [k.rpm && `${k.rpm} rpm`, k.tpm && `${k.tpm} tpm`,
        k.max_concurrent && `${k.max_concurrent} at once`].filter(Boolean).join(", ") || "-"),
      el("td", {}, k.balance ?? "-"), el("td", {}, k.enabled ? "enabled" : "revoked"),
      el("td", { class: "row" }, k.enabled && revocable ? el("button", { type: "button",
        onclick: (e) => revoke(e.target, k) }, "Revoke") : "", admin ? el("button", {
        type: "button", "aria-expanded": String(editing.has(k.id)), onclick: () => edit(k) },
      "Edit") : ""));
  }
  await list();
  if (admin) await users(main, signal);
}

// Limits, models and balance of one key, changed in place.
function editor(k, signal, done) {
  const inputs = {
    models: el("input", { name: "models", value: k.models.join(", ") }),
    rpm: el("input", { name: "rpm", type: "number", min: 1, value: k.rpm ?? "" }),
    tpm: el("input", { name: "tpm", type: "number", min: 1, value: k.tpm ?? "" }),
    max_concurrent: el("input", { name: "max_concurrent", type: "number", min: 1,
      value: k.max_concurrent ?? "" }),
    add_balance: el("input", { name: "add_balance", type: "number" }),
  };
  const message = el("p", { role: "status" });
  return el("form", { class: "grid", onsubmit: async (event) => {
    event.preventDefault();
    const body = { clear: [] };
    for (const [field, input] of Object.entries(inputs)) {
      const value = input.value.trim();
      if (field === "models") {
        if (value) body.models = value.split(",").map((m) => m.trim()).filter(Boolean);
        else body.clear.push("models");
      } else if (value) body[field] = Number(value);
      else if (field !== "add_balance") body.clear.push(field);
    }
    try {
      await api(`/api/keys/${k.id}`, { method: "PATCH", body, signal });
      await done();
    } catch (error) {
      message.textContent = error.message;
    }
  } }, Object.entries(inputs).map(([field, input]) => el("label", {},
    field.replace("_", " "), input)), el("button", { type: "submit" }, "Save"), message);
}

async function users(main, signal) {
  const body = el("tbody");
  const name = el("input", { name: "new-user", autocomplete: "off" });
  const password = el("input", { name: "new-password", type: "password",
    autocomplete: "new-password" });
  const role = el("select", { name: "user-role" }, ["user", "monitor", "admin"].map((r) =>
    el("option", { value: r }, r)));
  const message = el("p", { role: "status" });
  const form = el("form", { class: "row", onsubmit: async (event) => {
    event.preventDefault();
    try {
      await api("/api/users", { method: "POST", signal, body: { name: name.value,
        password: password.value || undefined, role: role.value } });
      name.value = password.value = "";
      message.textContent = "";
      await list();
    } catch (error) {
      message.textContent = error.message;
    }
  } }, el("label", {}, "User name", name), el("label", {}, "Password", password),
    el("label", {}, "Role", role), el("button", { type: "submit" }, "Add user"));
  main.append(el("h2", {}, "Users"), form, message, el("div", { class: "scroll", tabindex: 0 },
    el("table", {}, el("thead", {}, el("tr", {}, ["User", "Role", "Balance", "Status", ""]
      .map((h) => el("th", { scope: "col" }, h)))), body)));
  async function list() {
    const data = await api("/api/users", { signal });
    body.replaceChildren(...data.users.map((u) => el("tr", { "data-user": u.name },
      el("td", {}, u.name), el("td", {}, u.role), el("td", {}, u.balance ?? "-"),
      el("td", {}, u.enabled ? "enabled" : "disabled"),
      el("td", {}, el("button", { type: "button", onclick: async (e) => {
        if (!(await confirmed(`Remove the user ${u.name} and all its keys? Its usage stays ` +
          "in the ledger.", "Remove"))) return;
        await busy(e.target, "Removing…", async () => {
          try {
            await api(`/api/users/${encodeURIComponent(u.name)}`, { method: "DELETE", signal });
            message.textContent = "";
          } catch (error) {
            message.textContent = error.message;
          }
        });
        await list();
      } }, "Remove")))));
  }
  await list();
}
