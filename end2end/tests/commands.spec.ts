import { expect, test } from "./fixtures/agents";
import { DevicePage } from "./fixtures/device-page";

test("a command sent from its form walks through its statuses to the result", async ({ page, startAgent }) => {
  const gateway = await startAgent("gateway");
  const device = new DevicePage(page, gateway.id);
  await expect.poll(async () => (await page.request.get(`/api/v1/devices/${gateway.id}`)).status(), { timeout: 15_000 }).toBe(200);
  await device.goto();
  await device.waitForLive();

  const seen = new Set<string>();
  const entry = device.latestCommand();
  await device.send("collect_logs", { lines: "5" });
  // Record each status the entry shows until it ends.
  await expect
    .poll(
      async () => {
        const status = await entry.getAttribute("data-status").catch(() => null);
        if (status) seen.add(status);
        return status;
      },
      { timeout: 15_000, intervals: [50] },
    )
    .toBe("succeeded");
  expect(seen.has("progress")).toBe(true);
  await expect(entry.getByTestId("status")).toHaveText("succeeded");
  await expect(entry.getByTestId("result")).toContainText("gateway[1005]");
});

test("an out-of-range argument shows a clear error and sends nothing", async ({ page, startAgent }) => {
  const thermostat = await startAgent("thermostat");
  const device = new DevicePage(page, thermostat.id);
  await expect.poll(async () => (await page.request.get(`/api/v1/devices/${thermostat.id}`)).status(), { timeout: 15_000 }).toBe(200);
  await device.goto();
  await device.waitForLive();

  await device.send("set_target", { celsius: "99" });
  await expect(device.form("set_target").getByRole("alert")).toHaveText(
    'argument "celsius" is 99, outside the allowed range 5..=30',
  );
  await expect(device.log.getByTestId("command")).toHaveCount(0);

  await device.send("set_target", { celsius: "22" });
  // The error is cleared (and, being empty, hidden).
  await expect(device.form("set_target").getByTestId("form-error")).toBeEmpty();
  await expect(device.form("set_target").getByRole("alert")).toBeHidden();
  await expect(device.latestCommand()).toHaveAttribute("data-status", "succeeded", { timeout: 10_000 });
  await expect(device.latestCommand().getByTestId("result")).toContainText('"target": 22');
});

test("a second tab sees the command made in the first", async ({ browser, startAgent }) => {
  const sw = await startAgent("switch");
  const first = new DevicePage(await (await browser.newContext()).newPage(), sw.id);
  const second = new DevicePage(await (await browser.newContext()).newPage(), sw.id);
  await expect.poll(async () => (await first.page.request.get(`/api/v1/devices/${sw.id}`)).status(), { timeout: 15_000 }).toBe(200);
  for (const tab of [first, second]) {
    await tab.goto();
    await tab.waitForLive();
    await expect(tab.presence).toHaveText("online", { timeout: 15_000 });
  }

  await first.send("toggle");
  // The first tab shows its own command (or the form's error says why not)…
  const firstTab = async () =>
    (await first.latestCommand().count()) > 0 ? "listed" : `not listed; form error: "${await first.form("toggle").getByTestId("form-error").innerText()}"`;
  await expect.poll(firstTab, { timeout: 10_000 }).toBe("listed");
  // …and the second sees it too.
  await expect(second.latestCommand()).toHaveAttribute("data-status", "succeeded", { timeout: 10_000 });
  await expect(second.latestCommand()).toContainText("toggle");
  await expect(second.latestCommand().getByTestId("result")).toContainText('"on": true');
});
