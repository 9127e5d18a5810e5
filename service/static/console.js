// The operator console: wires the level chart, the try-it box, the live metrics and the API key together.

import { agreementKey, drawChart } from "./chart.js";
import { el, fmtCount, fmtMs, show } from "./dom.js";
import { pollMetrics, startLive } from "./live.js";

const REFRESH_MS = 3000;
const KEY = "dynsparse.apiKey";
const $ = (id) => document.getElementById(id);

const state = { sizes: null, chart: null, task: "classify", taskPicked: false, mode: "sparsity" };

// what the text box holds for each endpoint (for answer: the context; the question has its own box)
const PLACEHOLDER = {
  classify: "Type a sentence, e.g. a gripping, beautiful film",
  tokens: "Type a sentence to tag, e.g. Ada Lovelace was born in London.",
  answer: "Paste the context that holds the answer",
  embed: "Type a sentence to embed",
};

class ApiError extends Error {
  constructor(status, type, message, retryAfter = null) {
    super(message);
    Object.assign(this, { status, type, retryAfter });
  }
}

// ---- the API: every /v1 call carries the key; every error is {"error", "error_type"}

async function api(path, body) {
  const headers = {};
  const key = sessionStorage.getItem(KEY);
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(path, { method: body === undefined ? "GET" : "POST", headers, body: body && JSON.stringify(body) });
  } catch {
    throw new ApiError(0, "network", "could not reach the server: is it still running?");
  }
  const text = await res.text();
  let data = null;
  try {
    data = JSON.parse(text);
  } catch {
    /* not JSON: reported below */
  }
  if (!res.ok) {
    const message = typeof data?.error === "string" ? data.error : text.slice(0, 300) || res.statusText;
    const err = new ApiError(res.status, data?.error_type ?? "http", message, res.headers.get("Retry-After"));
    if (res.status === 401) askForKey(err);
    throw err;
  }
  if (data === null) throw new ApiError(res.status, "bad_response", "the server's answer is not JSON");
  return data;
}

/** A headline and the server's own message for an error response. */
function explain(err) {
  const hasKey = Boolean(sessionStorage.getItem(KEY));
  const heads = {
    0: "Server unreachable.",
    401: hasKey ? "API key refused." : "This server needs an API key: enter it above.",
    413: "Request too large.",
    422: "The server rejected the request.",
    429: `The server is busy (queue full)${err.retryAfter ? `; retry in ${err.retryAfter} s` : ""}.`,
    503: "The model is not ready (loading or shutting down); retry shortly.",
    504: "The request outlived its deadline.",
  };
  const head = heads[err.status] ?? (err.status >= 500 ? "Server error." : "Request failed.");
  const code = err.status ? `${err.status} ${err.type}` : err.type;
  return [el("strong", {}, head), " ", el("span", { class: "detail" }, err.message), " ", el("code", {}, code)];
}

function showError(node, err) {
  node.replaceChildren(...explain(err));
  show(node);
}

// ---- API key

function askForKey(err) {
  show($("keybar"));
  showError($("key-message"), err);
  if (!sessionStorage.getItem(KEY)) $("api-key").focus();
}

function setupKey() {
  const stored = sessionStorage.getItem(KEY);
  if (stored) {
    $("api-key").value = stored;
    show($("keybar"));
  }
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("api-key").value.trim();
    if (key) sessionStorage.setItem(KEY, key);
    else sessionStorage.removeItem(KEY);
    show($("key-message"), false);
    show($("try-error"), false);
    loadSizes();
  });
  $("key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    $("api-key").value = "";
    $("api-key").focus();
  });
}

// ---- the level table

async function loadSizes() {
  const placeholder = $("chart-placeholder");
  try {
    state.sizes = await api("v1/sizes");
  } catch (err) {
    placeholder.replaceChildren(...explain(err));
    show(placeholder);
    return;
  }
  show(placeholder, false);
  const s = state.sizes;
  state.chart = drawChart($("chart"), $("tooltip"), s);
  renderFacts(s);
  renderLegend(s);
  setupPickers(s);
  setupTasks(s);
}

