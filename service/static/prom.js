// Prometheus text format: parse samples, sum them by label, and estimate quantiles from histogram buckets.

const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

/** Samples of a Prometheus text body: [{name, labels, value}], comments skipped. */
export function parseMetrics(text) {
  const samples = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const brace = line.indexOf("{");
    const close = line.lastIndexOf("}");
    let name, labelText, rest;
    if (brace >= 0 && close > brace) {
      name = line.slice(0, brace);
      labelText = line.slice(brace + 1, close);
      rest = line.slice(close + 1).trim();
    } else {
      [name, rest] = line.split(/\s+/, 2);
      labelText = "";
    }
    const labels = {};
    for (const m of labelText.matchAll(LABEL)) labels[m[1]] = m[2].replace(/\\(.)/g, "$1");
    const value = parseFloat(rest.split(/\s+/)[0]);
    samples.push({ name, labels, value });
  }
  return samples;
}

/** Sum of `name`'s samples, grouped by the value of label `by` (or all together: key ""). */
export function sumBy(samples, name, by) {
  const out = new Map();
  for (const s of samples) {
    if (s.name !== name) continue;
    const key = by ? s.labels[by] ?? "" : "";
    out.set(key, (out.get(key) ?? 0) + s.value);
  }
  return out;
}

/** Total of `name` over all its samples (0 when absent). */
export function total(samples, name) {
  return sumBy(samples, name).get("") ?? 0;
}

/**
 * Cumulative buckets of histogram `base` per value of label `by`, summed over the other labels:
 * Map(key -> [[le, count], ...] sorted by le, +Inf last).
 */
export function histograms(samples, base, by) {
  const out = new Map();
  for (const s of samples) {
    if (s.name !== base + "_bucket") continue;
    const key = s.labels[by] ?? "";
    const le = s.labels.le === "+Inf" ? Infinity : parseFloat(s.labels.le);
    const buckets = out.get(key) ?? new Map();
    buckets.set(le, (buckets.get(le) ?? 0) + s.value);
    out.set(key, buckets);
  }
  return new Map([...out].map(([k, b]) => [k, [...b].sort((x, y) => x[0] - y[0])]));
}

/**
 * The q-quantile of cumulative buckets, interpolated linearly inside its bucket as Prometheus's
 * histogram_quantile does; null without observations. In the +Inf bucket: the largest finite bound.
 */
export function quantile(buckets, q) {
  const count = buckets.length ? buckets[buckets.length - 1][1] : 0;
  if (!count) return null;
  const rank = q * count;
  let lowerBound = 0;
  let lowerCount = 0;
  for (const [le, c] of buckets) {
    if (c >= rank) {
      if (le === Infinity) return lowerBound;
      const inBucket = c - lowerCount;
      return inBucket > 0 ? lowerBound + ((le - lowerBound) * (rank - lowerCount)) / inBucket : le;
    }
    lowerBound = le;
    lowerCount = c;
  }
  return lowerBound;
}
