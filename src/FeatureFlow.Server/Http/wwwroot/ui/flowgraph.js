// A pack's flow graph from its metadata (`sources`: each feature the pack was built from, its role and its cosine
// score): features placed by block (columns) and site (rows: attention output, MLP output, residual stream), an edge
// from each feature to the neighbour it was matched to, labelled with that cosine. An inline SVG plus the same facts
// as a table.

import { el, svg, fmt, num, shortFeature } from "./api.js";

const KINDS = ["attn_out", "mlp_out", "resid_post"];
const KIND_NAMES = { attn_out: "attention out", mlp_out: "MLP out", resid_post: "residual stream" };
const FILL = { seed: "#ffd166", attn: "#c3b1e1", mlp: "#a9d6e5" };
const FILL_RESID = "#b7e4c7";

function parseSource(source) {
  const m = /^blocks\.(\d+)\.hook_(attn_out|mlp_out|resid_post)\/(\d+)$/.exec(source.feature ?? "");
  if (!m) return null;
  const layer = Number(m[1]);
  const kind = KINDS.indexOf(m[2]);
  return {
    feature: source.feature, hook: `blocks.${m[1]}.hook_${m[2]}`, index: Number(m[3]), layer, kind,
    site: 3 * layer + kind, role: source.role ?? "", score: num(source.score),
  };
}

/** Each feature's partner: the residual feature it feeds (seed-ward, later), or for forward features the one before. */
function edges(nodes) {
  const resid = nodes.filter((n) => n.kind === 2).sort((a, b) => a.site - b.site);
  const out = [];
  for (const n of nodes) {
    if (n.role === "seed") continue;
    const partner = n.role === "forward"
      ? resid.filter((r) => r.site < n.site).at(-1)
      : resid.find((r) => r.site > n.site);
    if (!partner) continue;
    const [from, to] = partner.site < n.site ? [partner, n] : [n, partner];
    out.push({ from, to, score: n.score });
  }
  return out;
}

