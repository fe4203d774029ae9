import { expect, test, type CDPSession, type Page } from "@playwright/test";

// Time to interactive on a slow mobile link (issue 14, BENCHMARKS.md "Bundle"): the
// fleet page loaded through Chromium's own network throttling, until its WASM has
// hydrated it (`[data-testid="fleet"]` gets `data-hydrated="true"`). The figures are
// recorded (annotations, and one console line each), never asserted: only what does
// not depend on timing is, e.g. that a repeat visit takes the WASM from the cache.

// Chrome DevTools' "Slow 3G" is 400 kbit/s down and up with 400 ms of latency.
const SLOW_3G = {
  offline: false,
  latency: 400,
  downloadThroughput: (400 * 1000) / 8,
  uploadThroughput: (400 * 1000) / 8,
};

type Fetched = { url: string; status: number; encoding: string; fromCache: boolean; bytes: number };

// Throttles `page` and records, per visit, every response and the bytes it took on
// the wire.
async function throttle(page: Page): Promise<{ cdp: CDPSession; fetched: Fetched[] }> {
  await noteInteractive(page);
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("Network.enable");
  await cdp.send("Network.emulateNetworkConditions", SLOW_3G);
  const fetched: Fetched[] = [];
  const byId = new Map<string, Fetched>();
  // Chromium may say a request was served from its cache before it gives the response.
  const cached = new Set<string>();
  cdp.on("Network.responseReceived", ({ requestId, response }) => {
    const headers = Object.fromEntries(Object.entries(response.headers).map(([k, v]) => [k.toLowerCase(), String(v)]));
    const entry = {
      url: response.url,
      status: response.status,
      encoding: headers["content-encoding"] ?? "",
      fromCache: cached.has(requestId) || Boolean(response.fromDiskCache || response.fromPrefetchCache),
      bytes: 0,
    };
    byId.set(requestId, entry);
    fetched.push(entry);
  });
  cdp.on("Network.requestServedFromCache", ({ requestId }) => {
    cached.add(requestId);
    const entry = byId.get(requestId);
    if (entry) entry.fromCache = true;
  });
  cdp.on("Network.loadingFinished", ({ requestId, encodedDataLength }) => {
    const entry = byId.get(requestId);
    if (entry) entry.bytes = encodedDataLength;
  });
  return { cdp, fetched };
}

// Has every page note when the fleet list becomes interactive, in milliseconds from
// its navigation's start (exact, unlike polling from here).
async function noteInteractive(page: Page) {
  await page.addInitScript(() => {
    const observer = new MutationObserver(() => {
      if (document.querySelector('[data-testid="fleet"][data-hydrated="true"]')) {
        (window as unknown as { interactiveAt: number }).interactiveAt = performance.now();
        observer.disconnect();
      }
    });
    observer.observe(document, { subtree: true, childList: true, attributes: true, attributeFilter: ["data-hydrated"] });
  });
}

// The server writes its brotli and gzip copies when it starts, off the request path
// (seconds for the WASM): waits until it has, so that the first visit measures what a
// server that has been up a while sends.
async function untilPrecompressed(page: Page) {
  const html = await (await page.request.get("/")).text();
  const wasm = html.match(/\/pkg\/[^"']+\.wasm/)?.[0];
  expect(wasm, "the page preloads its WASM").toBeTruthy();
  await expect
    // As Chromium asks: the gzip copy (written first) until the brotli one exists.
    .poll(async () => (await page.request.get(wasm!, { headers: { "accept-encoding": "gzip, deflate, br, zstd" } })).headers()["content-encoding"], {
      timeout: 120_000,
      intervals: [500],
    })
    .toBe("br");
}

// Opens the fleet page and waits until it is interactive; returns the milliseconds
// from navigation start, as the page itself measured them.
async function visit(page: Page): Promise<number> {
  await page.goto("/", { waitUntil: "commit", timeout: 120_000 });
  await expect(page.getByTestId("fleet")).toHaveAttribute("data-hydrated", "true", { timeout: 150_000 });
  const at = await page.evaluate(() => (window as unknown as { interactiveAt?: number }).interactiveAt);
  expect(at, "the page noted when it became interactive").toBeGreaterThan(0);
  return Math.round(at!);
}

function record(label: string, ms: number, fetched: Fetched[]) {
  const wire = fetched.reduce((sum, f) => sum + f.bytes, 0);
  const wasm = fetched.filter((f) => /\.(wasm|js|css)$/.test(f.url));
  const line =
    `${label}: interactive after ${(ms / 1000).toFixed(1)} s on slow 3G (400 kbit/s, 400 ms), ` +
    `${(wire / 1024).toFixed(0)} KiB on the wire; bundle: ` +
    (wasm.map((f) => `${f.url.split(".").pop()} ${f.status} ${f.encoding || "identity"}${f.fromCache ? " from cache" : ""} ${(f.bytes / 1024).toFixed(0)} KiB`).join(", ") ||
      "not requested");
  test.info().annotations.push({ type: "bundle", description: line });
  console.log(line);
}

test.describe("the fleet page on a slow 3G link", () => {
  test.slow();

  test("first visit, then a repeat visit with the cache warm", async ({ page }) => {
    test.setTimeout(360_000);
    await untilPrecompressed(page);
    const { fetched } = await throttle(page);

    const first = await visit(page);
    const firstFetched = fetched.splice(0);
    record("first visit", first, firstFetched);
    const firstWasm = firstFetched.filter((f) => f.url.endsWith(".wasm"));
    expect(firstWasm.length, "the first visit fetches the WASM").toBeGreaterThan(0);
    expect(firstWasm.every((f) => f.status === 200 && !f.fromCache)).toBe(true);
    expect(firstWasm.map((f) => f.encoding)).toContain("br");

    const repeat = await visit(page);
    const repeatFetched = fetched.splice(0);
    record("repeat visit", repeat, repeatFetched);
    // The hashed, immutable bundle comes from the cache: no request reaches the
    // server for it (not even a revalidation answered 304).
    const bundle = repeatFetched.filter((f) => /\/pkg\/tether\.[A-Za-z0-9_-]{22}\.(wasm|js|css)$/.test(f.url));
    for (const f of bundle) {
      expect(f.fromCache, `${f.url} on the repeat visit`).toBe(true);
      expect(f.bytes, `${f.url} took bytes on the wire`).toBe(0);
    }
  });

  test("as before this issue: no compression, no cache (for comparison)", async ({ page }) => {
    test.setTimeout(240_000);
    const { cdp, fetched } = await throttle(page);
    await cdp.send("Network.setCacheDisabled", { cacheDisabled: true });
    await cdp.send("Network.setExtraHTTPHeaders", { headers: { "accept-encoding": "identity" } });

    const ms = await visit(page);
    record("uncompressed, no cache", ms, fetched);
    const wasm = fetched.filter((f) => /\.(wasm|js|css)$/.test(f.url));
    expect(wasm.length).toBeGreaterThan(0);
    // The figure means what it says only if the WASM did come uncompressed.
    expect(wasm.map((f) => f.encoding)).toEqual(wasm.map(() => ""));
  });
});
