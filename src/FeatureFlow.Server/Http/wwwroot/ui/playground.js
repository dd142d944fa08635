// The steering playground: pick packs and SAE features into 2–6 arms (or sweep one pack), run one Compare, watch the
// arms stream side by side with every token shaded by a feature's activation, read each arm's summary, and copy the
// exact featureflow / curl command that reproduces the run.

import { call, getJson, serverSentEvents, ApiError, wireKeyControls, storedKey, fmt, num, shortFeature, parseFeature, el } from "./api.js";
import { renderFlowGraph } from "./flowgraph.js";

const $ = (id) => document.getElementById(id);
const MIN_ARMS = 2, MAX_ARMS = 6;
const OPERATIONS = [["STEERING_OPERATION_ADD", "add"], ["STEERING_OPERATION_RESCALE", "rescale"], ["STEERING_OPERATION_CLAMP", "clamp"]];
const DEFAULT_VALUE = { STEERING_OPERATION_ADD: 5, STEERING_OPERATION_RESCALE: 0, STEERING_OPERATION_CLAMP: 3 };

const state = {
  model: null,
  packs: [],
  saes: [],
  selected: null, // the pack shown in the flow graph (and the default for new pack terms)
  arms: [],
  running: null, // AbortController of the Compare in flight
};

const describe = (e) => (e instanceof ApiError ? e.describe() : String(e?.message ?? e));

// ---------------------------------------------------------------- loading

async function load() {
  wireKeyControls();
  let model, packs, saes;
  try {
    [model, packs, saes] = await Promise.all([
      getJson("/v1/featureflow/model"), getJson("/v1/featureflow/packs"), getJson("/v1/featureflow/saes"),
    ]);
  } catch (e) {
    $("model-line").textContent = "Model information unavailable.";
    $("load-error").textContent = `Could not load the server's model, packs and SAEs: ${describe(e)}`;
    return;
  }
  $("load-error").textContent = "";
  state.model = model;
  state.packs = (packs.packs ?? []).map((p) => ({ ...p, meta: parseMeta(p.metadataJson) }))
    .sort((a, b) => a.name.localeCompare(b.name));
  state.saes = saes.saes ?? [];
  $("model-line").textContent = [
    model.name, `${model.layers} layers`, `d_model ${model.dModel}`, `${model.heads} heads`, `vocabulary ${model.vocabSize}`,
    `context ${model.contextLength}`, `${(model.sites ?? []).length} hook sites`, `${state.saes.length} SAEs`,
    `${state.packs.length} packs`, model.executionProvider,
  ].join(" · ");
  $("max-tokens").max = String(Math.max(1, num(model.contextLength) - 1));
  if ((packs.refused ?? []).length) {
    $("load-error").textContent = `The server refused ${packs.refused.length} pack file(s): ` +
      packs.refused.map((r) => `${r.path}: ${r.reason}`).join("; ");
  }

  for (const id of ["shade-hook", "top-hook"]) {
    $(id).replaceChildren(...state.saes.map((s) => el("option", { value: s.hook, text: `${shortFeature(s.hook)} (${s.hook}, ${s.features} features)` })));
  }
  $("sweep-pack").replaceChildren(...state.packs.map((p) => el("option", { value: p.name, text: p.name })));

  const happy = state.packs.find((p) => p.name === "happy") ?? state.packs[0] ?? null;
  state.arms = [{ terms: [] }];
  state.arms.push({ terms: happy ? [packTerm(happy.name, 1)] : state.saes.length ? [featureTerm()] : [] });
  select(happy);
  renderPacks();
  renderArms();
  updateRepro();
  $("run").disabled = false;
}

function parseMeta(json) {
  try {
    return JSON.parse(json || "{}");
  } catch {
    return {};
  }
}

// ---------------------------------------------------------------- packs

