// Playground: chat (streamed, with Stop, copy, regenerate), raw text completion, embeddings
// (a similarity matrix), rerank. Every wait says what it waits for.
import { api, stream } from "/ui/client.js";
import { busy, el, markdown } from "/ui/util.js";

const HISTORY = "modelyard.chat";

export async function playground(main, signal) {
  const listed = (await api("/v1/models", { signal })).data;
  const tabs = { Chat: chat, Complete: complete, Embeddings: embeddings, Rerank: rerank };
  const panel = el("section", { role: "tabpanel" });
  const bar = el("div", { class: "tabs", role: "tablist" });
  for (const [name, build] of Object.entries(tabs)) {
    bar.append(el("button", { type: "button", role: "tab", "data-tab": name.toLowerCase(),
      onclick: (e) => {
        for (const b of bar.children) b.setAttribute("aria-selected", String(b === e.target));
        panel.replaceChildren();
        build(panel, listed, signal);
      } }, name));
  }
  main.append(el("h1", {}, "Playground"), bar, panel);
  const wanted = new URLSearchParams(location.hash.split("?")[1]).get("tab") ?? "chat";
  (bar.querySelector(`[data-tab="${wanted}"]`) ?? bar.firstChild).click();
}

// The models that can do `capability`, and a note (with `submit` disabled) when none can.
function picker(listed, capability, submit) {
  const names = listed.filter((m) => m.capabilities.includes(capability)).map((m) => m.id);
  const select = el("select", { name: "model" }, names.map((n) => el("option", { value: n }, n)));
  const note = names.length ? null : el("p", { class: "error", role: "alert" },
    `No model you may use does ${capability}: ask an admin for one.`);
  submit.disabled = !names.length;
  return [select, note];
}

// What a request to `model` waits for first: its load, when it is not loaded.
async function waitingFor(model, signal) {
  const listed = await api("/v1/models", { signal }).catch(() => null);
  const state = listed?.data.find((m) => m.id === model)?.state;
  return state === "ready" ? "Waiting for the first token…" :
    `Loading ${model} (a first load can take a while)…`;
}

function sampling() {
  return {
    temperature: el("input", { name: "temperature", type: "number", min: 0, max: 2, step: 0.1,
      value: 0.7 }),
    maxTokens: el("input", { name: "max_tokens", type: "number", min: 1, value: 256 }),
  };
}

function speed(started, first, tokens) {
  const seconds = (performance.now() - first) / 1000;
  return `time to first token ${((first - started) / 1000).toFixed(2)} s · ${tokens} tokens · ` +
    `${seconds > 0 ? (tokens / seconds).toFixed(1) : "-"} tokens/s`;
}

// Streams `body` to `path`: `onPiece` gets each piece of text `pick` finds in an event (and
// whether it is the first); `stats` says the speed as it goes, then why it ended early.
async function generate(path, body, { signal, stats, pick, onPiece }) {
  const started = performance.now();
  let first = null;
  let tokens = 0;
  try {
    await stream(path, { method: "POST", body, signal, onData: (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      const piece = pick(chunk);
      if (!piece) return;
      first ??= performance.now();
      tokens += 1;
      onPiece(piece, tokens === 1);
      stats.textContent = speed(started, first, tokens);
    } });
  } catch (error) {
    if (error.name === "AbortError") stats.textContent += " · stopped";
    else stats.textContent = error.message;
  }
}

