// Real-browser walk-through of the cellsparse web app (Debian's Chromium driven by playwright-core).
//
// The first-time user's default path, no field touched: load the example -> a refused training
// gives Train back -> click nuclei (SAM) -> accept Foreground -> Background box -> reload (the
// session comes back) -> Train on the defaults (+ a stopped run) -> predict -> AP against the
// example's ground truth -> compare -> export; asserting on what the page shows, saving
// screenshots and downloading the exported files for the pytest wrapper to check.
//
// Input (environment): APP_URL, PLAN (JSON file: image path, clicks, background box, training
// steps), OUT_DIR (results.json, screenshots/, exports/), CHROMIUM (default /usr/bin/chromium).
// Exit code 0 and OUT_DIR/results.json on success; a message and exit code 1 otherwise.

import { chromium } from "playwright-core";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const APP_URL = process.env.APP_URL;
const OUT_DIR = process.env.OUT_DIR;
const plan = JSON.parse(fs.readFileSync(process.env.PLAN, "utf8"));
const SHOTS = path.join(OUT_DIR, "screenshots");
const EXPORTS = path.join(OUT_DIR, "exports");
fs.mkdirSync(SHOTS, { recursive: true });
fs.mkdirSync(EXPORTS, { recursive: true });

const results = { steps: [], latencies_ms: [], console_errors: [] };
const t0 = Date.now();
function step(name, extra = {}) {
  results.steps.push({ name, seconds: (Date.now() - t0) / 1000, ...extra });
  console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s] ${name}`, JSON.stringify(extra));
}
function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "cs-chromium-"));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  viewport: { width: 1440, height: 1000 },
  acceptDownloads: true,
});
const page = context.pages()[0] || (await context.newPage());
page.setDefaultTimeout(60_000);
page.on("console", (msg) => {
  if (msg.type() === "error") results.console_errors.push(msg.text().slice(0, 300));
});

const text = async (selector) => (await page.locator(selector).first().innerText()).trim();
const waitText = async (selector, pattern, timeout = 60_000) => {
  await page.waitForFunction(
    ([sel, src]) => new RegExp(src).test(document.querySelector(sel)?.innerText || ""),
    [selector, pattern.source], { timeout });
  return text(selector);
};
const rows = async (selector) =>
  Number(await page.locator(`${selector} [role=grid]`).getAttribute("aria-rowcount")) - 1;
const shot = (name) => page.screenshot({ path: path.join(SHOTS, name), fullPage: true });
const errorToasts = async () =>
  page.locator(".toast-body.error, [data-testid='toast-body'].error").allInnerTexts();

// Canvas pixel (row, col) -> page coordinates, exactly as Gradio maps clicks back to pixels.
async function canvasPoint(row, col) {
  return page.locator("#canvas img").evaluate((img, [r, c]) => {
    const b = img.getBoundingClientRect();
    const s = Math.min(b.width / img.naturalWidth, b.height / img.naturalHeight, 1);
    const ox = (b.width - img.naturalWidth * s) / 2, oy = (b.height - img.naturalHeight * s) / 2;
    return { x: b.left + ox + (c + 0.5) * s, y: b.top + oy + (r + 0.5) * s };
  }, [row, col]);
}

// Click the canvas and measure, inside the page, click -> new overlay image decoded and shown.
async function timedCanvasClick(row, col) {
  await page.locator("#canvas img").evaluate((img) => {
    window.__cs = { src: img.src, clicked: null, shown: null };
    const root = img.closest("#canvas");
    root.addEventListener("click", () => { window.__cs.clicked = performance.now(); },
      { once: true, capture: true });
    const watch = new MutationObserver(() => {
      const now = root.querySelector("img");
      if (now && now.src !== window.__cs.src && window.__cs.shown === null) {
        const done = () => { if (window.__cs.shown === null) window.__cs.shown = performance.now(); };
        now.decode().then(done, done);
      }
    });
    watch.observe(root, { subtree: true, childList: true, attributes: true, attributeFilter: ["src"] });
    window.__csWatch = watch;
  });
  const p = await canvasPoint(row, col);
  await page.mouse.click(p.x, p.y);
  await page.waitForFunction(() => window.__cs && window.__cs.shown !== null, null,
    { timeout: 30_000 });
  const ms = await page.evaluate(() => { window.__csWatch.disconnect();
    return window.__cs.shown - window.__cs.clicked; });
  results.latencies_ms.push(ms);
  return ms;
}

async function openTab(name) {
  await page.getByRole("tab", { name }).click();
}

async function chooseRadio(containerId, label) {
  await page.locator(`#${containerId} label`).filter({ hasText: label }).first().click();
}

async function download(linkLocator, into) {
  const links = await linkLocator.evaluateAll((as) => as.map((a) => ({ href: a.href,
    name: a.getAttribute("download") || a.textContent.trim() })));
  const saved = [];
  for (const { href, name } of links) {
    const res = await page.request.get(href);
    check(res.ok(), `download ${href} -> HTTP ${res.status()}`);
    const file = path.join(into, path.basename(name || new URL(href).pathname));
    fs.writeFileSync(file, await res.body());
    saved.push(file);
  }
  return [...new Set(saved)];
}

