// The level chart: the checkpoint's metric and this server's latency against sparsity, in inline SVG.

import { el, fmtCount, fmtMetric, fmtMs, isFraction, svg } from "./dom.js";

const W = 720;
const H = 380;
const M = { left: 58, right: 62, top: 34, bottom: 50 };
const marks = {}; // the markers drawn so far, put back when the chart is redrawn with live agreement
const KNOWN = new Set(["sparsity", "names", "params", "params_encoder", "params_embeddings", "flops", "latency_ms"]);

/** Tick values covering [lo, hi] with about `n` steps of 1, 2 or 5 x 10^k: {lo, hi, step, ticks}. */
function niceScale(lo, hi, n) {
  if (hi - lo < 1e-9) [lo, hi] = [lo - 0.5 * Math.abs(lo || 1) * 0.1, hi + 0.5 * Math.abs(hi || 1) * 0.1];
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((f) => f * mag).find((s) => s >= raw);
  const a = Math.floor(lo / step + 1e-9) * step;
  const b = Math.ceil(hi / step - 1e-9) * step;
  const ticks = [];
  for (let v = a; v <= b + step / 2; v += step) ticks.push(Number(v.toFixed(10)));
  return { lo: a, hi: b, step, ticks };
}

function linear(d0, d1, r0, r1) {
  return (v) => r0 + ((v - d0) / (d1 - d0 || 1)) * (r1 - r0);
}

/** Columns of `level` that are metrics: the numbers the server added beyond the accounting. */
export function metricColumns(levels) {
  const cols = new Set();
  for (const l of levels) for (const [k, v] of Object.entries(l)) if (!KNOWN.has(k) && typeof v === "number") cols.add(k);
  return [...cols];
}

/**
 * Draw `sizes` (the GET /v1/sizes body) into `host`; `tooltip` is a positioned div inside it.
 * Returns {mark(kind, sparsity)} to draw a "selected" or "served" marker line.
 */