function renderFacts(s) {
  const [lo, hi] = s.allowed;
  const d = s.default;
  const dflt = d.latency_budget_ms != null ? `${d.latency_budget_ms} ms budget` : `${nameOf(d)} ${d.sparsity.toFixed(2)}`;
  const facts = [["device", s.device], ["levels", `${s.levels.length} · ${lo.toFixed(2)}–${hi.toFixed(2)}`], ["default", dflt]];
  if (s.grid) facts.push(["grid", `${s.grid.length} levels`]);
  $("facts").replaceChildren(...facts.map(([k, v]) => el("span", { class: "fact" }, el("span", { class: "k" }, k), v)));
  $("chart-sub").replaceChildren(
    `${s.metric ? `${s.metric} from the checkpoint · ` : ""}latency profiled on this server at start · hover a level for params and FLOPs`,
  );
}

/** The name of the default size: its own, or a named size at the same sparsity. */
function nameOf(d) {
  const same = Object.entries(state.sizes.sizes).find(([, v]) => Math.abs(v - d.sparsity) < 1e-9);
  return d.size ?? same?.[0] ?? "sparsity";
}

function renderLegend(s) {
  const items = [];
  if (s.metric) items.push(el("span", { class: "key metric" }, s.metric));
  const agree = agreementKey(s);
  if (agree && s.levels.some((l) => l.shadow_samples > 0)) {
    items.push(el("span", { class: "key agreement" }, `agreement with dense (${s.agreement_measure}, live)`));
  }
  items.push(el("span", { class: "key latency" }, "latency"));
  $("legend").replaceChildren(...items);
}

/** The level whose sparsity is closest to `x`. */
function nearestLevel(x) {
  return state.sizes.levels.reduce((a, b) => (Math.abs(b.sparsity - x) < Math.abs(a.sparsity - x) ? b : a));
}

function levelNote(l) {
  const m = state.sizes.metric;
  const metric = m && typeof l[m] === "number" ? ` · ${m} ${l[m] <= 1 ? `${(l[m] * 100).toFixed(1)}%` : l[m]}` : "";
  return `level ${l.sparsity.toFixed(2)}: ${fmtCount(l.params)} params · ${fmtCount(l.flops)} FLOPs · ${fmtMs(l.latency_ms)}${metric}`;
}

// ---- the try-it box

function setupPickers(s) {
  const slider = $("sparsity");
  const [lo, hi] = s.allowed;
  Object.assign(slider, { min: lo, max: hi, step: 0.01 });
  const start = s.default.sparsity ?? lo;
  if (!slider.dataset.touched) slider.value = start;
  updateSlider();
  const select = $("size");
  const names = Object.entries(s.sizes).sort((a, b) => a[1] - b[1]);
  select.replaceChildren(...names.map(([n, v]) => el("option", { value: n }, `${n} (${v.toFixed(2)})`)));
  updateSize();
  const d = s.default;
  $("default-note").textContent =
    d.latency_budget_ms != null
      ? `the operator's default: a latency budget of ${d.latency_budget_ms} ms`
      : `the operator's default: ${nameOf(d)}, sparsity ${d.sparsity.toFixed(2)}`;
  const fastest = Math.min(...s.levels.map((l) => l.latency_ms));
  if (!$("budget").dataset.touched) $("budget").value = Math.max(0.5, Math.ceil(fastest * 1.5 * 2) / 2);
}

function updateSlider() {
  const v = parseFloat($("sparsity").value);
  $("sparsity-value").textContent = v.toFixed(2);
  if (!state.sizes) return;
  $("sparsity-note").textContent = `≈ ${levelNote(nearestLevel(v))}`;
  if (state.mode === "sparsity") state.chart?.mark("selected", v);
}

function updateSize() {
  const name = $("size").value;
  const s = state.sizes?.sizes[name];
  if (s === undefined) return;
  $("size-note").textContent = levelNote(nearestLevel(s));
  if (state.mode === "size") state.chart?.mark("selected", s);
}

