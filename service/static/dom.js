// Small DOM and formatting helpers. Text always goes in as text nodes, never as HTML.

const SVG_NS = "http://www.w3.org/2000/svg";

function build(node, attrs, children) {
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) node.setAttribute(k, String(v));
  for (const c of children) if (c !== null && c !== undefined && c !== false) node.append(c instanceof Node ? c : String(c));
  return node;
}

/** An HTML element: el("p", {class: "x"}, "text", child, ...). */
export function el(tag, attrs = {}, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element, as `el`. */
export function svg(tag, attrs = {}, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** Show or hide an element. */
export function show(node, visible = true) {
  node.classList.toggle("hidden", !visible);
}

/** Whether every value is a fraction in [0, 1] (then metrics read as percentages). */
export function isFraction(values) {
  return values.every((v) => v >= 0 && v <= 1);
}

export function fmtMetric(v, fraction, short = false) {
  if (fraction) return `${(v * 100).toFixed(short ? 0 : 1)}%`;
  return short ? String(Number(v.toPrecision(3))) : v.toFixed(4);
}

export function fmtMs(v, short = false) {
  if (v == null || !Number.isFinite(v)) return "–";
  if (short) return Number(v.toPrecision(3)).toString();
  if (v >= 100) return `${v.toFixed(0)} ms`;
  if (v >= 10) return `${v.toFixed(1)} ms`;
  return `${v.toFixed(2)} ms`;
}

/** 26274 -> "26.3k", 8390784 -> "8.39M", 1.2e9 -> "1.20G". */
export function fmtCount(n) {
  const units = [["G", 1e9], ["M", 1e6], ["k", 1e3]];
  for (const [u, d] of units) if (Math.abs(n) >= d) return `${(n / d).toPrecision(3)}${u}`;
  return String(n);
}