function packText(p) {
  const seed = parseFeature(p.seed);
  return [
    p.name, p.description, p.seed, seed ? shortFeature(seed.hook, seed.index) : "", ...(p.meta.theme_words ?? []),
    ...(p.meta.sources ?? []).flatMap((s) => {
      const f = parseFeature(s.feature);
      return [s.feature, f ? shortFeature(f.hook, f.index) : ""];
    }),
  ].join(" ").toLowerCase();
}

function renderPacks() {
  const words = $("pack-search").value.toLowerCase().split(/\s+/).filter(Boolean);
  const shown = state.packs.filter((p) => words.every((w) => packText(p).includes(w)));
  $("pack-count").textContent = state.packs.length === 0
    ? "The server has no steering packs."
    : `${shown.length} of ${state.packs.length} packs${words.length ? " match" : ""}.`;
  $("pack-list").replaceChildren(...shown.map((p) => {
    const seed = parseFeature(p.seed);
    const range = (p.recommendedRange ?? []).map((v) => fmt(v, 2)).join("–");
    const selected = state.selected?.name === p.name;
    return el("li", { class: selected ? "selected" : "", "data-pack": p.name },
      el("div", { class: "pack-head" },
        el("strong", { text: p.name }),
        el("button", {
          type: "button", class: "small", "aria-pressed": String(selected), "aria-label": `Select pack ${p.name}`,
          onclick: () => { select(p); renderPacks(); },
        }, selected ? "Selected" : "Select")),
      el("p", { class: "desc", text: p.description || "" }),
      el("p", { class: "meta" },
        `seed ${seed ? shortFeature(seed.hook, seed.index) : p.seed || "—"} · ${p.mode} · ${p.operation} · ${p.terms} term${p.terms === 1 ? "" : "s"}`,
        range ? ` · strength ${range}` : "",
        p.meta.theme_words?.length ? ` · ${p.meta.theme_words.join(", ")}` : ""));
  }));
}

/** Shows a pack's flow graph, makes it the default for new pack terms and the sweep, and shades by its seed. */
function select(pack) {
  state.selected = pack;
  renderFlowGraph($("flow"), pack);
  if (!pack) return;
  $("sweep-pack").value = pack.name;
  const seed = parseFeature(pack.seed);
  if (seed && state.saes.some((s) => s.hook === seed.hook)) {
    $("shade-hook").value = seed.hook;
    $("shade-index").value = String(seed.index);
    $("top-hook").value = seed.hook;
  }
  updateRepro();
}

// ---------------------------------------------------------------- arms

function packTerm(name, strength) {
  return { kind: "pack", pack: name, strength };
}

function featureTerm() {
  const shade = { hook: $("shade-hook").value, index: Number($("shade-index").value) };
  const hook = state.saes.some((s) => s.hook === shade.hook) ? shade.hook : state.saes[0]?.hook;
  return { kind: "feature", hook, index: Number.isInteger(shade.index) ? shade.index : 0, operation: "STEERING_OPERATION_ADD", value: 5, strength: 1 };
}

function termSpec(t) {
  if (t.kind === "pack") return { pack: { name: t.pack, strength: t.strength } };
  return { hook: t.hook, operation: t.operation, value: t.value, strength: t.strength, saeFeature: { index: t.index } };
}

function termLabel(t) {
  if (t.kind === "pack") return `${t.pack} × ${t.strength}`;
  const op = OPERATIONS.find(([v]) => v === t.operation)?.[1] ?? t.operation;
  return `${shortFeature(t.hook, t.index)} ${op} ${t.value} × ${t.strength}`;
}

function armLabel(arm) {
  return arm.terms.length ? arm.terms.map(termLabel).join(" + ") : "unsteered";
}

function strengthControl(id, value, max, onChange) {
  const labelId = `${id}-label`;
  const range = el("input", { type: "range", id: `${id}-range`, min: 0, max, step: 0.05, value, "aria-labelledby": labelId });
  const number = el("input", { type: "number", id, step: 0.05, value, "aria-labelledby": labelId, "data-role": "strength" });
  range.addEventListener("input", () => {
    number.value = range.value;
    onChange(Number(range.value));
  });
  number.addEventListener("input", () => {
    const v = Number(number.value);
    if (number.value !== "" && Number.isFinite(v)) {
      range.value = String(v);
      onChange(v);
    }
  });
  return el("div", { class: "field" }, el("label", { id: labelId, for: id, text: "Strength" }), el("div", { class: "strength" }, range, number));
}

