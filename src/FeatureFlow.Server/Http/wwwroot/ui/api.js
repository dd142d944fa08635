// The server's JSON-over-HTTP API as the pages use it: the API key (asked for when a call answers 401, kept in this
// tab's sessionStorage only, sent as `authorization: Bearer`), OpenAI error objects, and server-sent events.

const KEY_STORAGE = "featureflow.apiKey";

/** An error the server answered (an OpenAI error object), or a failure to reach it (status 0). */
export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `HTTP ${status}`);
    this.status = status;
    this.param = error?.param ?? null;
    this.code = error?.code ?? null;
    this.type = error?.type ?? null;
  }

  /** One line for a person: the status, the parameter it names and the server's message. */
  describe() {
    const where = this.param && !this.message.startsWith(this.param) ? ` (${this.param})` : "";
    return this.status ? `${this.status}${where}: ${this.message}` : this.message;
  }
}

export function storedKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE);
  } catch {
    return null;
  }
}

function storeKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    // Storage disabled: the key lives in memory for this page only.
  }
  memoryKey = key || null;
  if (key) generation += 1;
  keyListeners.forEach((f) => f(Boolean(key)));
}

let memoryKey = null;
let generation = 0; // counts keys entered, so a refusal of an older key never asks again
const keyListeners = [];
let pendingKey = null;

/** Calls f(hasKey) whenever the key is set or forgotten. */
export function onKeyChange(f) {
  keyListeners.push(f);
  f(Boolean(currentKey()));
}

function currentKey() {
  return storedKey() ?? memoryKey;
}

export function forgetKey() {
  storeKey(null);
}

/**
 * Shows the key panel with the server's 401 message and resolves once a key is entered. Concurrent 401s share one
 * prompt. The panel is markup in each page: #key-panel, #key-message, #key-form, #key-input.
 */
function askForKey(message) {
  const panel = document.getElementById("key-panel");
  const text = document.getElementById("key-message");
  text.textContent = `The server refused the request (401 Unauthorized): ${message}`;
  if (pendingKey) return pendingKey;
  pendingKey = new Promise((resolve) => {
    const form = document.getElementById("key-form");
    const input = document.getElementById("key-input");
    panel.hidden = false;
    input.value = "";
    input.focus();
    const submit = (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      form.removeEventListener("submit", submit);
      panel.hidden = true;
      pendingKey = null;
      storeKey(key);
      resolve(key);
    };
    form.addEventListener("submit", submit);
  });
  return pendingKey;
}

async function readError(response) {
  let error = null;
  try {
    error = (await response.json())?.error ?? null;
  } catch {
    // Not JSON (a proxy's page, say): the status alone.
  }
  return new ApiError(response.status, error ?? { message: `${response.status} ${response.statusText}` });
}

/**
 * One API call. A 401 asks for a key (showing the server's message) and retries with it; any other error status
 * throws an ApiError. Returns the Response for the caller to read.
 */
export async function call(path, { method = "GET", body, signal } = {}) {
  for (;;) {
    const headers = { accept: body === undefined ? "application/json" : "application/json, text/event-stream" };
    if (body !== undefined) headers["content-type"] = "application/json";
    const key = currentKey();
    const sent = generation;
    if (key) headers.authorization = `Bearer ${key}`;
    let response;
    try {
      response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal, cache: "no-store" });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError(0, { message: `cannot reach the server: ${e.message}` });
    }
    if (response.status === 401) {
      const error = await readError(response);
      // A key was entered since this call was sent: retry with it rather than ask again.
      if (generation !== sent) continue;
      // The key sent (or its absence) was refused: forget it and ask, showing the server's message.
      if (key && currentKey() === key) storeKey(null);
      await askForKey(error.message);
      continue;
    }
    if (!response.ok) throw await readError(response);
    return response;
  }
}

export async function getJson(path, options) {
  return (await call(path, options)).json();
}

/** The `data:` payloads of a text/event-stream response, as they arrive. */
export async function* serverSentEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (data) yield data;
    }
  }
}

/** Wires the header's "Forget key" button, shown while a key is held. */
export function wireKeyControls() {
  const forget = document.getElementById("forget-key");
  if (!forget) return;
  forget.addEventListener("click", () => {
    forgetKey();
    forget.blur();
  });
  onKeyChange((has) => {
    forget.hidden = !has;
  });
}

// ---- formatting shared by both pages ----

/** protobuf JSON numbers: doubles may be "NaN" / "Infinity", 64-bit integers are strings. */
export function num(value) {
  if (value === undefined || value === null || value === "") return NaN;
  return typeof value === "number" ? value : Number(value);
}

export function fmt(value, digits = 3) {
  const n = num(value);
  if (Number.isNaN(n)) return "—";
  if (!Number.isFinite(n)) return n > 0 ? "∞" : "−∞";
  return n.toFixed(digits).replace("-", "−");
}

/** blocks.3.hook_resid_post + 145 → 3/res/145 (the paper's short form). */
export function shortFeature(hook, index) {
  const m = /^blocks\.(\d+)\.hook_(attn_out|mlp_out|resid_post)$/.exec(hook ?? "");
  if (!m) return index === undefined ? hook : `${hook}/${index}`;
  const kind = { attn_out: "att", mlp_out: "mlp", resid_post: "res" }[m[2]];
  return index === undefined ? `${m[1]}/${kind}` : `${m[1]}/${kind}/${index}`;
}

/** "blocks.3.hook_resid_post/145" → { hook, index } (null if it is not one). */
export function parseFeature(text) {
  const m = /^(blocks\.\d+\.hook_[a-z_]+)\/(\d+)$/.exec((text ?? "").trim());
  return m ? { hook: m[1], index: Number(m[2]) } : null;
}

/** Element helper: el("div", { class: "x", text: "…" }, child, …). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElementNS(tag === "svg" || attrs.svg ? "http://www.w3.org/2000/svg" : "http://www.w3.org/1999/xhtml", tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false || k === "svg") continue;
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** SVG element helper. */
export function svg(tag, attrs = {}, ...children) {
  return el(tag, { ...attrs, svg: true }, ...children);
}
