import { expect, test } from "./fixtures/agents";
import { DevicePage } from "./fixtures/device-page";

// Some proxies and corporate networks let no WebSocket through. The tab then falls
// back by itself to Server-Sent Events, and without those to long polls, and commands
// still complete live.

const connection = (device: DevicePage) => device.page.getByTestId("connection");

// Sends an echo from the device's page and waits for its answer to arrive live: the
// device answers after 800 ms, long after the send's own answer (`sent`), so every
// later status comes over the live channel.
async function echoCompletesLive(device: DevicePage, message: string) {
  await expect(device.presence).toHaveText("online", { timeout: 15_000 });
  await device.send("echo", { message, delay_ms: "800" });
  await expect(device.latestCommand()).toHaveAttribute("data-status", "succeeded", { timeout: 15_000 });
  await expect(device.latestCommand().getByTestId("result")).toContainText(message);
}

test("with WebSockets blocked the tab goes live over Server-Sent Events and commands complete live", async ({ page, startAgent }) => {
  const gateway = await startAgent("gateway");
  await expect.poll(async () => (await page.request.get(`/api/v1/devices/${gateway.id}`)).status(), { timeout: 15_000 }).toBe(200);
  // A proxy that refuses the upgrade: the socket closes before any message.
  let refused = 0;
  await page.routeWebSocket(/\/api\/v1\/live/, (ws) => {
    refused += 1;
    void ws.close();
  });
  const streams: string[] = [];
  page.on("request", (request) => {
    if (new URL(request.url()).pathname === "/api/v1/live/stream") streams.push(request.url());
  });

  const device = new DevicePage(page, gateway.id);
  await device.goto();
  await expect(connection(device)).toHaveText(/^\s*live \(SSE\)\s*$/, { timeout: 20_000 });
  await expect(page.locator(".device-header")).toHaveAttribute("data-hydrated", "true", { timeout: 15_000 });
  expect(refused, "the WebSocket was tried first").toBeGreaterThan(0);
  expect(streams.length, "an event stream carries the tab").toBeGreaterThan(0);

  await echoCompletesLive(device, "over server-sent events");
  await expect(connection(device)).toHaveText(/^\s*live \(SSE\)\s*$/);
});

test("with WebSockets and event streams blocked the tab goes live over long polls and commands complete live", async ({ page, startAgent }) => {
  const gateway = await startAgent("gateway");
  await expect.poll(async () => (await page.request.get(`/api/v1/devices/${gateway.id}`)).status(), { timeout: 15_000 }).toBe(200);
  await page.routeWebSocket(/\/api\/v1\/live/, (ws) => void ws.close());
  // A proxy that refuses event streams too.
  let streamsRefused = 0;
  await page.route(/\/api\/v1\/live\/stream/, (route) => {
    streamsRefused += 1;
    return route.abort("connectionrefused");
  });
  const polls: string[] = [];
  page.on("request", (request) => {
    if (/^\/api\/v1\/live\/sessions\/[0-9a-f]{32}\/events$/.test(new URL(request.url()).pathname)) polls.push(request.url());
  });

  const device = new DevicePage(page, gateway.id);
  await device.goto();
  await expect(connection(device)).toHaveText(/^\s*live \(polling\)\s*$/, { timeout: 30_000 });
  await expect(page.locator(".device-header")).toHaveAttribute("data-hydrated", "true", { timeout: 15_000 });
  expect(streamsRefused, "an event stream was tried first").toBeGreaterThan(0);
  expect(polls.length, "long polls carry the tab").toBeGreaterThan(0);

  await echoCompletesLive(device, "over long polls");
  await expect(connection(device)).toHaveText(/^\s*live \(polling\)\s*$/);
});

test("where the WebSocket gets through the tab says so", async ({ page }) => {
  await page.goto("/");
  await expect(page.getByTestId("connection")).toHaveText(/^\s*live \(WebSocket\)\s*$/, { timeout: 15_000 });
});
