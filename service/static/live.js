// The live panel: figures parsed from GET /metrics (Prometheus text) and the readiness light from GET /readyz.

import { el, fmtMs, show } from "./dom.js";
import { histograms, parseMetrics, quantile, sumBy, total } from "./prom.js";

const HISTORY = 40; // requests/s samples in the sparkline
const $ = (id) => document.getElementById(id);
const state = { prev: null, rates: [] }; // the last sample of the request counter, and the rates so far

/** Read /metrics once and refresh the panel (also called right after each try-it answer). */
export async function pollMetrics() {
  let text;
  try {
    const res = await fetch("metrics");
    if (!res.ok) throw new Error(`GET /metrics answered ${res.status}`);
    text = await res.text();
  } catch (err) {
    const why = err instanceof Error && err.message.startsWith("GET") ? err.message : "the server is unreachable";
    $("live-error").replaceChildren(el("strong", {}, "No live figures:"), " ", why);
    show($("live-error"));
    return;
  }
  show($("live-error"), false);
  const samples = parseMetrics(text);
  const now = performance.now();
  const requests = total(samples, "dynsparse_requests_total");
  if (state.prev && now - state.prev.t > 500) {
    state.rates.push(Math.max(0, (requests - state.prev.requests) / ((now - state.prev.t) / 1000)));
    state.rates = state.rates.slice(-HISTORY);
    state.prev = { t: now, requests };
  } else if (!state.prev) {
    state.prev = { t: now, requests };
  }
  const rate = state.rates.at(-1);
  $("m-rps").textContent = rate === undefined ? "–" : rate.toFixed(rate < 10 ? 2 : 1);
  $("m-queue").textContent = String(total(samples, "dynsparse_queue_depth"));
  $("m-total").textContent = String(requests);
  $("m-errors").textContent = String(total(samples, "dynsparse_errors_total"));
  $("m-degraded").textContent = String(total(samples, "dynsparse_degraded_total"));
  renderGoodput(samples);
  drawSpark();
  renderSizeRows(samples);
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

function renderSizeRows(samples) {
  const latency = histograms(samples, "dynsparse_request_seconds", "size");
  const queue = histograms(samples, "dynsparse_queue_seconds", "size");
  const counts = sumBy(samples, "dynsparse_requests_total", "size");
  const bSum = sumBy(samples, "dynsparse_batch_size_sum", "size");
  const bCount = sumBy(samples, "dynsparse_batch_size_count", "size");
  const met = sumBy(samples, "dynsparse_budget_met_ratio", "size");
  const ms = (b, q) => (b ? fmtMs(quantile(b, q) === null ? null : quantile(b, q) * 1000) : "–");
  const sizes = [...counts.keys()].filter((k) => k !== "none" && counts.get(k) > 0).sort((a, b) => parseFloat(a) - parseFloat(b));
  const rows = sizes.map((k) =>
    el("tr", { "data-size": k },
      el("td", {}, k),
      el("td", {}, String(counts.get(k))),
      el("td", { class: "p50" }, ms(latency.get(k), 0.5)),
      el("td", { class: "p99" }, ms(latency.get(k), 0.99)),
      el("td", {}, ms(queue.get(k), 0.5)),
      el("td", {}, bCount.get(k) ? (bSum.get(k) / bCount.get(k)).toFixed(1) : "–"),
      el("td", { class: "met" }, share(met.get(k))),
      el("td", { class: "agreement" }, agreement(samples, k))));
  const body = $("m-sizes").tBodies[0];
  body.replaceChildren(...(rows.length ? rows : [el("tr", { class: "empty" }, el("td", { colspan: 8 }, "no requests yet"))]));
}

const share = (v) => (v === undefined ? "–" : `${(100 * v).toFixed(1)}%`);

/** Goodput over the server's window (met budgets per second, share met) and what made sizes smaller. */
function renderGoodput(samples) {
  const rate = sumBy(samples, "dynsparse_goodput_per_second", "size").get("all");
  $("m-goodput").textContent = rate === undefined ? "–" : rate.toFixed(rate < 10 ? 2 : 1);
  $("m-met").textContent = share(sumBy(samples, "dynsparse_budget_met_ratio", "size").get("all"));
  const why = sumBy(samples, "dynsparse_size_decisions_total", "reason");
  $("m-decisions").textContent = ["budget", "overload", "floor"].map((r) => String(why.get(r) ?? 0)).join(" · ");
}

/** The shadow agreement at size `k` (every task and measure but KL, e.g. "label 0.97"), with its samples. */
function agreement(samples, k) {
  const found = samples.filter((s) => s.name === "dynsparse_shadow_agreement" && s.labels.size === k && s.labels.measure !== "kl");
  if (!found.length) return "–";
  const n = sumBy(samples.filter((s) => s.labels.size === k), "dynsparse_shadow_samples_total").get("") ?? 0;
  return `${found.map((s) => `${s.labels.measure} ${s.value.toFixed(3)}`).join(", ")} (n=${n})`;
}

function drawSpark() {
  const r = state.rates;
  const node = $("m-spark");
  if (r.length < 3) return node.replaceChildren();
  const top = Math.max(...r, 1e-9);
  const step = 120 / (Math.max(r.length, 12) - 1); // newest at the right edge; spreads out until 12 samples
  const pts = r.map((v, i) => `${(120 - (r.length - 1 - i) * step).toFixed(1)},${(26 - (v / top) * 24).toFixed(1)}`);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", pts.join(" "));
  node.replaceChildren(line);
}

async function pollReady() {
  const dot = $("status");
  let cls = "down";
  let text = "server unreachable";
  try {
    const res = await fetch("readyz");
    const data = await res.json();
    [cls, text] = res.ok ? ["up", "ready"] : ["wait", data.error ?? "not ready"];
  } catch {
    /* unreachable: as set above */
  }
  dot.className = `status ${cls}`;
  $("status-text").textContent = text;
}

/** Poll /metrics and /readyz every `refreshMs` (skipped while the tab is hidden). */
export function startLive(refreshMs) {
  const tick = () => {
    if (!document.hidden) {
      pollMetrics();
      pollReady();
    }
    setTimeout(tick, refreshMs);
  };
  tick();
}