async function closeToasts() {
  for (const button of await page.locator(".toast-close").all()) {
    await button.click().catch(() => {});
  }
}

try {
  // 1. Open the app: the SAM backend line says which engine answers (fallback offline).
  await page.goto(APP_URL, { waitUntil: "domcontentloaded" });
  const sam = await waitText("#cs-sam-status", /Segment Anything:\s*(?!loading)\S/);
  results.sam_status = sam;
  step("page loaded", { sam });

  // 2. Load the bundled example (with its ground truth, so the page shows AP against it).
  await page.locator("#cs-example").click();
  await page.waitForSelector("#canvas img", { timeout: 60_000 });
  const info = await waitText("#cs-image-info", /\d+×\d+ px/);
  check(info.includes(`${plan.width}×${plan.height}`), `image info shows the size: ${info}`);
  await waitText("#cs-status", /SAM ready/, 120_000); // embedding computed before clicking
  const size = await page.locator("#canvas img").evaluate((i) => [i.naturalWidth, i.naturalHeight]);
  check(size[0] === plan.width && size[1] === plan.height, `canvas is ${size}`);
  await shot("01_example.png");
  step("example loaded", { info });

  // 3. A refused training (nothing annotated yet) says why and gives Train back.
  await openTab("② Train");
  await page.locator("#cs-train").click();
  const refused = await waitText("#cs-progress", /not trained: .*nothing to train on/, 60_000);
  await page.waitForFunction(() => !document.querySelector("#cs-train")?.disabled, null,
    { timeout: 30_000 });
  check(await page.locator("#cs-train").isEnabled(), "Train is usable again after a refusal");
  results.refused_training = refused;
  await closeToasts();
  step("refused training gave Train back", { progress: refused });
  await openTab("① Annotate");

  // 4. Click nuclei -> SAM mask preview -> Accept as Foreground (a background margin is
  //    added around each accepted cell by default).
  for (const [k, [row, col]] of plan.clicks.entries()) {
    const ms = await timedCanvasClick(row, col);
    const status = await waitText("#cs-status", /mask: \d+ px/);
    if (k === 0) await shot("02_sam_preview.png");
    await page.locator("#cs-accept-fg").click();
    const summary = await waitText("#cs-summary", new RegExp(`^${k + 1} Foreground cell`));
    step(`cell ${k + 1} accepted`, { latency_ms: Math.round(ms), status, summary });
  }

  // 5. Mark Background with a two-click box (the margins already gave some Background).
  const ringsOnly = await text("#cs-summary");
  const percent = (summary) => Number(summary.match(/([\d.]+)% Background/)[1]);
  check(percent(ringsOnly) > 0, `accepted cells come with a Background margin: ${ringsOnly}`);
  await chooseRadio("cs-mode", "Background box");
  const [r0, c0, r1, c1] = plan.background_box;
  await page.mouse.click(...Object.values(await canvasPoint(r0, c0)));
  await waitText("#cs-status", /opposite corner/);
  await page.mouse.click(...Object.values(await canvasPoint(r1, c1)));
  await waitText("#cs-status", /Marked \d+ px as Background/);
  const bg = await text("#cs-summary");
  check(percent(bg) > percent(ringsOnly), `the box adds Background: ${ringsOnly} -> ${bg}`);
  check(!/\d\.\ds|processing|Error/.test(bg + (await text("#cs-status"))),
    `no progress text or badge in the status and counts lines: ${bg}`);
  results.annotation_summary = bg;
  check((await rows("#cs-cells")) === plan.clicks.length,
    "cells table lists every accepted cell");
  await shot("03_annotated.png");
  step("background marked", { summary: bg });

  // 6. A reload comes back to the same session: image, cells and background are kept.
  await page.reload({ waitUntil: "domcontentloaded" });
  const back = await waitText("#cs-status", /Welcome back/, 60_000);
  const kept = await waitText("#cs-summary", new RegExp(`^${plan.clicks.length} Foreground cell`));
  check(kept === bg, `the reload keeps the annotation: ${kept} vs ${bg}`);
  results.after_reload = { status: back, summary: kept };
  step("reloaded", { status: back, summary: kept });

  // 7. Train without touching any field (the default time budget), watching the progress bar
  //    and the live loss curve.
  await openTab("② Train");
  await page.locator("#cs-train").click();
  await page.waitForSelector("#cs-progress [data-state=running]", { timeout: 120_000 });
  await page.waitForFunction(() => !!document.querySelector("#cs-loss canvas, #cs-loss svg"),
    null, { timeout: 120_000 });
  await shot("04_training.png");
  await page.waitForSelector("#cs-progress [data-state=done]", { timeout: 480_000 });
  const trained = await text("#cs-progress");
  check(/Done: round 1/.test(trained), `progress says done: ${trained}`);
  await shot("05_trained.png");
  step("trained on the defaults", { progress: trained });

  // 8. A second run stopped by the user keeps its model as a round.
  await page.locator("#cs-train").click();
  await waitText("#cs-progress", /step \d+/, 120_000); // the engine is stepping
  await page.locator("#cs-stop").click();
  await page.waitForSelector("#cs-progress [data-state=stopped]", { timeout: 120_000 });
  const stopped = await text("#cs-progress");
  results.stopped_run = stopped;
  const roundsRows = await rows("#cs-rounds");
  step("stopped run", { progress: stopped, rounds: roundsRows });
  check(roundsRows === 2 && /stopped early · active/.test(await text("#cs-rounds")),
    "the stopped run is kept as round 2");
  // Roll back to round 1 (the complete one) before predicting.
  await page.locator("#cs-round input").click();
  await page.getByRole("option", { name: /Round 1/ }).click();
  await page.locator("#cs-rollback").click();
  await page.waitForFunction(() => /complete · active/.test(
    document.querySelector("#cs-rounds")?.innerText || ""), null, { timeout: 30_000 });
  step("rolled back to round 1");

  // 9. Predict (every field untouched) and compare.
  await openTab("③ Predict & compare");
  await page.locator("#cs-predict").click();
  const pred = await waitText("#cs-pred-summary", /\d+\*?\*? objects/, 180_000);
  const count = Number(pred.match(/(\d+)\*?\*? objects/)[1]);
  results.predicted_objects = count;
  results.prediction_summary = pred;
  check(count >= 1, `the model finds objects: ${pred}`);
  check(/AP50 on your annotations \d/.test(pred), `AP against the annotations is shown: ${pred}`);
  const truthAp = pred.match(/AP50 vs ground truth\s*\**([\d.]+)/);
  check(truthAp, `AP against the example's ground truth is shown: ${pred}`);
  results.ap50_truth = Number(truthAp[1]);
  await page.waitForFunction(() => document.querySelectorAll("#cs-slider img").length >= 2);
  await shot("06_predicted.png");
  await chooseRadio("cs-right", "Errors");
  const cmp = await waitText("#cs-compare", /Errors vs (ground truth|your annotations): AP50/);
  results.compare_summary = cmp;
  await shot("07_errors.png");
  step("predicted", { objects: count, compare: cmp });

  // 10. Correct: accept every predicted object in Annotate.
  await page.locator("#cs-correct").click();
  await page.getByText("More: automatic masks, predictions").click();
  await page.getByRole("button", { name: "Accept all predicted objects" }).click();
  const corrected = await waitText("#cs-status", /Accepted \d+ object/);
  step("corrected", { status: corrected });

  // 11. Export masks, the model and the project; download every file.
  await openTab("④ Export");
  await page.locator("#cs-export").click();
  await page.waitForFunction(() =>
    document.querySelectorAll("#cs-export-files a[href]").length >= 5, null, { timeout: 60_000 });
  const files = await download(page.locator("#cs-export-files a[href]"), EXPORTS);
  await page.locator("#cs-model").click();
  await page.waitForSelector("#cs-model-file a[href]");
  files.push(...(await download(page.locator("#cs-model-file a[href]"), EXPORTS)));
  await page.locator("#cs-save").click();
  await page.waitForSelector("#cs-project-file a[href]");
  files.push(...(await download(page.locator("#cs-project-file a[href]"), EXPORTS)));
  results.files = files.map((f) => path.basename(f));
  await shot("08_exported.png");
  step("exported", { files: results.files });

  // 12. Another tab of the same browser is the same session; another browser is another user
  //     (it sees none of this session's data) and can upload its own image.
  const tab = await context.newPage();
  await tab.goto(APP_URL, { waitUntil: "domcontentloaded" });
  await tab.waitForFunction(() => /Welcome back/.test(
    document.querySelector("#cs-status")?.innerText || ""), null, { timeout: 60_000 });
  await tab.close();
  const otherBrowser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const other = await (await otherBrowser.newContext()).newPage();
  await other.goto(APP_URL, { waitUntil: "domcontentloaded" });
  await other.waitForFunction(() => /Segment Anything:\s*(?!loading)\S/.test(
    document.querySelector("#cs-sam-status")?.innerText || ""));
  const otherInfo = (await other.locator("#cs-image-info").innerText()).trim();
  check(otherInfo === "No image yet.", `a second user starts empty: ${otherInfo}`);
  await other.locator("#cs-upload input[type=file]").setInputFiles(plan.image);
  await other.waitForFunction(() => /\d+×\d+ px/.test(
    document.querySelector("#cs-image-info")?.innerText || ""), null, { timeout: 60_000 });
  await otherBrowser.close();
  step("same browser restored, another browser isolated");

  results.error_toasts = await errorToasts();
  results.ok = true;
} catch (err) {
  results.ok = false;
  results.error = String(err && err.stack || err);
  results.error_toasts = await errorToasts().catch(() => []);
  await shot("failure.png").catch(() => {});
  console.error(results.error);
} finally {
  results.total_seconds = (Date.now() - t0) / 1000;
  fs.writeFileSync(path.join(OUT_DIR, "results.json"), JSON.stringify(results, null, 2));
  await context.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(results.ok ? 0 : 1);