function termEditor(a, i, t) {
  const id = `arm-${a}-term-${i}`;
  const changed = () => updateRepro();
  const remove = el("button", {
    type: "button", class: "small danger", "aria-label": `Remove term ${i + 1} of arm ${a}`,
    onclick: () => {
      state.arms[a].terms.splice(i, 1);
      renderArms();
      document.querySelector(`[data-arm="${a}"] [data-action="add-pack"]`)?.focus();
    },
  }, "Remove");
  if (t.kind === "pack") {
    const pack = state.packs.find((p) => p.name === t.pack);
    const max = Math.max(2, 2 * num(pack?.recommendedRange?.[1] ?? 1));
    const select = el("select", { id: `${id}-pack`, "data-role": "pack" },
      ...state.packs.map((p) => el("option", { value: p.name, selected: p.name === t.pack, text: p.name })));
    select.addEventListener("change", () => {
      t.pack = select.value;
      changed();
    });
    return el("div", { class: "term", "data-term": i },
      el("div", { class: "field" }, el("label", { for: `${id}-pack`, text: "Pack" }), select),
      strengthControl(`${id}-strength`, t.strength, max, (v) => { t.strength = v; changed(); }),
      remove);
  }
  const site = el("select", { id: `${id}-hook` }, ...state.saes.map((s) => el("option", { value: s.hook, selected: s.hook === t.hook, text: shortFeature(s.hook) })));
  const index = el("input", { type: "number", id: `${id}-index`, min: 0, step: 1, value: t.index });
  const operation = el("select", { id: `${id}-op` }, ...OPERATIONS.map(([v, name]) => el("option", { value: v, selected: v === t.operation, text: name })));
  const value = el("input", { type: "number", id: `${id}-value`, step: 0.5, value: t.value });
  site.addEventListener("change", () => { t.hook = site.value; changed(); });
  index.addEventListener("input", () => { t.index = Number(index.value); changed(); });
  operation.addEventListener("change", () => {
    t.operation = operation.value;
    t.value = DEFAULT_VALUE[t.operation];
    value.value = String(t.value);
    changed();
  });
  value.addEventListener("input", () => { t.value = Number(value.value); changed(); });
  return el("div", { class: "term", "data-term": i },
    el("div", { class: "field" }, el("label", { for: `${id}-hook`, text: "SAE site" }), site),
    el("div", { class: "field" }, el("label", { for: `${id}-index`, text: "Feature" }), index),
    el("div", { class: "field" }, el("label", { for: `${id}-op`, text: "Operation" }), operation),
    el("div", { class: "field" }, el("label", { for: `${id}-value`, text: "Value" }), value),
    strengthControl(`${id}-strength`, t.strength, 2, (v) => { t.strength = v; changed(); }),
    remove);
}

