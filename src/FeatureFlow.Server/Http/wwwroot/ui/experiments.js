// The experiment dashboard: every configured experiment's arms (weight, requests, tokens, latency) and every
// outcome's mean with its interval and its difference from the control arm, polled every 2 s, with a small chart per
// outcome (mean and 95% interval per arm).

import { getJson, ApiError, wireKeyControls, fmt, num, el, svg } from "./api.js";

const $ = (id) => document.getElementById(id);
const POLL_MS = 2000;
let last = null;
let paused = false;
let timer = null;
let inFlight = false;

const describe = (e) => (e instanceof ApiError ? e.describe() : String(e?.message ?? e));

function cell(text, attrs = {}) {
  return el("td", { class: "num", ...attrs, text });
}

function signed(value, digits = 3) {
  const n = num(value);
  return Number.isFinite(n) && n > 0 ? `+${fmt(n, digits)}` : fmt(n, digits);
}

function interval(low, high, digits = 3) {
  return Number.isFinite(num(low)) && Number.isFinite(num(high)) ? `[${fmt(low, digits)}, ${fmt(high, digits)}]` : "—";
}

function armsTable(experiment) {
  const total = experiment.arms.reduce((s, a) => s + Math.max(0, num(a.weight)), 0) || 1;
  return el("div", { class: "table-scroll" }, el("table", { class: "data" },
    el("caption", { text: "Arms" }),
    el("thead", {}, el("tr", {},
      el("th", { scope: "col", text: "arm" }), el("th", { scope: "col", class: "num", text: "weight (share)" }),
      el("th", { scope: "col", class: "num", text: "requests" }), el("th", { scope: "col", class: "num", text: "tokens" }),
      el("th", { scope: "col", class: "num", text: "mean latency" }), el("th", { scope: "col", text: "steering" }))),
    el("tbody", {}, ...experiment.arms.map((a) => el("tr", { "data-arm": a.name },
      el("th", { scope: "row" }, a.name, a.name === experiment.control ? " (control)" : ""),
      cell(`${fmt(a.weight, 2)} (${(100 * Math.max(0, num(a.weight)) / total).toFixed(1)}%)`, { "data-field": "weight", "data-value": a.weight }),
      cell(String(num(a.requests)), { "data-field": "requests", "data-value": a.requests }),
      cell(String(num(a.tokens)), { "data-field": "tokens", "data-value": a.tokens }),
      cell(`${fmt(a.meanLatencyMs, 1)} ms`, { "data-field": "meanLatencyMs", "data-value": a.meanLatencyMs }),
      el("td", {}, el("code", { class: "steering-json", text: a.steeringJson || "{}" })))))));
}

/** Ticks at 1, 2 or 5 × 10^k covering [lo, hi]. */
function ticks(lo, hi, count = 5) {
  const span = hi - lo || 1;
  const raw = span / count;
  const step = [1, 2, 5, 10].map((m) => m * 10 ** Math.floor(Math.log10(raw))).find((s) => s >= raw);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return { values: out, digits: Math.max(0, -Math.floor(Math.log10(step))) };
}

function chart(experiment, name, rows) {
  const finite = rows.flatMap((r) => [r.o.mean, r.o.ciLow, r.o.ciHigh].map(num)).filter(Number.isFinite);
  const labelW = 110, width = 460, rowH = 30, top = 10, axisH = 30;
  const height = top + rows.length * rowH + axisH;
  const title = `${name}: mean and 95% interval per arm`;
  const summary = rows.map((r) => `${r.arm}: ${num(r.o.n) > 0 ? `mean ${fmt(r.o.mean)} ${interval(r.o.ciLow, r.o.ciHigh)}, n ${num(r.o.n)}` : "no outcomes"}`).join("; ");
  const picture = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `${title}. ${summary}`, "font-family": "system-ui, sans-serif", "font-size": 12 });
  if (finite.length === 0) {
    picture.append(svg("text", { x: 10, y: top + 16, fill: "#4d4d4d", text: "No outcomes recorded yet." }));
    return picture;
  }
  let lo = Math.min(...finite), hi = Math.max(...finite);
  const pad = (hi - lo || Math.abs(hi) || 1) * 0.08;
  lo -= pad;
  hi += pad;
  const plotL = labelW, plotR = width - 12;
  const x = (v) => plotL + ((v - lo) / (hi - lo)) * (plotR - plotL);
  const axisY = top + rows.length * rowH + 4;
  const t = ticks(lo, hi);
  picture.append(
    svg("line", { x1: plotL, x2: plotR, y1: axisY, y2: axisY, stroke: "#4d4d4d" }),
    ...t.values.flatMap((v) => [
      svg("line", { x1: x(v), x2: x(v), y1: top, y2: axisY + 4, stroke: "#e1e4e8" }),
      svg("text", { x: x(v), y: axisY + 18, "text-anchor": "middle", fill: "#4d4d4d", text: v.toFixed(Math.min(6, t.digits)).replace("-", "−") }),
    ]));
  const control = rows.find((r) => r.arm === experiment.control);
  if (control && Number.isFinite(num(control.o.mean))) {
    picture.append(svg("line", { x1: x(num(control.o.mean)), x2: x(num(control.o.mean)), y1: top, y2: axisY, stroke: "#0b57d0", "stroke-dasharray": "4 3" }));
  }
  rows.forEach((r, i) => {
    const y = top + i * rowH + rowH / 2;
    const mean = num(r.o.mean), low = num(r.o.ciLow), high = num(r.o.ciHigh);
    const isControl = r.arm === experiment.control;
    picture.append(svg("text", { x: labelW - 8, y: y + 4, "text-anchor": "end", fill: "#1a1a1a", "font-weight": isControl ? 700 : 400, text: r.arm }));
    if (Number.isFinite(low) && Number.isFinite(high)) {
      picture.append(
        svg("line", { x1: x(low), x2: x(high), y1: y, y2: y, stroke: "#1a1a1a", "stroke-width": 2 }),
        svg("line", { x1: x(low), x2: x(low), y1: y - 6, y2: y + 6, stroke: "#1a1a1a", "stroke-width": 2 }),
        svg("line", { x1: x(high), x2: x(high), y1: y - 6, y2: y + 6, stroke: "#1a1a1a", "stroke-width": 2 }));
    }
    if (Number.isFinite(mean)) picture.append(svg("circle", { cx: x(mean), cy: y, r: 5, fill: isControl ? "#0b57d0" : "#b3261e", stroke: "#1a1a1a" }));
  });
  return picture;
}