function chat(panel, listed, signal) {
  const send = el("button", { type: "submit", class: "primary" }, "Send");
  const [model, none] = picker(listed, "chat", send);
  const system = el("textarea", { name: "system", rows: 2, placeholder: "You are…" });
  const { temperature, maxTokens } = sampling();
  const prompt = el("textarea", { name: "prompt", rows: 3, placeholder: "Ask something" });
  const log = el("div", { class: "chat", "aria-live": "polite" });
  const stats = el("p", { class: "stats", role: "status" });
  const stop = el("button", { type: "button", disabled: true }, "Stop");
  const clear = el("button", { type: "button" }, "Clear");
  let messages = JSON.parse(localStorage.getItem(HISTORY) || "[]")
    .filter((m) => m.role !== "assistant" || m.content);
  let running = null;

  function draw() {
    log.replaceChildren(...messages.map((m, i) => bubble(m, i === messages.length - 1)));
  }
  function bubble(m, last) {
    const text = el("div", { class: "text" });
    text.innerHTML = markdown(m.content);  // escaped by markdown()
    const node = el("div", { class: `msg ${m.role}` }, text);
    if (m.role === "assistant") {
      node.append(el("div", { class: "row tools" },
        el("button", { type: "button", class: "small", onclick: (e) => {
          navigator.clipboard?.writeText(m.content);
          e.target.textContent = "Copied";
        } }, "Copy"),
        last ? el("button", { type: "button", class: "small", onclick: regenerate },
          "Regenerate") : null));
    }
    return node;
  }
  function save() {
    localStorage.setItem(HISTORY, JSON.stringify(messages));
  }

  async function regenerate() {
    if (running || messages.at(-1)?.role !== "assistant") return;
    messages.pop();
    await answer();
  }

  async function submit(event) {
    event.preventDefault();
    if (!prompt.value.trim() || running || send.disabled) return;
    messages.push({ role: "user", content: prompt.value });
    prompt.value = "";
    await answer();
  }

  async function answer() {
    const reply = { role: "assistant", content: "" };
    const history = messages.slice();
    messages.push(reply);
    draw();
    const node = log.lastChild;
    const text = node.querySelector(".text");
    node.classList.add("pending");
    node.setAttribute("aria-busy", "true");
    text.textContent = "…";
    running = new AbortController();
    signal.addEventListener("abort", () => running?.abort());
    send.disabled = true;
    stop.disabled = false;
    stats.textContent = await waitingFor(model.value, signal);
    const body = { model: model.value, stream: true, max_tokens: Number(maxTokens.value),
      temperature: Number(temperature.value),
      messages: system.value ? [{ role: "system", content: system.value }, ...history] : history };
    await generate("/v1/chat/completions", body, { signal: running.signal, stats,
      pick: (chunk) => chunk.choices?.[0]?.delta?.content,
      onPiece: (piece, first) => {
        if (first) {
          node.classList.remove("pending");
          node.removeAttribute("aria-busy");
        }
        reply.content += piece;
        text.innerHTML = markdown(reply.content);
      } });
    running = null;
    send.disabled = false;
    stop.disabled = true;
    if (!reply.content) {
      // Nothing came (stopped or failed before the first token): no empty turn stays; the
      // question goes back into the box, to send again.
      messages.pop();
      if (messages.at(-1)?.role === "user" && !prompt.value) {
        prompt.value = messages.pop().content;
      }
      if (stats.textContent.endsWith("stopped")) {
        stats.textContent = "Stopped before the first token.";
      }
    }
    save();
    draw();
  }

  stop.addEventListener("click", () => running?.abort());
  clear.addEventListener("click", () => {
    messages = [];
    localStorage.removeItem(HISTORY);
    draw();
  });
  prompt.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
  });
  const form = el("form", { onsubmit: submit }, none,
    el("div", { class: "row" }, el("label", {}, "Model", model),
      el("label", {}, "Temperature", temperature), el("label", {}, "Max tokens", maxTokens)),
    el("label", {}, "System prompt", system), log,
    el("label", {}, "Message (Enter sends, Shift+Enter: new line)", prompt),
    el("div", { class: "row" }, send, stop, clear), stats);
  panel.append(form);
  draw();
}

// Raw text completion (/v1/completions): the model goes on from the text, no chat template;
// what a base model is for.
function complete(panel, listed, signal) {
  const send = el("button", { type: "submit", class: "primary" }, "Complete");
  const [model, none] = picker(listed, "completion", send);
  const { temperature, maxTokens } = sampling();
  maxTokens.value = 64;
  const text = el("textarea", { name: "text", rows: 4 }, "Once upon a time,");
  const out = el("div", { class: "completion", "aria-live": "polite" });
  const stats = el("p", { class: "stats", role: "status" });
  const stop = el("button", { type: "button", disabled: true }, "Stop");
  let running = null;
  stop.addEventListener("click", () => running?.abort());
  const form = el("form", { onsubmit: async (event) => {
    event.preventDefault();
    if (running || send.disabled) return;
    const generated = el("span", { class: "generated" });
    out.replaceChildren(el("span", {}, text.value), generated);
    out.setAttribute("aria-busy", "true");
    running = new AbortController();
    signal.addEventListener("abort", () => running?.abort());
    send.disabled = true;
    stop.disabled = false;
    stats.textContent = await waitingFor(model.value, signal);
    const body = { model: model.value, prompt: text.value, stream: true,
      max_tokens: Number(maxTokens.value), temperature: Number(temperature.value) };
    await generate("/v1/completions", body, { signal: running.signal, stats,
      pick: (chunk) => chunk.choices?.[0]?.text,
      onPiece: (piece) => { generated.textContent += piece; } });
    running = null;
    send.disabled = false;
    stop.disabled = true;
    out.removeAttribute("aria-busy");
  } }, none, el("div", { class: "row" }, el("label", {}, "Model", model),
    el("label", {}, "Temperature", temperature), el("label", {}, "Max tokens", maxTokens)),
  el("label", {}, "Text to continue", text), el("div", { class: "row" }, send, stop,
    el("button", { type: "button", onclick: () => {
      text.value = out.textContent;
      out.replaceChildren();
    } }, "Keep and go on")), out, stats);
  panel.append(form);
}