function renderArms() {
  const root = $("arms-editor");
  root.replaceChildren(...state.arms.map((arm, a) => el("section", { class: "arm", "data-arm": a, "aria-labelledby": `arm-${a}-title` },
    el("div", { class: "arm-head" },
      el("h3", { id: `arm-${a}-title`, text: `Arm ${a}` }),
      el("button", {
        type: "button", class: "small danger", "aria-label": `Remove arm ${a}`, disabled: state.arms.length <= MIN_ARMS,
        onclick: () => {
          state.arms.splice(a, 1);
          renderArms();
          $("add-arm").focus();
        },
      }, "Remove arm")),
    ...(arm.terms.length ? arm.terms.map((t, i) => termEditor(a, i, t)) : [el("p", { class: "unsteered", text: "No steering: the unsteered model." })]),
    el("div", { class: "row" },
      el("button", {
        type: "button", class: "small", "data-action": "add-pack", "aria-label": `Add a pack to arm ${a}`, disabled: state.packs.length === 0,
        onclick: () => addTerm(a, packTerm((state.selected ?? state.packs[0]).name, 1)),
      }, "+ Pack"),
      el("button", {
        type: "button", class: "small", "data-action": "add-feature", "aria-label": `Add an SAE feature to arm ${a}`, disabled: state.saes.length === 0,
        onclick: () => addTerm(a, featureTerm()),
      }, "+ SAE feature")))),
  el("button", {
    type: "button", id: "add-arm", disabled: state.arms.length >= MAX_ARMS,
    onclick: () => {
      state.arms.push({ terms: [] });
      renderArms();
      document.querySelector(`[data-arm="${state.arms.length - 1}"] h3`)?.scrollIntoView({ block: "nearest" });
      document.querySelector(`[data-arm="${state.arms.length - 1}"] [data-action="add-pack"]`)?.focus();
    },
  }, `Add arm (${state.arms.length} of ${MAX_ARMS})`));
  updateRepro();
}

function addTerm(a, term) {
  state.arms[a].terms.push(term);
  renderArms();
  const terms = document.querySelectorAll(`[data-arm="${a}"] .term`);
  terms[terms.length - 1]?.querySelector("select, input")?.focus();
}

function mode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

// ---------------------------------------------------------------- the request

class FormError extends Error {
  constructor(field, message) {
    super(message);
    this.field = field;
  }
}

function numberField(id, { integer = false, min = -Infinity, max = Infinity, minExclusive = false, optional = false, name }) {
  const text = $(id).value.trim();
  if (text === "" && optional) return undefined;
  const v = Number(text);
  if (text === "" || !Number.isFinite(v) || (integer && !Number.isInteger(v)) || v < min || v > max || (minExclusive && v === min)) {
    const range = minExclusive ? `in (${min}, ${max}]` : `${min === -Infinity ? "" : `≥ ${min}`}${max === Infinity ? "" : ` and ≤ ${max}`}`;
    throw new FormError(id, `${name}: “${text}” is not ${integer ? "a whole number" : "a number"} ${range}`.trim());
  }
  return v;
}

function parseStrengths() {
  const parts = $("sweep-strengths").value.split(/[\s,]+/).filter(Boolean);
  const values = parts.map(Number);
  if (values.some((v) => !Number.isFinite(v)) || values.length < MIN_ARMS || values.length > MAX_ARMS)
    throw new FormError("sweep-strengths", `Strengths: give ${MIN_ARMS} to ${MAX_ARMS} numbers separated by commas`);
  return values;
}

/** The CompareRequest (protobuf JSON) and a label per arm. */
function buildRequest() {
  const request = { prompt: $("prompt").value };
  const maxTokens = numberField("max-tokens", { integer: true, min: 1, max: num(state.model?.contextLength ?? 512) - 1, optional: true, name: "Max tokens" });
  if (maxTokens !== undefined) request.maxTokens = maxTokens;
  const temperature = numberField("temperature", { min: 0, optional: true, name: "Temperature" });
  if (temperature !== undefined) request.temperature = temperature;
  const topP = numberField("top-p", { min: 0, max: 1, minExclusive: true, optional: true, name: "Top-p" });
  if (topP !== undefined) request.topP = topP;
  const seed = numberField("seed", { integer: true, min: 0, max: Number.MAX_SAFE_INTEGER, optional: true, name: "Seed" });
  if (seed !== undefined) request.seed = String(seed);
  let labels;
  if (mode() === "arms") {
    if (state.arms.length < MIN_ARMS) throw new FormError("add-arm", `Add at least ${MIN_ARMS} arms`);
    request.arms = state.arms.map((arm) => ({ terms: arm.terms.map(termSpec) }));
    labels = state.arms.map(armLabel);
  } else {
    const strengths = parseStrengths();
    const pack = $("sweep-pack").value;
    if (!pack) throw new FormError("sweep-pack", "Sweep: the server has no pack to sweep");
    request.sweep = { pack: { name: pack }, strengths };
    labels = strengths.map((s) => `${pack} × ${s}`);
  }
  const readout = { hooks: [], topK: 0, features: [] };
  if (state.saes.length) {
    const shade = { hook: $("shade-hook").value, index: numberField("shade-index", { integer: true, min: 0, name: "Shade feature" }) };
    const width = state.saes.find((s) => s.hook === shade.hook)?.features ?? Infinity;
    if (shade.index >= width) throw new FormError("shade-index", `Shade feature: ${shortFeature(shade.hook)} has ${width} features (0–${width - 1})`);
    readout.features.push(shade);
    request.watch = [shade];
    readout.hooks.push($("top-hook").value);
    readout.topK = numberField("top-k", { integer: true, min: 1, max: 20, name: "Top features" });
    request.readout = readout;
  }
  return { request, labels };
}