export function drawChart(host, tooltip, sizes) {
  const levels = [...sizes.levels].sort((a, b) => a.sparsity - b.sparsity);
  // the second quality curve: agreement with dense measured live on this server's traffic (shadow re-runs)
  const agree = agreementKey(sizes);
  const agreed = agree ? levels.filter((l) => typeof l[agree] === "number" && l.shadow_samples > 0) : [];
  const offline = sizes.metric && levels.some((l) => typeof l[sizes.metric] === "number") ? sizes.metric : null;
  const metric = offline ?? (agreed.length ? agree : null);
  const xs = levels.map((l) => l.sparsity);
  const span = Math.max(...xs) - Math.min(...xs) || 0.1;
  const x = linear(Math.min(...xs) - span * 0.04, Math.max(...xs) + span * 0.04, M.left, W - M.right);
  const lat = niceScale(0, Math.max(...levels.map((l) => l.latency_ms)) * 1.08, 5);
  const yLat = linear(lat.lo, lat.hi, H - M.bottom, M.top);
  let met = null;
  let yMet = null;
  if (metric) {
    const vals = [...levels.map((l) => l[metric]), ...agreed.map((l) => l[agree])].filter((v) => typeof v === "number");
    const pad = Math.max((Math.max(...vals) - Math.min(...vals)) * 0.15, isFraction(vals) ? 0.02 : 0.5);
    met = niceScale(Math.min(...vals) - pad, Math.max(...vals) + pad, 5);
    if (isFraction(vals)) met = niceScale(Math.max(0, met.lo), Math.min(1, met.hi), 5);
    yMet = linear(met.lo, met.hi, H - M.bottom, M.top);
  }
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "plot", role: "img",
    "aria-label": `${metric ?? "latency"} against sparsity, ${levels.length} levels` });
  const grid = svg("g", { class: "grid" });
  const axes = svg("g", { class: "axes" });
  root.append(grid, axes);
  const left = met ?? lat;
  const yLeft = yMet ?? yLat;
  for (const t of left.ticks) {
    grid.append(svg("line", { x1: M.left, x2: W - M.right, y1: yLeft(t), y2: yLeft(t) }));
    axes.append(svg("text", { x: M.left - 8, y: yLeft(t) + 4, class: met ? "tick metric" : "tick latency", "text-anchor": "end" },
      met ? fmtMetric(t, isFraction(left.ticks), true) : fmtMs(t, true)));
  }
  if (met) {
    for (const t of lat.ticks) {
      axes.append(svg("text", { x: W - M.right + 8, y: yLat(t) + 4, class: "tick latency" }, fmtMs(t, true)));
    }
  }
  const xt = niceScale(Math.min(...xs), Math.max(...xs), 9);
  for (const t of xt.ticks.filter((t) => t >= Math.min(...xs) - 1e-9 && t <= Math.max(...xs) + 1e-9)) {
    axes.append(svg("line", { x1: x(t), x2: x(t), y1: H - M.bottom, y2: H - M.bottom + 5, class: "tickmark" }));
    axes.append(svg("text", { x: x(t), y: H - M.bottom + 19, "text-anchor": "middle", class: "tick" }, t.toFixed(2)));
  }
  axes.append(svg("line", { x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom, class: "baseline" }));
  axes.append(svg("text", { x: (M.left + W - M.right) / 2, y: H - 8, "text-anchor": "middle", class: "axis-title" },
    "sparsity (fraction of prunable encoder weights removed)"));
  const latTitle = `latency, ms (batch ${sizes.latency_batch} × ${sizes.latency_seq_len} tokens)`;
  if (met) {
    axes.append(rotated(14, metric, "axis-title metric"));
    axes.append(rotated(W - 12, latTitle, "axis-title latency"));
  } else {
    axes.append(rotated(14, latTitle, "axis-title latency"));
  }
  const path = (fy, key) => levels.map((l, i) => `${i ? "L" : "M"}${x(l.sparsity).toFixed(1)},${fy(l[key]).toFixed(1)}`).join("");
  if (met) {
    const area = `${path(yMet, metric)}L${x(xs[xs.length - 1])},${H - M.bottom}L${x(xs[0])},${H - M.bottom}Z`;
    root.append(svg("path", { d: area, class: "area metric" }));
    root.append(svg("path", { d: path(yMet, metric), class: "line metric" }));
  }
  root.append(svg("path", { d: path(yLat, "latency_ms"), class: "line latency" }));
  if (met && metric !== agree && agreed.length) {
    const d = agreed.map((l, i) => `${i ? "L" : "M"}${x(l.sparsity).toFixed(1)},${yMet(l[agree]).toFixed(1)}`).join("");
    root.append(svg("path", { d, class: "line agreement" }));
    for (const l of agreed) root.append(svg("circle", { cx: x(l.sparsity), cy: yMet(l[agree]), r: 3.5, class: "pt agreement" }));
  }
  for (const [name, s] of Object.entries(sizes.sizes ?? {})) {
    const cx = x(s);
    root.append(svg("g", { class: "named" },
      svg("line", { x1: cx, x2: cx, y1: M.top - 12, y2: M.top - 4 }),
      svg("text", { x: cx, y: M.top - 16, "text-anchor": "middle" }, name)));
  }
  const markers = svg("g", { class: "markers" });
  root.append(markers);
  const band = levels.length > 1 ? (x(xs[xs.length - 1]) - x(xs[0])) / (levels.length - 1) : 40;
  const others = metricColumns(levels);
  for (const l of levels) {
    const cx = x(l.sparsity);
    const g = svg("g", { class: "level", "data-sparsity": String(l.sparsity), tabindex: "0" });
    g.append(svg("rect", { x: cx - band / 2, y: M.top - 16, width: band, height: H - M.bottom - M.top + 16, class: "band" }));
    if (met && typeof l[metric] === "number") g.append(svg("circle", { cx, cy: yMet(l[metric]), r: 4.5, class: "pt metric" }));
    g.append(svg("circle", { cx, cy: yLat(l.latency_ms), r: 4.5, class: "pt latency" }));
    const show = () => showTip(host, tooltip, g, tipRows(l, sizes, metric, others));
    g.addEventListener("mouseenter", show);
    g.addEventListener("focus", show);
    g.addEventListener("mouseleave", () => tooltip.classList.add("hidden"));
    g.addEventListener("blur", () => tooltip.classList.add("hidden"));
    root.append(g);
  }
  host.querySelector("svg.plot")?.remove();
  host.prepend(root);
  for (const [kind, s] of Object.entries(marks)) mark(kind, s);

  function mark(kind, s) {
    marks[kind] = s;
    markers.querySelector(`.marker.${kind}`)?.remove();
    if (s == null) return;
    const cx = x(s);
    const m = svg("g", { class: `marker ${kind}` });
    m.append(svg("line", { x1: cx, x2: cx, y1: M.top - 4, y2: H - M.bottom }));
    const label = kind === "served" ? `served ${s.toFixed(2)}` : s.toFixed(2);
    const right = cx < W - M.right - 70; // the label beside the line, inside the plot
    m.append(svg("text", { x: right ? cx + 5 : cx - 5, y: M.top + (kind === "served" ? 8 : 22),
      "text-anchor": right ? "start" : "end", class: "marker-label" }, label));
    markers.append(m);
    const [sel, served] = ["selected", "served"].map((k) => markers.querySelector(`.marker.${k} line`));
    const same = sel && served && Math.abs(sel.x1.baseVal.value - served.x1.baseVal.value) < 1;
    markers.querySelector(".marker.selected text")?.classList.toggle("hidden", Boolean(same)); // one label is enough
  }
  return { mark };
}