function embeddings(panel, listed, signal) {
  const submit = el("button", { type: "submit", class: "primary" }, "Embed");
  const [model, none] = picker(listed, "embedding", submit);
  const inputs = el("textarea", { name: "inputs", rows: 5,
    placeholder: "One text per line" }, "A cat sits on the mat\nA kitten rests on a rug\n" +
    "Stock markets fell today");
  const out = el("div", { class: "scroll", tabindex: 0 });
  const stats = el("p", { class: "stats", role: "status" });
  const form = el("form", { onsubmit: async (event) => {
    event.preventDefault();
    const texts = inputs.value.split("\n").filter((t) => t.trim());
    await busy(submit, "Embedding…", async () => {
      stats.textContent = await waitingFor(model.value, signal);
      try {
        const answer = await api("/v1/embeddings", { method: "POST", signal,
          body: { model: model.value, input: texts } });
        out.replaceChildren(matrix(texts, answer.data.map((d) => d.embedding)));
        stats.textContent = "";
      } catch (error) {
        out.replaceChildren();
        stats.textContent = error.message;
      }
    });
  } }, none, el("label", {}, "Model", model), el("label", {}, "Texts", inputs), submit, stats,
  out);
  panel.append(form);
}

function matrix(texts, vectors) {
  const norm = (v) => Math.sqrt(v.reduce((a, x) => a + x * x, 0)) || 1;
  const cos = (a, b) => a.reduce((s, x, i) => s + x * b[i], 0) / (norm(a) * norm(b));
  const short = (t) => (t.length > 24 ? `${t.slice(0, 23)}…` : t);
  return el("table", { class: "matrix" },
    el("caption", {}, "Cosine similarity"),
    el("thead", {}, el("tr", {}, el("td", {}), texts.map((t) => el("th", { scope: "col",
      title: t }, short(t))))),
    el("tbody", {}, vectors.map((a, i) => el("tr", {}, el("th", { scope: "row", title: texts[i] },
      short(texts[i])), vectors.map((b) => el("td", {}, cos(a, b).toFixed(3)))))));
}

function rerank(panel, listed, signal) {
  const submit = el("button", { type: "submit", class: "primary" }, "Rank");
  const [model, none] = picker(listed, "rerank", submit);
  const query = el("input", { name: "query", value: "What do cats like?" });
  const documents = el("textarea", { name: "documents", rows: 5 },
    "Cats enjoy sleeping in warm, sunny spots.\nThe stock market closed higher today.\n" +
    "Paris is the capital of France.");
  const out = el("ol", { class: "ranked" });
  const stats = el("p", { class: "stats", role: "status" });
  const form = el("form", { onsubmit: async (event) => {
    event.preventDefault();
    const docs = documents.value.split("\n").filter((t) => t.trim());
    await busy(submit, "Ranking…", async () => {
      stats.textContent = await waitingFor(model.value, signal);
      try {
        const answer = await api("/v1/rerank", { method: "POST", signal,
          body: { model: model.value, query: query.value, documents: docs } });
        out.replaceChildren(...answer.results.map((r) => el("li", {},
          el("span", {}, docs[r.index]), " ",
          el("span", { class: "muted" }, `(${r.relevance_score.toFixed(4)})`))));
        stats.textContent = "";
      } catch (error) {
        out.replaceChildren();
        stats.textContent = error.message;
      }
    });
  } }, none, el("label", {}, "Model", model), el("label", {}, "Query", query),
  el("label", {}, "Documents (one per line)", documents), submit, stats, out);
  panel.append(form);
}