// ---------------------------------------------------------------- reproduce

const shellQuote = (s) => `'${String(s).replace(/'/g, "'\\''")}'`;

function updateRepro() {
  if (!state.model) return;
  let built;
  try {
    built = buildRequest();
  } catch (e) {
    $("cli-command").textContent = `(fix the settings: ${e.message})`;
    $("curl-command").textContent = "";
    return;
  }
  const { request } = built;
  const grpc = `${location.protocol === "https:" ? "https" : "http"}://${location.hostname}:50051`;
  const cli = ["featureflow compare", `--server ${grpc}`, `--prompt ${shellQuote(request.prompt)}`];
  if (request.maxTokens !== undefined) cli.push(`--max-tokens ${request.maxTokens}`);
  if (request.temperature !== undefined) cli.push(`--temperature ${request.temperature}`);
  if (request.topP !== undefined) cli.push(`--top-p ${request.topP}`);
  if (request.seed !== undefined) cli.push(`--seed ${request.seed}`);
  for (const arm of request.arms ?? []) cli.push(`--arm ${shellQuote(JSON.stringify(arm))}`);
  if (request.sweep) cli.push(`--pack ${shellQuote(request.sweep.pack.name)} --strengths ${request.sweep.strengths.join(",")}`);
  for (const w of request.watch ?? []) cli.push(`--watch ${w.hook}/${w.index}`);
  const keyed = Boolean(storedKey());
  $("cli-command").textContent = (keyed ? "# FEATUREFLOW_API_KEY holds your key\n" : "") + cli.join(" \\\n  ");
  const curl = [`curl -sN ${shellQuote(`${location.origin}/v1/featureflow/compare`)}`, "-H 'content-type: application/json'"];
  if (keyed) curl.push('-H "authorization: Bearer $FEATUREFLOW_API_KEY"');
  curl.push(`-d ${shellQuote(JSON.stringify(request))}`);
  $("curl-command").textContent = curl.join(" \\\n  ");
}

async function copy(id, button) {
  const text = $(id).textContent;
  try {
    await navigator.clipboard.writeText(text);
    $("copy-status").textContent = "Copied.";
  } catch {
    // No clipboard (a plain-HTTP page off localhost): select the text for Ctrl+C instead.
    const range = document.createRange();
    range.selectNodeContents($(id));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    $(id).focus();
    $("copy-status").textContent = "Selected: press Ctrl+C (⌘C) to copy.";
  }
  button.focus();
}

// ---------------------------------------------------------------- results

const tip = () => $("token-tip");
const pieceData = new WeakMap(); // token span → { tokens: [{ id, logprob, features }], arm }

