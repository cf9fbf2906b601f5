// The shell: who is logged in, the login dialog, the pages and the router.
import { ApiError, api, can, keep, onRefused, session } from "/ui/client.js";
import { el } from "/ui/util.js";
import { models } from "/ui/models.js";
import { playground } from "/ui/playground.js";
import { events, logs, activity } from "/ui/watch.js";
import { usage, keys } from "/ui/accounts.js";

const PAGES = { models, playground, events, logs, activity, usage, keys };
const NEEDS = { playground: "inference", events: "monitor", logs: "monitor",
  activity: "monitor" };
// Pages that follow the server live come back by themselves; these are drawn again.
const STILL = new Set(["usage", "keys"]);

const dialog = document.getElementById("login");
const form = document.getElementById("login-form");

function showLogin(message = "") {
  document.getElementById("login-error").textContent = message;
  if (!dialog.open) dialog.showModal();
}

// The server refused the key the page holds (revoked, expired): forget it, say why.
onRefused((reason) => {
  const had = session.token;
  keep(null);
  form.elements.key.value = "";
  showLogin(had ? `The key was refused: ${reason.replace(/\.$/, "")}. Log in again.` : "");
});

// Escape closes the dialog: the page says why it is empty and how to log in.
dialog.addEventListener("cancel", () => {
  document.getElementById("page").replaceChildren(el("section", { class: "empty" },
    el("h1", {}, "Log in"),
    el("p", {}, "This server needs a key or a login to show its models."),
    el("button", { type: "button", class: "primary", onclick: () => showLogin() }, "Log in")));
});

async function login() {
  const data = new FormData(form);
  try {
    if (data.get("key")) {
      keep(data.get("key").trim());
    } else {
      const answer = await api("/api/login", { method: "POST",
        body: { username: data.get("username"), password: data.get("password") } });
      keep(answer.token);
    }
    await whoami();
    dialog.close();
    route();
  } catch (error) {
    keep(null);
    showLogin(error.message);
  }
}

async function whoami() {
  session.me = await api("/api/me");
  const me = session.me;
  document.getElementById("who").textContent = me.kind === "local" ? "" :
    `${me.user?.name ?? me.key?.name ?? ""} (${me.role})`;
  document.getElementById("logout").hidden = me.kind === "local";
  for (const link of document.querySelectorAll("nav a[data-needs]")) {
    link.hidden = !can(link.dataset.needs);
  }
}

let current = null;
let drawn = { page: null, failed: false };

async function route() {
  const name = location.hash.replace(/^#\//, "").split("?")[0] || "models";
  const page = PAGES[name] ? name : "models";
  for (const link of document.querySelectorAll("nav a")) {
    link.toggleAttribute("aria-current", link.dataset.page === page);
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
  }
  current?.abort();
  current = new AbortController();
  drawn = { page, failed: false };
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
    if (error.name === "AbortError") return;
    drawn.failed = true;
    main.append(el("p", { class: "error", role: "alert" }, error.message));
  }
}

// Back from a lost connection: a page that could not be drawn, or one that does not follow
// the server live, is drawn again.
window.addEventListener("modelyard:online", () => {
  if (!session.me) start();
  else if (drawn.failed || STILL.has(drawn.page)) route();
});

form.addEventListener("submit", (event) => {
  event.preventDefault();
  login();
});
document.getElementById("logout").addEventListener("click", () => {
  keep(null);
  location.reload();
});
window.addEventListener("hashchange", route);

async function start() {
  try {
    await whoami();
    route();
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    if (!error.status) {  // a refused key: the login is open already (onRefused)
      document.getElementById("page").replaceChildren(el("p", { class: "error",
        role: "alert" }, "The server cannot be reached; this page comes back with it."));
    }
  }
}

start();
