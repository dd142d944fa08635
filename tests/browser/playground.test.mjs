// Drives the server's pages in Debian's chromium with playwright-core (no browser download: executablePath points at
// the system chromium, /usr/bin/chromium or $FEATUREFLOW_CHROMIUM). Run by FeatureFlow.Server.Tests (BrowserTests):
//
//   node playground.test.mjs --url http://127.0.0.1:PORT --out DIR [--mode pages|auth] [--key KEY] [--wrong-key KEY]
//
// pages: the playground runs a three-arm Compare (unsteered, happy × 1, happy × 2), a token's features show on hover
//   and on focus, the reproduce box's curl body replays to the same texts, the layout stacks at phone width, and the
//   experiment dashboard shows the figures and refreshes live.
// auth: a server with keys: the page shows the server's 401, refuses a wrong key, and works once the right one is
//   entered.
// Prints one JSON object with what it saw (the C# test asserts on it); screenshots (PNG) go to --out. Exits non-zero
// on a page error, a request leaving the server's origin, or a step that never happens.
import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";

const args = Object.fromEntries(process.argv.slice(2).reduce((pairs, a, i, all) => {
  if (a.startsWith("--")) pairs.push([a.slice(2), all[i + 1]]);
  return pairs;
}, []));
if (!args.url || !args.out) {
  console.error("usage: node playground.test.mjs --url BASE --out DIR [--mode pages|auth] [--key KEY] [--wrong-key KEY]");
  process.exit(2);
}
const base = args.url.replace(/\/$/, "");
const origin = new URL(base).origin;
const mode = args.mode ?? "pages";
const executablePath = process.env.FEATUREFLOW_CHROMIUM || "/usr/bin/chromium";
if (!fs.existsSync(executablePath)) {
  console.error(`chromium not found at ${executablePath}: install it (apt-get install -y chromium) or set FEATUREFLOW_CHROMIUM`);
  process.exit(3);
}
fs.mkdirSync(args.out, { recursive: true });
const STEP_MS = 60_000;

const problems = [];
const browser = await chromium.launch({
  executablePath,
  headless: true,
  // CI runs as root, where chromium's sandbox cannot start.
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run", "--no-default-browser-check"],
});

/** A page that records script errors, console errors and any request leaving the server's origin (none may). */
async function open(viewport) {
  const context = await browser.newContext({ viewport, deviceScaleFactor: 1 });
  await context.route("**/*", (route) => {
    const url = route.request().url();
    if (new URL(url).origin !== origin) {
      problems.push(`request outside the server: ${url}`);
      return route.abort();
    }
    return route.continue();
  });
  const page = await context.newPage();
  current = page;
  page.setDefaultTimeout(STEP_MS);
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    // A 401 the page handles is logged by chromium as a failed resource load: expected in auth mode.
    if (m.type() === "error" && !(mode === "auth" && /401/.test(m.text()))) problems.push(`console error: ${m.text()}`);
  });
  return { context, page };
}

const shot = async (page, name, options = {}) => {
  const file = path.join(args.out, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true, ...options });
  return file;
};

async function columns(page) {
  return page.$$eval("[data-arm-col]", (cols) => cols.map((c) => ({
    arm: Number(c.dataset.armCol),
    label: c.querySelector("h3 span").textContent,
    text: c.querySelector(".tokens").textContent,
    spans: c.querySelectorAll(".tok").length,
    shaded: [...c.querySelectorAll(".tok")].filter((s) => Number(s.dataset.activation) > 0).length,
    summary: Object.fromEntries([...c.querySelectorAll(".summary dd")].map((d) => [d.dataset.key, d.textContent])),
    box: (({ x, y, width }) => ({ x, y, width }))(c.getBoundingClientRect()),
  })));
}

async function waitForRun(page, n) {
  await page.waitForFunction((k) => Number(document.body.dataset.runs ?? 0) >= k, n);
  const error = await page.textContent("#run-error");
  if (error) throw new Error(`the playground's Compare failed: ${error}`);
}