function outcomeSection(experiment, name) {
  const rows = experiment.arms.map((a) => ({ arm: a.name, o: (a.outcomes ?? []).find((o) => o.name === name) ?? { name, n: 0 } }));
  const table = el("table", { class: "data" },
    el("caption", { text: `${name} by arm` }),
    el("thead", {}, el("tr", {},
      el("th", { scope: "col", text: "arm" }), el("th", { scope: "col", class: "num", text: "n" }),
      el("th", { scope: "col", class: "num", text: "mean" }), el("th", { scope: "col", class: "num", text: "95% interval" }),
      el("th", { scope: "col", class: "num", text: `difference vs ${experiment.control}` }), el("th", { scope: "col", class: "num", text: "p" }))),
    el("tbody", {}, ...rows.map(({ arm, o }) => {
      const diff = o.hasDifference;
      const significant = diff && (num(o.differenceCiLow) > 0 || num(o.differenceCiHigh) < 0);
      return el("tr", { "data-arm": arm },
        el("th", { scope: "row", text: arm }),
        cell(String(num(o.n) || 0), { "data-field": "n", "data-value": o.n ?? 0 }),
        cell(num(o.n) > 0 ? fmt(o.mean) : "—", { "data-field": "mean", "data-value": o.mean }),
        cell(num(o.n) > 0 ? interval(o.ciLow, o.ciHigh) : "—", { "data-field": "interval", "data-low": o.ciLow, "data-high": o.ciHigh }),
        el("td", { class: `num${significant ? " sig" : ""}`, "data-field": "difference", "data-value": diff ? o.difference : undefined },
          diff ? `${signed(o.difference)} ${interval(o.differenceCiLow, o.differenceCiHigh)}` : arm === experiment.control ? "control" : "—"),
        cell(diff ? fmt(o.pValue, 3) : "—", { "data-field": "p", "data-value": diff ? o.pValue : undefined }));
    })));
  return el("section", { class: "outcome", "data-outcome": name, "aria-label": `Outcome ${name}` },
    el("h3", { text: name }), chart(experiment, name, rows), el("div", { class: "table-scroll" }, table));
}

function render(list) {
  const experiments = list.experiments ?? [];
  const root = $("experiments");
  if (experiments.length === 0) {
    root.replaceChildren(el("p", { class: "panel", text: "The server has no experiments configured (serve --experiments FILE; see docs/experiments.md)." }));
    return;
  }
  root.replaceChildren(...experiments.map((x) => {
    const outcomes = [...new Set(x.arms.flatMap((a) => (a.outcomes ?? []).map((o) => o.name)))].sort();
    const headingId = `experiment-${x.name}`;
    return el("section", { class: "panel experiment", "data-experiment": x.name, "aria-labelledby": headingId },
      el("h2", { id: headingId, text: x.name }),
      el("p", { class: "hint", text: `salt ${x.salt} · traffic ${(100 * num(x.traffic)).toFixed(0)}% · control arm ${x.control}` }),
      armsTable(x),
      outcomes.length
        ? el("div", { class: "outcomes" }, ...outcomes.map((name) => outcomeSection(x, name)))
        : el("p", { class: "hint", text: "No outcomes recorded yet (RecordOutcome)." }));
  }));
}

async function poll() {
  timer = null;
  inFlight = true;
  try {
    const list = await getJson("/v1/featureflow/experiments");
    $("load-error").textContent = "";
    const json = JSON.stringify(list);
    if (json !== last) {
      last = json;
      render(list);
    }
    const time = new Date().toLocaleTimeString();
    $("updated").textContent = `Updated ${time} · config version ${list.configVersion ?? "?"}${paused ? " · paused" : ""}`;
    document.body.dataset.polls = String(Number(document.body.dataset.polls ?? 0) + 1);
  } catch (e) {
    $("load-error").textContent = `Could not load the experiments: ${describe(e)}`;
  }
  inFlight = false;
  if (!paused) timer = setTimeout(poll, POLL_MS);
}

function wire() {
  wireKeyControls();
  const pause = $("pause");
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.setAttribute("aria-pressed", String(paused));
    pause.textContent = paused ? "Resume live updates" : "Pause live updates";
    if (paused && timer) {
      clearTimeout(timer);
      timer = null;
      $("updated").textContent += " · paused";
    } else if (!paused && !timer && !inFlight) poll();
  });
}

wire();
poll();