export function renderFlowGraph(container, pack) {
  container.replaceChildren();
  if (!pack) {
    container.append(el("p", { class: "hint", text: "Select a pack to see its flow graph." }));
    return;
  }
  let meta = {};
  try {
    meta = JSON.parse(pack.metadataJson || "{}");
  } catch {
    // Shown as "no sources" below.
  }
  const nodes = (meta.sources ?? []).map(parseSource).filter(Boolean);
  const steered = new Set(pack.sites ?? []);
  container.append(el("p", {},
    el("strong", { text: pack.name }), ` · ${pack.mode || meta.mode || "?"} · ${pack.operation || meta.operation || "?"} · `,
    `${pack.terms ?? "?"} term${pack.terms === 1 ? "" : "s"} at ${[...steered].map((h) => shortFeature(h)).join(", ") || "—"}`,
    meta.theme_words?.length ? ` · theme words: ${meta.theme_words.join(", ")}` : ""));
  if (nodes.length === 0) {
    container.append(el("p", { class: "hint", text: "This pack's metadata lists no source features." }));
    return;
  }

  const layers = nodes.map((n) => n.layer);
  const first = Math.min(...layers), last = Math.max(...layers);
  const colWidth = 150, rowHeight = 74, left = 100, top = 40, boxW = 112, boxH = 34;
  const width = left + (last - first + 1) * colWidth + 10;
  const height = top + KINDS.length * rowHeight + 20;
  // Features at the same block and site stack a little apart.
  const slotUse = new Map();
  for (const n of nodes) {
    const key = `${n.layer}:${n.kind}`;
    const k = slotUse.get(key) ?? 0;
    slotUse.set(key, k + 1);
    n.x = left + (n.layer - first) * colWidth + colWidth / 2 + k * 8;
    n.y = top + n.kind * rowHeight + rowHeight / 2 + k * 8;
  }
  const titleId = `flow-title-${pack.name}`, descId = `flow-desc-${pack.name}`;
  const links = edges(nodes);
  const description = nodes.map((n) => `${shortFeature(n.hook, n.index)} (${n.role}, cosine ${fmt(n.score, 2)})`).join("; ");
  const picture = svg("svg", {
    viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-labelledby": `${titleId} ${descId}`,
    "font-family": "system-ui, sans-serif", "font-size": 13,
  },
  svg("title", { id: titleId, text: `Flow graph of pack ${pack.name}` }),
  svg("desc", { id: descId, text: description }),
  svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
    svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#444" }))),
  // Grid: one column per block, one row per site kind.
  ...Array.from({ length: last - first + 1 }, (_, i) => svg("text", {
    x: left + i * colWidth + colWidth / 2, y: 20, "text-anchor": "middle", "font-weight": 700, fill: "#1a1a1a", text: `block ${first + i}`,
  })),
  ...KINDS.map((k, r) => svg("text", { x: 8, y: top + r * rowHeight + rowHeight / 2 + 4, fill: "#4d4d4d", text: KIND_NAMES[k] })),
  ...KINDS.map((_, r) => svg("line", { x1: left, x2: width - 10, y1: top + r * rowHeight + rowHeight / 2, y2: top + r * rowHeight + rowHeight / 2, stroke: "#e1e4e8" })),
  ...links.map(({ from, to, score }) => {
    // From box edge to box edge, so the arrow head stays visible.
    const dx = to.x - from.x, dy = to.y - from.y;
    const len = Math.hypot(dx, dy) || 1;
    const cut = (ux, uy) => Math.min(Math.abs(ux) > 1e-9 ? (boxW / 2) / Math.abs(ux) : Infinity, Math.abs(uy) > 1e-9 ? (boxH / 2) / Math.abs(uy) : Infinity);
    const ux = dx / len, uy = dy / len;
    const c = cut(ux, uy);
    const x1 = from.x + ux * c, y1 = from.y + uy * c, x2 = to.x - ux * c, y2 = to.y - uy * c;
    return svg("g", {},
      svg("line", { x1, y1, x2, y2, stroke: "#444", "stroke-width": 1 + 2 * Math.max(0, Math.min(1, score)), "marker-end": "url(#arrow)" }),
      svg("text", { x: (x1 + x2) / 2 + (dy === 0 ? 0 : 6), y: (y1 + y2) / 2 - 5, "text-anchor": dy === 0 ? "middle" : "start", fill: "#1a1a1a", text: fmt(score, 2) }));
  }),
  ...nodes.map((n) => svg("g", {},
    svg("rect", {
      x: n.x - boxW / 2, y: n.y - boxH / 2, width: boxW, height: boxH, rx: 8,
      fill: n.role === "seed" ? FILL.seed : FILL[n.role] ?? (n.kind === 0 ? FILL.attn : n.kind === 1 ? FILL.mlp : FILL_RESID),
      stroke: "#1a1a1a", "stroke-width": steered.has(n.hook) ? 3 : 1,
    }),
    svg("text", { x: n.x, y: n.y + 5, "text-anchor": "middle", fill: "#1a1a1a", text: shortFeature(n.hook, n.index) }))));
  container.append(el("div", { class: "table-scroll" }, picture));
  container.append(el("p", { class: "hint", text: "Gold: the seed feature. Thick border: a site the pack steers. Edge labels: the cosine between the matched SAE decoder directions." }));

  const table = el("table", { class: "data" },
    el("caption", { text: `Features of ${pack.name}` }),
    el("thead", {}, el("tr", {},
      el("th", { scope: "col", text: "feature" }), el("th", { scope: "col", text: "block" }), el("th", { scope: "col", text: "site" }),
      el("th", { scope: "col", text: "role" }), el("th", { scope: "col", class: "num", text: "cosine" }), el("th", { scope: "col", text: "steered" }))),
    el("tbody", {}, ...[...nodes].sort((a, b) => a.site - b.site).map((n) => el("tr", {},
      el("th", { scope: "row", class: "mono", text: shortFeature(n.hook, n.index) }),
      el("td", { text: String(n.layer) }), el("td", { text: KIND_NAMES[KINDS[n.kind]] }), el("td", { text: n.role }),
      el("td", { class: "num", text: fmt(n.score, 3) }), el("td", { text: steered.has(n.hook) ? "yes" : "" })))));
  container.append(el("div", { class: "table-scroll" }, table));
}