function setMode(mode) {
  state.mode = mode;
  for (const b of $("mode").querySelectorAll("button")) b.classList.toggle("on", b.dataset.mode === mode);
  for (const p of document.querySelectorAll(".picker")) show(p, p.dataset.for === mode);
  state.chart?.mark("selected", null);
  if (mode === "sparsity") updateSlider();
  if (mode === "size") updateSize();
}

function setTask(task) {
  state.task = task;
  for (const b of $("task").querySelectorAll("button")) b.classList.toggle("on", b.dataset.task === task);
  show($("question"), task === "answer");
  $("text").placeholder = PLACEHOLDER[task] ?? "";
  $("text").setAttribute("aria-label", task === "answer" ? "context" : "text");
}

/** Offer what this checkpoint serves: its task's endpoint (picked first) and embed, from GET /v1/sizes. */
function setupTasks(s) {
  const name = (path) => path.replace(/^\/v1\//, "");
  const offered = (s.endpoints ?? ["/v1/classify", "/v1/embed"]).map(name);
  for (const b of $("task").querySelectorAll("button")) show(b, offered.includes(b.dataset.task));
  if (!state.taskPicked || !offered.includes(state.task)) setTask(name(s.endpoint ?? "/v1/classify"));
}

function selector() {
  if (state.mode === "sparsity") return { sparsity: parseFloat($("sparsity").value) };
  if (state.mode === "size") return { size: $("size").value };
  if (state.mode === "budget") return { latency_budget_ms: parseFloat($("budget").value) };
  return {};
}

async function submit(e) {
  e.preventDefault();
  const button = $("submit");
  button.disabled = true;
  button.textContent = "Sending…";
  show($("try-error"), false);
  const t0 = performance.now();
  const text = $("text").value;
  const inputs = state.task === "answer" ? [{ question: $("question").value, context: text }] : [text];
  try {
    const data = await api(`v1/${state.task}`, { inputs, ...selector() });
    renderAnswer(data, performance.now() - t0, text);
    state.chart?.mark("served", data.sparsity);
  } catch (err) {
    show($("answer"), false);
    showError($("try-error"), err);
  } finally {
    button.disabled = false;
    button.textContent = "Send";
    pollMetrics();
  }
}

/** 0.3 -> "0.30", 0.3333 -> "0.3333". */
function fmtSparsity(s) {
  return s.toFixed(Math.abs(s * 100 - Math.round(s * 100)) > 1e-6 ? 4 : 2);
}

function stat(id, label, text, value) {
  return el("div", { class: "stat" }, el("dt", {}, label), el("dd", { id, "data-value": value }, text));
}

const pct = (p) => `${(p * 100).toFixed(1)}%`;

/** `text` with `spans` ({start, end, tag, title}: code-point offsets, as the server counts) marked. */
function highlight(text, spans) {
  const chars = Array.from(text); // offsets count code points, JavaScript strings UTF-16 units
  const parts = [];
  let at = 0;
  for (const s of [...spans].sort((a, b) => a.start - b.start)) {
    if (s.start < at) continue; // overlapping spans: never sent by the server
    parts.push(chars.slice(at, s.start).join(""));
    const tag = s.tag ? el("span", { class: "tag" }, s.tag) : null;
    parts.push(el("mark", { title: s.title, "data-label": s.tag, "data-start": s.start }, chars.slice(s.start, s.end).join(""), tag));
    at = s.end;
  }
  parts.push(chars.slice(at).join(""));
  return parts;
}

function verdict(label, labelValue, score, scoreValue, scoreNote) {
  return el("div", { class: "verdict" },
    el("span", { class: "label", id: "ans-label", "data-value": labelValue }, label),
    el("span", { class: "score", id: "ans-score", "data-value": scoreValue }, score),
    scoreNote ? el("span", { class: "score-k" }, scoreNote) : null);
}

/** The task's own part of the answer panel. */
function answerHead(data, text) {
  if (state.task === "classify") {
    const { label, score } = data.results[0];
    const bar = el("span", { class: "fill" });
    bar.style.width = pct(score);
    return [verdict(label, label, pct(score), score, "probability"), el("div", { class: "bar" }, bar)];
  }
  if (state.task === "tokens") {
    const found = data.results[0];
    const spans = found.map((e) => ({ ...e, tag: e.entity_group, title: `${e.entity_group} · ${pct(e.score)}` }));
    const mean = found.length ? found.reduce((a, e) => a + e.score, 0) / found.length : null;
    return [
      verdict(`${found.length} tagged`, found.length, mean === null ? "–" : pct(mean), mean, mean === null ? "" : "mean probability"),
      el("p", { class: "marked", id: "ans-marked" }, ...highlight(text, spans)),
    ];
  }
  if (state.task === "answer") {
    const a = data.results[0];
    const spans = a.answer ? [{ start: a.start, end: a.end, title: `answer · ${pct(a.score)}` }] : [];
    return [
      verdict(a.answer || "no answer found", a.answer, pct(a.score), a.score, "probability"),
      el("p", { class: "marked", id: "ans-marked" }, ...highlight(text, spans)),
    ];
  }
  const v = data.embeddings[0];
  const preview = `[${v.slice(0, 6).map((x) => x.toFixed(3)).join(", ")}, …]`;
  return [verdict("embedding", "embedding", `${data.dimensions} dimensions`, data.dimensions), el("code", { class: "vector" }, preview)];
}

function renderAnswer(data, roundTripMs, text) {
  const head = answerHead(data, text);
  const notes = [];
  if (data.size) notes.push(`named size “${data.size}”`);
  if (data.budget_met === true) notes.push("latency budget met");
  if (data.budget_met === false) notes.push("latency budget missed: served at the smallest size");
  if (data.degraded) notes.push("served smaller than asked: the server was busy");
  $("answer").replaceChildren(
    ...head,
    el("dl", { class: "served" },
      stat("ans-sparsity", "served at sparsity", fmtSparsity(data.sparsity), data.sparsity),
      stat("ans-ms", "time in server", fmtMs(data.latency_ms), data.latency_ms),
      stat("ans-split", "queue + model", `${data.queue_ms.toFixed(2)} + ${data.inference_ms.toFixed(2)} ms`, data.inference_ms),
      stat("ans-rtt", "round trip", fmtMs(roundTripMs), roundTripMs)),
    ...notes.map((n) => el("p", { class: "note" }, n)),
  );
  show($("answer"));
}

// ---- start

function main() {
  $("refresh-s").textContent = String(REFRESH_MS / 1000);
  setupKey();
  for (const b of $("mode").querySelectorAll("button")) b.addEventListener("click", () => setMode(b.dataset.mode));
  for (const b of $("task").querySelectorAll("button")) {
    b.addEventListener("click", () => {
      state.taskPicked = true;
      setTask(b.dataset.task);
    });
  }
  $("sparsity").addEventListener("input", (e) => {
    e.target.dataset.touched = "1";
    updateSlider();
  });
  $("size").addEventListener("change", updateSize);
  $("budget").addEventListener("input", (e) => (e.target.dataset.touched = "1"));
  $("try-form").addEventListener("submit", submit);
  $("text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("try-form").requestSubmit();
  });
  loadSizes();
  startLive(REFRESH_MS);
  setInterval(refreshAgreement, 5 * REFRESH_MS);
}

/** Redraw the chart when the live agreement has new samples (GET /v1/sizes; the markers stay). */
async function refreshAgreement() {
  if (!state.sizes || document.hidden) return;
  let s;
  try {
    s = await api("v1/sizes");
  } catch {
    return; // the live panel reports an unreachable server
  }
  const samples = (x) => x.levels.map((l) => l.shadow_samples ?? 0).join(",");
  if (samples(s) === samples(state.sizes)) return;
  state.sizes = s;
  state.chart = drawChart($("chart"), $("tooltip"), s);
  renderLegend(s);
}

main();