/** One Compare run on screen: a column per arm, filled as messages arrive. */
class Run {
  constructor(labels, request) {
    this.shade = request.readout?.features?.[0] ?? null;
    this.topHook = request.readout?.hooks?.[0] ?? null;
    this.max = 0;
    this.tokens = 0;
    this.pieces = [];
    this.columns = labels.map((label, a) => this.column(a, label, request.prompt));
    $("results").replaceChildren(...this.columns.map((c) => c.root));
    const legend = $("legend");
    legend.hidden = !this.shade;
    if (this.shade) {
      $("legend-label").textContent = `Shade: activation of ${shortFeature(this.shade.hook, this.shade.index)} · 0`;
      $("legend-max").textContent = "max —";
    }
  }

  column(a, label, prompt) {
    const titleId = `col-${a}-title`;
    const tokens = el("div", { class: "tokens", role: "group", "aria-label": `Arm ${a} text, token by token` });
    const status = el("span", { class: "status", text: "waiting…" });
    const summary = el("dl", { class: "summary", "aria-label": `Arm ${a} summary` });
    const root = el("section", { class: "arm-col", "data-arm-col": a, "aria-labelledby": titleId },
      el("h3", { id: titleId }, el("span", { text: `Arm ${a}: ${label}` }), status),
      el("p", { class: "prompt-echo" }, "Prompt: ", prompt),
      tokens, summary);
    tokens.addEventListener("keydown", (e) => this.key(e, tokens));
    return { root, tokens, status, summary, pending: [], last: null, count: 0 };
  }

  add(message) {
    const a = message.arm ?? 0;
    const col = this.columns[a];
    if (!col) return;
    if (message.update) this.update(a, col, message.update);
    if (message.summary) this.summarize(col, message.summary);
  }

  update(a, col, u) {
    const ids = u.tokenIds ?? [];
    ids.forEach((id, i) => col.pending.push({ id, logprob: num(u.tokenLogprobs?.[i]), features: u.tokenFeatures?.[i] ?? null }));
    col.count += ids.length;
    this.tokens += ids.length;
    col.status.textContent = `${col.count} token${col.count === 1 ? "" : "s"}…`;
    if (!u.text) return;
    const span = el("span", { class: "tok", tabindex: col.last ? -1 : 0, "data-piece": this.pieces.length }, u.text);
    pieceData.set(span, { tokens: col.pending, arm: a, run: this });
    col.pending = [];
    col.last = span;
    col.tokens.append(span);
    this.pieces.push(span);
    const v = this.shadeValue(span);
    if (v > this.max) {
      this.max = v;
      $("legend-max").textContent = `max ${fmt(this.max, 2)}`;
      this.pieces.forEach((s) => this.paint(s));
    } else this.paint(span);
  }

  /** The shade feature's activation for a piece (the largest over its tokens). */
  shadeValue(span) {
    if (!this.shade) return 0;
    let best = 0;
    for (const t of pieceData.get(span).tokens) {
      const v = featureValue(t.features, this.shade);
      if (v > best) best = v;
    }
    return best;
  }

  paint(span) {
    const v = this.shadeValue(span);
    span.style.backgroundColor = v > 0 && this.max > 0 ? `rgba(var(--shade), ${(0.08 + 0.72 * (v / this.max)).toFixed(3)})` : "";
    span.dataset.activation = v.toFixed(4);
  }

  summarize(col, s) {
    if (col.pending.length && col.last) pieceData.get(col.last).tokens.push(...col.pending);
    col.pending = [];
    const finish = String(s.finishReason ?? "").replace(/^FINISH_REASON_/, "").toLowerCase() || "—";
    col.status.textContent = `done · ${finish}`;
    const rows = [
      ["tokens", String(s.completionTokens ?? 0)],
      ["finish", finish],
      ["mean log-prob", fmt(s.meanLogprob, 3)],
      ["perplexity (unsteered model)", fmt(s.perplexityUnsteered, 2)],
      ...(s.watched ?? []).map((w) => [`mean ${shortFeature(w.hook, w.index)}`, fmt(w.meanActivation, 3)]),
      ["seed", String(s.seed ?? "—")],
      ["server label", s.label ?? ""],
    ];
    col.summary.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v, "data-key": k })]));
  }

  key(e, tokens) {
    const spans = [...tokens.querySelectorAll(".tok")];
    const i = spans.indexOf(document.activeElement);
    if (i < 0) return;
    let next = null;
    if (e.key === "ArrowRight" || e.key === "ArrowDown") next = spans[Math.min(spans.length - 1, i + 1)];
    else if (e.key === "ArrowLeft" || e.key === "ArrowUp") next = spans[Math.max(0, i - 1)];
    else if (e.key === "Home") next = spans[0];
    else if (e.key === "End") next = spans[spans.length - 1];
    else if (e.key === "Escape") {
      hideTip();
      return;
    } else return;
    e.preventDefault();
    spans[i].tabIndex = -1;
    next.tabIndex = 0;
    next.focus();
  }
}

