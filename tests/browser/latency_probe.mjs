// Click -> mask overlay latency only (for measuring; not part of the test suite).
// APP_URL, IMAGE, CLICKS (JSON list of [row, col]).
import { chromium } from "playwright-core";
import fs from "node:fs"; import os from "node:os"; import path from "node:path";
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "cs-probe-"));
const ctx = await chromium.launchPersistentContext(dir, { executablePath: "/usr/bin/chromium",
  headless: true, args: ["--no-sandbox", "--disable-gpu"], viewport: { width: 1440, height: 1000 } });
const page = ctx.pages()[0];
await page.goto(process.env.APP_URL);
await page.waitForFunction(() => /Segment Anything:\s*(?!loading)\S/.test(document.querySelector("#cs-sam-status")?.innerText || ""));
await page.locator("#cs-upload input[type=file]").setInputFiles(process.env.IMAGE);
await page.waitForFunction(() => /SAM ready/.test(document.querySelector("#cs-status")?.innerText || ""), null, { timeout: 120000 });
const out = [];
for (const [r, c] of JSON.parse(process.env.CLICKS)) {
  const p = await page.locator("#canvas img").evaluate((img, [r, c]) => {
    const b = img.getBoundingClientRect();
    const s = Math.min(b.width / img.naturalWidth, b.height / img.naturalHeight, 1);
    window.__cs = { src: img.src, clicked: null, shown: null };
    const root = img.closest("#canvas");
    root.addEventListener("click", () => { window.__cs.clicked = performance.now(); }, { once: true, capture: true });
    const watch = new MutationObserver(() => { const now = root.querySelector("img");
      if (now && now.src !== window.__cs.src && window.__cs.shown === null) {
        const done = () => { if (window.__cs.shown === null) window.__cs.shown = performance.now(); };
        now.decode().then(done, done); } });
    watch.observe(root, { subtree: true, childList: true, attributes: true, attributeFilter: ["src"] });
    window.__w = watch;
    return { x: b.left + (b.width - img.naturalWidth * s) / 2 + (c + 0.5) * s, y: b.top + (b.height - img.naturalHeight * s) / 2 + (r + 0.5) * s };
  }, [r, c]);
  await page.mouse.click(p.x, p.y);
  await page.waitForFunction(() => window.__cs.shown !== null, null, { timeout: 30000 });
  out.push(await page.evaluate(() => { window.__w.disconnect();
    const img = document.querySelector("#canvas img");
    const e = performance.getEntriesByName(img.src).pop();
    const c = window.__cs.clicked;
    return e ? [Math.round(window.__cs.shown - c), Math.round(e.startTime - c), Math.round(e.responseEnd - e.startTime)]
             : [Math.round(window.__cs.shown - c)]; }));
  await page.getByRole("button", { name: "Clear prompts" }).click();
  await page.waitForTimeout(300);
}
console.log(JSON.stringify(out));
await ctx.close(); fs.rmSync(dir, { recursive: true, force: true });