const result = {};
let current = null; // the page a failure screenshot is taken of

async function pagesMode() {
  const { context, page } = await open({ width: 1440, height: 1000 });
  await page.goto(`${base}/`);
  await page.waitForFunction(() => /layers/.test(document.getElementById("model-line").textContent));
  result.modelLine = await page.textContent("#model-line");

  // Pack search: by theme word, by seed feature (short form), by description.
  const search = async (q) => {
    await page.fill("#pack-search", q);
    return page.$$eval("#pack-list li", (lis) => lis.map((li) => li.dataset.pack));
  };
  result.search = { smile: await search("smile"), seed: await search("3/res/145"), description: await search("happiness"), none: await search("zzzz-no-pack") };
  await search("");

  // Three arms: unsteered, happy × 1 (the defaults), and a third with happy at strength 2.
  await page.click("#add-arm");
  await page.click('[data-arm="2"] [data-action="add-pack"]');
  await page.fill('[data-arm="2"] .term [data-role="strength"]', "2");
  await page.selectOption('[data-arm="2"] .term [data-role="pack"]', "happy");
  await page.fill("#max-tokens", "48");
  await page.fill("#temperature", "1");
  await page.fill("#top-p", "1");
  await page.fill("#seed", "3");
  result.settings = { maxTokens: 48, temperature: 1, topP: 1, seed: 3, prompt: await page.inputValue("#prompt") };
  await page.click("#run");
  await waitForRun(page, 1);
  result.columns = await columns(page);
  result.status = await page.textContent("#run-status");
  result.legend = await page.textContent("#legend");

  // Hover a token of the unsteered arm: its features show.
  const hovered = page.locator('[data-arm-col="0"] .tok').nth(3);
  await hovered.hover();
  await page.waitForSelector("#token-tip:not([hidden])");
  result.hover = {
    token: await hovered.textContent(),
    tip: await page.textContent("#token-tip"),
    features: await page.$$eval("#token-tip tr[data-feature]", (rows) => rows.map((r) => Number(r.dataset.feature))),
  };
  await page.mouse.move(5, 5);
  await page.waitForSelector("#token-tip", { state: "hidden" });

  // Keyboard: Tab reaches a token (its column's one tab stop), the tip shows on focus, arrow keys move on.
  await page.focus('[data-arm-col="2"] .tok[tabindex="0"]');
  await page.waitForSelector("#token-tip:not([hidden])");
  await page.keyboard.press("ArrowRight");
  await page.keyboard.press("ArrowRight");
  const focused = await page.evaluate(() => ({
    piece: document.activeElement.dataset.piece, text: document.activeElement.textContent,
    describedBy: document.activeElement.getAttribute("aria-describedby"), tabIndex: document.activeElement.tabIndex,
  }));
  result.focus = {
    ...focused,
    tipFor: await page.getAttribute("#token-tip", "data-for"),
    tip: await page.textContent("#token-tip"),
    features: await page.$$eval("#token-tip tr[data-feature]", (rows) => rows.length),
  };
  // The top of the page with the focused token's features (docs/playground.png is a copy of this one).
  await page.evaluate(() => scrollTo(0, 0));
  await page.waitForFunction(() => {
    const tip = document.getElementById("token-tip").getBoundingClientRect();
    return tip.top > document.activeElement.getBoundingClientRect().top;
  });
  result.screenshots = { tooltip: await shot(page, "playground-tooltip", { fullPage: false }) };
  await page.keyboard.press("Escape");

  // The reproduce box: the CLI command and a curl whose body, replayed, gives the same texts.
  result.cli = await page.textContent("#cli-command");
  result.curl = await page.textContent("#curl-command");
  const body = /-d '(.*)'$/s.exec(result.curl)?.[1]?.replace(/'\\''/g, "'");
  if (!body) throw new Error(`no JSON body in the curl command: ${result.curl}`);
  result.replay = await replay(body);

  // The flow graph of the selected pack (sun-flow has a multi-block graph).
  await page.click('[data-pack="sun-flow"] button');
  await page.waitForFunction(() => document.querySelector("#flow svg title")?.textContent.includes("sun-flow"));
  result.flow = {
    title: await page.textContent("#flow svg title"),
    nodes: await page.$$eval("#flow svg rect", (r) => r.length),
    edges: await page.$$eval("#flow svg line[marker-end]", (l) => l.length),
    rows: await page.$$eval("#flow table tbody tr", (rows) => rows.map((r) => [...r.children].map((c) => c.textContent))),
  };
  await page.click('[data-pack="happy"] button');
  result.screenshots.playground = await shot(page, "playground");
  await context.close();

  // Phone width: the settings and the arm columns stack.
  const phone = await open({ width: 390, height: 844 });
  await phone.page.goto(`${base}/`);
  await phone.page.waitForFunction(() => /layers/.test(document.getElementById("model-line").textContent));
  await phone.page.fill("#max-tokens", "12");
  await phone.page.click("#run");
  await waitForRun(phone.page, 1);
  const cols = await columns(phone.page);
  result.phone = {
    columns: cols.length,
    stacked: cols.every((c) => Math.abs(c.box.x - cols[0].box.x) < 1) && cols[1].box.y > cols[0].box.y,
    widest: Math.max(...cols.map((c) => c.box.width)),
    scrollWidth: await phone.page.evaluate(() => document.documentElement.scrollWidth),
  };
  result.screenshots.phone = await shot(phone.page, "playground-phone");
  await phone.context.close();

  // The experiment dashboard: the figures the API reports, refreshed live.
  const dash = await open({ width: 1280, height: 900 });
  await dash.page.goto(`${base}/experiments`);
  await dash.page.waitForSelector("[data-experiment] [data-outcome]");
  result.experiments = await dashboard(dash.page);
  result.api = await (await fetch(`${base}/v1/featureflow/experiments`)).json();
  result.screenshots.experiments = await shot(dash.page, "experiments");
  // One more request in the experiment (over the OpenAI API): the page shows it within a poll or two, no reload.
  const name = result.experiments[0].name;
  const before = await dash.page.$$eval(`[data-experiment="${name}"] tr[data-arm] [data-field="requests"]`, (c) => c.reduce((s, x) => s + Number(x.dataset.value), 0));
  const completion = await fetch(`${base}/v1/completions`, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ prompt: "Once upon a time", max_tokens: 4, seed: 1, experiment: name, user: "browser-live-check" }),
  });
  if (!completion.ok) throw new Error(`experiment completion: ${completion.status} ${await completion.text()}`);
  await completion.text();
  const started = Date.now();
  await dash.page.waitForFunction(([n, b]) => [...document.querySelectorAll(`[data-experiment="${n}"] tr[data-arm] [data-field="requests"]`)]
    .reduce((s, x) => s + Number(x.dataset.value), 0) > b, [name, before], { timeout: 10_000 });
  result.live = { before, after: before + 1, seconds: (Date.now() - started) / 1000 };
  await dash.context.close();
  return result;
}

