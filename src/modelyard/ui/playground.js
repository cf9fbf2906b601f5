// Playground: chat (streamed, with Stop), embeddings (a similarity matrix), rerank.
import { api, stream } from "/ui/app.js";
import { el, markdown } from "/ui/util.js";

const HISTORY = "modelyard.chat";

export async function playground(main, signal) {
  const listed = (await api("/v1/models", { signal })).data;
  const tabs = { Chat: chat, Embeddings: embeddings, Rerank: rerank };
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

function picker(listed, capability) {
  const names = listed.filter((m) => m.capabilities.includes(capability)).map((m) => m.id);
  return el("select", { name: "model" }, names.map((n) => el("option", { value: n }, n)));
}

function chat(panel, listed, signal) {
  const model = picker(listed, "chat");
  const system = el("textarea", { name: "system", rows: 2, placeholder: "You are…" });
  const temperature = el("input", { name: "temperature", type: "number", min: 0, max: 2,
    step: 0.1, value: 0.7 });
  const maxTokens = el("input", { name: "max_tokens", type: "number", min: 1, value: 256 });
  const prompt = el("textarea", { name: "prompt", rows: 3, placeholder: "Ask something" });
  const log = el("div", { class: "chat", "aria-live": "polite" });
  const stats = el("p", { class: "stats", role: "status" });
  const send = el("button", { type: "submit", class: "primary" }, "Send");
  const stop = el("button", { type: "button", disabled: true }, "Stop");
  const clear = el("button", { type: "button" }, "Clear");
  let messages = JSON.parse(localStorage.getItem(HISTORY) || "[]");
  let running = null;

  function draw() {
    log.replaceChildren(...messages.map((m) => bubble(m)));
  }
  function bubble(m) {
    const node = el("div", { class: `msg ${m.role}` });
    node.innerHTML = markdown(m.content);  // escaped by markdown()
    return node;
  }

  async function submit(event) {
    event.preventDefault();
    if (!prompt.value.trim() || running) return;
    messages.push({ role: "user", content: prompt.value });
    prompt.value = "";
    const answer = { role: "assistant", content: "" };
    messages.push(answer);
    draw();
    const node = log.lastChild;
    running = new AbortController();
    signal.addEventListener("abort", () => running?.abort());
    send.disabled = true;
    stop.disabled = false;
    const started = performance.now();
    let first = null;
    let tokens = 0;
    const history = messages.slice(0, -1);
    const body = { model: model.value, stream: true, max_tokens: Number(maxTokens.value),
      temperature: Number(temperature.value),
      messages: system.value ? [{ role: "system", content: system.value }, ...history] : history };
    try {
      await stream("/v1/chat/completions", { method: "POST", body, signal: running.signal,
        onData: (chunk) => {
          if (chunk.error) throw new Error(chunk.error.message);
          const delta = chunk.choices?.[0]?.delta?.content;
          if (!delta) return;
          first ??= performance.now();
          tokens += 1;
          answer.content += delta;
          node.innerHTML = markdown(answer.content);
          const seconds = (performance.now() - first) / 1000;
          stats.textContent = `time to first token ${((first - started) / 1000).toFixed(2)} s` +
            ` · ${tokens} tokens · ${seconds > 0 ? (tokens / seconds).toFixed(1) : "-"} tokens/s`;
        } });
    } catch (error) {
      if (error.name === "AbortError") stats.textContent += " · stopped";
      else stats.textContent = error.message;
    } finally {
      running = null;
      send.disabled = false;
      stop.disabled = true;
      localStorage.setItem(HISTORY, JSON.stringify(messages));
    }
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
  const form = el("form", { onsubmit: submit },
    el("div", { class: "row" }, el("label", {}, "Model", model),
      el("label", {}, "Temperature", temperature), el("label", {}, "Max tokens", maxTokens)),
    el("label", {}, "System prompt", system), log,
    el("label", {}, "Message (Enter sends, Shift+Enter: new line)", prompt),
    el("div", { class: "row" }, send, stop, clear), stats);
  panel.append(form);
  draw();
}

function embeddings(panel, listed, signal) {
  const model = picker(listed, "embedding");
  const inputs = el("textarea", { name: "inputs", rows: 5,
    placeholder: "One text per line" }, "A cat sits on the mat\nA kitten rests on a rug\n" +
    "Stock markets fell today");
  const out = el("div", { class: "scroll" });
  const form = el("form", { onsubmit: async (event) => {
    event.preventDefault();
    const texts = inputs.value.split("\n").filter((t) => t.trim());
    try {
      const answer = await api("/v1/embeddings", { method: "POST", signal,
        body: { model: model.value, input: texts } });
      const vectors = answer.data.map((d) => d.embedding);
      out.replaceChildren(matrix(texts, vectors));
    } catch (error) {
      out.replaceChildren(el("p", { class: "error" }, error.message));
    }
  } }, el("label", {}, "Model", model), el("label", {}, "Texts", inputs),
    el("button", { type: "submit", class: "primary" }, "Embed"), out);
  panel.append(form);
}

function matrix(texts, vectors) {
  const norm = (v) => Math.sqrt(v.reduce((a, x) => a + x * x, 0)) || 1;
  const cos = (a, b) => a.reduce((s, x, i) => s + x * b[i], 0) / (norm(a) * norm(b));
  const short = (t) => (t.length > 24 ? `${t.slice(0, 23)}…` : t);
  return el("table", { class: "matrix" },
    el("caption", {}, "Cosine similarity"),
    el("thead", {}, el("tr", {}, el("th", {}, ""), texts.map((t) => el("th", { scope: "col",
      title: t }, short(t))))),
    el("tbody", {}, vectors.map((a, i) => el("tr", {}, el("th", { scope: "row", title: texts[i] },
      short(texts[i])), vectors.map((b) => el("td", {}, cos(a, b).toFixed(3)))))));
}

function rerank(panel, listed, signal) {
  const model = picker(listed, "rerank");
  const query = el("input", { name: "query", value: "What do cats like?" });
  const documents = el("textarea", { name: "documents", rows: 5 },
    "Cats enjoy sleeping in warm, sunny spots.\nThe stock market closed higher today.\n" +
    "Paris is the capital of France.");
  const out = el("ol", { class: "ranked" });
  const form = el("form", { onsubmit: async (event) => {
    event.preventDefault();
    const docs = documents.value.split("\n").filter((t) => t.trim());
    try {
      const answer = await api("/v1/rerank", { method: "POST", signal,
        body: { model: model.value, query: query.value, documents: docs } });
      out.replaceChildren(...answer.results.map((r) => el("li", {},
        el("span", {}, docs[r.index]), " ",
        el("span", { class: "muted" }, `(${r.relevance_score.toFixed(4)})`))));
    } catch (error) {
      out.replaceChildren(el("li", { class: "error" }, error.message));
    }
  } }, el("label", {}, "Model", model), el("label", {}, "Query", query),
    el("label", {}, "Documents (one per line)", documents),
    el("button", { type: "submit", class: "primary" }, "Rank"), out);
  panel.append(form);
}