function featureValue(features, ref) {
  const site = features?.sites?.find((s) => s.hook === ref.hook);
  if (!site) return 0;
  const i = (site.featureIndices ?? []).indexOf(ref.index);
  return i < 0 ? 0 : num(site.featureValues[i]);
}

function showTip(span) {
  const data = pieceData.get(span);
  if (!data) return;
  const { run } = data;
  const box = tip();
  const parts = [];
  for (const t of data.tokens.length ? data.tokens : [{ id: null }]) {
    parts.push(el("p", {},
      el("strong", { text: JSON.stringify(span.textContent) }),
      t.id === null ? "" : ` · token ${t.id} · log p ${fmt(t.logprob, 3)}`));
    if (run.shade) parts.push(el("p", { text: `${shortFeature(run.shade.hook, run.shade.index)} = ${fmt(featureValue(t.features, run.shade), 3)}` }));
    const site = t.features?.sites?.find((s) => s.hook === run.topHook);
    if (run.topHook) {
      const top = (site?.topIndices ?? []).map((index, j) => ({ index, value: num(site.topValues[j]) }));
      const peak = Math.max(1e-9, ...top.map((f) => f.value));
      parts.push(top.length
        ? el("table", { "aria-label": `Top features at ${run.topHook}` },
          el("thead", {}, el("tr", {}, el("th", { scope: "col", text: `top at ${shortFeature(run.topHook)}` }), el("th", { scope: "col", text: "activation" }), el("th", {}))),
          el("tbody", {}, ...top.map((f) => {
            const bar = el("span", { class: "bar", "aria-hidden": "true" });
            bar.style.width = `${Math.round(60 * f.value / peak)}px`;
            return el("tr", { "data-feature": f.index }, el("td", { class: "mono", text: shortFeature(run.topHook, f.index) }), el("td", { text: fmt(f.value, 3) }), el("td", {}, bar));
          })))
        : el("p", { text: `No active features at ${shortFeature(run.topHook)}.` }));
    }
  }
  box.replaceChildren(...parts);
  box.hidden = false;
  span.setAttribute("aria-describedby", "token-tip");
  tipSpan = span;
  box.dataset.for = span.dataset.piece;
  placeTip();
}

let tipSpan = null;

/** Below the token, or above it when there is no room below; kept beside it as the page scrolls. */
function placeTip() {
  const box = tip();
  if (box.hidden || !tipSpan) return;
  const rect = tipSpan.getBoundingClientRect();
  const w = box.offsetWidth, h = box.offsetHeight;
  const left = Math.max(4, Math.min(rect.left, innerWidth - w - 8));
  const below = rect.bottom + 6;
  box.style.left = `${left}px`;
  box.style.top = `${below + h > innerHeight - 4 && rect.top - h - 6 > 0 ? rect.top - h - 6 : below}px`;
}

function hideTip() {
  const box = tip();
  box.hidden = true;
  tipSpan = null;
  document.querySelectorAll('.tok[aria-describedby="token-tip"]').forEach((s) => s.removeAttribute("aria-describedby"));
}