/** Replays a Compare body over HTTP and returns each arm's text. */
async function replay(body) {
  const response = await fetch(`${base}/v1/featureflow/compare`, { method: "POST", headers: { "content-type": "application/json" }, body });
  if (!response.ok) throw new Error(`replay: ${response.status} ${await response.text()}`);
  const texts = [];
  for (const line of (await response.text()).split("\n")) {
    if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
    const m = JSON.parse(line.slice(6));
    if (m.update) texts[m.arm ?? 0] = (texts[m.arm ?? 0] ?? "") + (m.update.text ?? "");
  }
  return texts;
}

async function dashboard(page) {
  return page.$$eval("[data-experiment]", (sections) => sections.map((s) => ({
    name: s.dataset.experiment,
    arms: [...s.querySelectorAll("table caption")].find((c) => c.textContent === "Arms").closest("table").querySelectorAll("tbody tr").length,
    armFigures: Object.fromEntries([...s.querySelectorAll("table.data")].filter((t) => t.querySelector("caption").textContent === "Arms")
      .flatMap((t) => [...t.querySelectorAll("tbody tr")]).map((tr) => [tr.dataset.arm,
        Object.fromEntries([...tr.querySelectorAll("[data-field]")].map((c) => [c.dataset.field, { text: c.textContent, value: c.dataset.value }]))])),
    outcomes: Object.fromEntries([...s.querySelectorAll("[data-outcome]")].map((o) => [o.dataset.outcome, {
      chart: { circles: o.querySelectorAll("svg circle").length, label: o.querySelector("svg").getAttribute("aria-label") },
      arms: Object.fromEntries([...o.querySelectorAll("tbody tr")].map((tr) => [tr.dataset.arm,
        Object.fromEntries([...tr.querySelectorAll("[data-field]")].map((c) => [c.dataset.field, {
          text: c.textContent, value: c.dataset.value ?? null, low: c.dataset.low ?? null, high: c.dataset.high ?? null,
        }]))])),
    }])),
  })));
}