/** The level column of the live agreement (e.g. shadow_label), or null when the server measures none. */
export function agreementKey(sizes) {
  return sizes.agreement_measure ? `shadow_${sizes.agreement_measure}` : null;
}

function rotated(xPos, text, cls) {
  const cy = (M.top + H - M.bottom) / 2;
  return svg("text", { x: xPos, y: cy, transform: `rotate(-90 ${xPos} ${cy})`, "text-anchor": "middle", class: cls }, text);
}

function tipRows(l, sizes, metric, others) {
  const rows = [["sparsity", l.sparsity.toFixed(2) + (l.names.length ? `  (${l.names.join(", ")})` : "")]];
  const metrics = metric ? [metric, ...others.filter((k) => k !== metric)] : others;
  for (const k of metrics) if (typeof l[k] === "number") rows.push([k, fmtMetric(l[k], isFraction([l[k]]))]);
  rows.push(["latency", `${fmtMs(l.latency_ms)}  (batch ${sizes.latency_batch} × ${sizes.latency_seq_len})`]);
  rows.push(["params", fmtCount(l.params)]);
  rows.push(["  encoder", fmtCount(l.params_encoder)]);
  rows.push(["  embeddings", fmtCount(l.params_embeddings)]);
  rows.push(["FLOPs", `${fmtCount(l.flops)}  (per ${sizes.latency_seq_len}-token sequence)`]);
  return rows;
}

function showTip(host, tooltip, g, rows) {
  tooltip.replaceChildren(el("table", {}, ...rows.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v)))));
  tooltip.classList.remove("hidden");
  const box = host.getBoundingClientRect();
  const pt = g.querySelector("circle").getBoundingClientRect();
  const left = pt.left - box.left + pt.width / 2;
  const flip = left > box.width * 0.62;
  tooltip.style.left = `${flip ? left - tooltip.offsetWidth - 14 : left + 14}px`;
  tooltip.style.top = `${Math.max(4, Math.min(pt.top - box.top - 20, box.height - tooltip.offsetHeight - 4))}px`;
}