function wireTokens() {
  const results = $("results");
  results.addEventListener("mouseover", (e) => {
    const span = e.target.closest?.(".tok");
    if (span) showTip(span);
  });
  results.addEventListener("mouseout", (e) => {
    const span = e.target.closest?.(".tok");
    if (span && document.activeElement !== span && !span.contains(e.relatedTarget)) hideTip();
  });
  results.addEventListener("focusin", (e) => {
    if (e.target.classList?.contains("tok")) showTip(e.target);
  });
  results.addEventListener("focusout", (e) => {
    if (e.target.classList?.contains("tok")) hideTip();
  });
  // A tap focuses the token (and so shows its features); the column's roving tab stop moves there too.
  results.addEventListener("click", (e) => {
    const span = e.target.closest?.(".tok");
    if (!span) return;
    span.parentElement.querySelectorAll(".tok").forEach((s) => { s.tabIndex = s === span ? 0 : -1; });
    span.focus();
    showTip(span);
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape") hideTip();
  });
  addEventListener("scroll", placeTip, { passive: true });
  addEventListener("resize", placeTip);
}

// ---------------------------------------------------------------- running

function setRunning(running) {
  $("run").disabled = running;
  $("stop").disabled = !running;
  $("results").setAttribute("aria-busy", String(running));
}

function clearFieldErrors() {
  document.querySelectorAll('[aria-invalid="true"]').forEach((n) => n.removeAttribute("aria-invalid"));
  $("form-error").textContent = "";
}

async function run(event) {
  event.preventDefault();
  if (state.running) return;
  clearFieldErrors();
  $("run-error").textContent = "";
  let built;
  try {
    built = buildRequest();
  } catch (e) {
    if (e instanceof FormError) {
      $("form-error").textContent = e.message;
      $(e.field)?.setAttribute("aria-invalid", "true");
      $(e.field)?.focus();
      return;
    }
    throw e;
  }
  updateRepro();
  const { request, labels } = built;
  const controller = new AbortController();
  state.running = controller;
  setRunning(true);
  hideTip();
  const view = new Run(labels, request);
  $("run-status").textContent = `Running ${labels.length} arms…`;
  const started = performance.now();
  let finished = false;
  try {
    const response = await call("/v1/featureflow/compare", { method: "POST", body: request, signal: controller.signal });
    for await (const data of serverSentEvents(response)) {
      if (data === "[DONE]") {
        finished = true;
        break;
      }
      const message = JSON.parse(data);
      if (message.error) throw new ApiError(0, message.error);
      view.add(message);
    }
    if (!finished) throw new ApiError(0, { message: "the stream ended before [DONE]" });
    $("run-status").textContent = `Done: ${labels.length} arms, ${view.tokens} tokens in ${((performance.now() - started) / 1000).toFixed(1)} s.`;
  } catch (e) {
    if (e.name === "AbortError") $("run-status").textContent = "Stopped.";
    else {
      $("run-status").textContent = "Failed.";
      $("run-error").textContent = `Compare failed: ${describe(e)}`;
    }
  } finally {
    state.running = null;
    setRunning(false);
    document.body.dataset.runs = String(Number(document.body.dataset.runs ?? 0) + 1);
  }
}

function wire() {
  $("run-form").addEventListener("submit", run);
  $("run-form").addEventListener("input", (e) => {
    if (e.target.id !== "pack-search") updateRepro();
  });
  $("run-form").addEventListener("change", () => updateRepro());
  $("stop").addEventListener("click", () => state.running?.abort());
  $("pack-search").addEventListener("input", renderPacks);
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", () => {
      $("arms-editor").hidden = mode() !== "arms";
      $("sweep-editor").hidden = mode() !== "sweep";
      updateRepro();
    });
  }
  $("sweep-pack").addEventListener("change", () => {
    const pack = state.packs.find((p) => p.name === $("sweep-pack").value);
    if (pack) {
      select(pack);
      renderPacks();
    }
  });
  for (const button of document.querySelectorAll("[data-copy]")) button.addEventListener("click", () => copy(button.dataset.copy, button));
  wireTokens();
}

wire();
load();