async function authMode() {
  if (!args.key || !args["wrong-key"]) throw new Error("auth mode needs --key and --wrong-key");
  const { context, page } = await open({ width: 1280, height: 900 });
  await page.goto(`${base}/`);
  await page.waitForSelector("#key-panel:not([hidden])");
  result.withoutKey = { message: await page.textContent("#key-message"), focused: await page.evaluate(() => document.activeElement.id) };
  result.screenshots = { unauthorized: await shot(page, "auth-401", { fullPage: false }) };

  await page.fill("#key-input", args["wrong-key"]);
  await page.click("#key-form button[type=submit]");
  // The wrong key is refused: the panel comes back with the server's message.
  await page.waitForFunction(() => !document.getElementById("key-panel").hidden && document.getElementById("key-input").value === "");
  result.wrongKey = { message: await page.textContent("#key-message") };

  await page.fill("#key-input", args.key);
  await page.click("#key-form button[type=submit]");
  await page.waitForFunction(() => /layers/.test(document.getElementById("model-line").textContent));
  result.withKey = {
    modelLine: await page.textContent("#model-line"),
    packs: await page.$$eval("#pack-list li", (lis) => lis.length),
    panelHidden: await page.evaluate(() => document.getElementById("key-panel").hidden),
    session: await page.evaluate(() => sessionStorage.getItem("featureflow.apiKey")),
    local: await page.evaluate(() => localStorage.length),
  };
  await page.fill("#max-tokens", "8");
  await page.click("#run");
  await waitForRun(page, 1);
  result.withKey.columns = (await columns(page)).map((c) => c.text);
  result.screenshots.authorized = await shot(page, "auth-ok", { fullPage: false });

  // The same tab's dashboard uses the stored key without asking again.
  await page.goto(`${base}/experiments`);
  await page.waitForFunction(() => /config version/.test(document.getElementById("updated").textContent));
  result.dashboard = { keyPanelHidden: await page.evaluate(() => document.getElementById("key-panel").hidden), error: await page.textContent("#load-error") };
  await context.close();
  return result;
}

let exit = 0;
try {
  await (mode === "auth" ? authMode() : pagesMode());
  result.problems = problems;
  console.log(JSON.stringify(result));
  if (problems.length) {
    console.error(problems.join("\n"));
    exit = 1;
  }
} catch (e) {
  console.error(`browser test failed: ${e.stack ?? e}`);
  if (problems.length) console.error(problems.join("\n"));
  try {
    if (current && !current.isClosed()) console.error(`screenshot of the failure: ${await shot(current, `failure-${mode}`, { fullPage: false })}`);
  } catch {
    // The page is gone; the message above says why.
  }
  result.problems = problems;
  console.log(JSON.stringify(result));
  exit = 1;
} finally {
  await browser.close();
}
process.exit(exit);
