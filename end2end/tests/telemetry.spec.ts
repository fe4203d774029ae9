import { expect, test } from "./fixtures/agents";
import { DevicePage } from "./fixtures/device-page";
import { FleetPage } from "./fixtures/fleet-page";

type Locator = import("@playwright/test").Locator;
// Points drawn, and the readings they summarise (a point is a bucket of readings).
const points = async (chart: Locator) => Number(await chart.getAttribute("data-points"));
const readings = async (chart: Locator) => Number(await chart.getAttribute("data-readings"));

test("the device page charts every metric and gains points live, faster while watched", async ({ page, request, startAgent }) => {
  // Every 10 s on its own: points arriving each second prove the page sped it up.
  const gateway = await startAgent("gateway", { telemetryMs: 10_000 });
  await expect.poll(async () => (await request.get(`/api/v1/devices/${gateway.id}`)).status(), { timeout: 15_000 }).toBe(200);
  const device = new DevicePage(page, gateway.id);
  await device.goto();
  await device.waitForLive();

  const charts = page.getByTestId("chart");
  await expect(charts).toHaveCount(3);
  await expect(charts.nth(0)).toHaveAttribute("data-metric", "cpu");
  await expect(charts.nth(1)).toHaveAttribute("data-metric", "memory");
  await expect(charts.nth(2)).toHaveAttribute("data-metric", "signal");

  const cpu = page.locator('[data-testid="chart"][data-metric="cpu"]');
  await expect.poll(() => points(cpu), { timeout: 10_000 }).toBeGreaterThan(0);
  // The open page watches the device: the server asks it to report every second.
  await expect.poll(async () => (await (await request.get("/metrics")).text()).match(/^tether_watched_devices (\d+)$/m)?.[1], { timeout: 5_000 }).not.toBe("0");
  const before = await readings(cpu);
  await expect.poll(() => readings(cpu), { timeout: 8_000 }).toBeGreaterThanOrEqual(before + 4);
  // Units on the latest value and on the axis, and times on the time axis.
  await expect(cpu.getByTestId("chart-latest")).toHaveText(/^\d+(\.\d+)? %$/);
  await expect(page.locator('[data-metric="signal"] .axis.y .unit')).toHaveText("dBm");
  await expect(cpu.locator(".axis.x text").first()).toHaveText(/^\d\d:\d\d$/);
  await expect(cpu.locator("path.line")).toHaveAttribute("d", /^M[\d.]+,[\d.]+/);

  // Pointing at the chart reads out the nearest point.
  const box = await cpu.locator("svg").boundingBox();
  await page.mouse.move(box!.x + box!.width - 20, box!.y + box!.height / 2);
  await expect(cpu.getByTestId("chart-readout")).toContainText("%");

  // Another range: a week, downsampled by the server, still shows what is stored.
  await page.getByRole("button", { name: "7 d" }).click();
  await expect(page.getByRole("button", { name: "7 d" })).toHaveAttribute("aria-pressed", "true");
  await expect(cpu.locator(".axis.x text").first()).toHaveText(/^[A-Z][a-z]{2} \d{1,2}$/);
  await expect.poll(() => points(cpu), { timeout: 10_000 }).toBeGreaterThan(0);
});

test("the fleet list shows each device's key reading with its unit", async ({ page, startAgent }) => {
  const thermostat = await startAgent("thermostat", { telemetryMs: 500 });
  const fleet = new FleetPage(page);
  await fleet.goto();
  await fleet.waitForLive();
  await expect(fleet.row(thermostat.id).getByTestId("key-reading")).toHaveText(/^temperature -?\d+\.\d °C$/, { timeout: 15_000 });
});

test.describe("without JavaScript", () => {
  test.use({ javaScriptEnabled: false });

  test("the server renders the charts from stored readings", async ({ page, request, startAgent }) => {
    const sw = await startAgent("switch", { telemetryMs: 200 });
    await expect
      .poll(
        async () => {
          const response = await request.get(`/api/v1/devices/${sw.id}/telemetry?metric=power`);
          if (response.status() !== 200) return 0;
          return (await response.json()).series[0].points.length;
        },
        { timeout: 15_000 },
      )
      .toBeGreaterThan(0);
    await page.goto(`/devices/${sw.id}`);
    const power = page.locator('[data-testid="chart"][data-metric="power"]');
    await expect(power).toBeVisible();
    expect(await points(power)).toBeGreaterThan(0);
    await expect(power.getByTestId("chart-latest")).toHaveText(/ W$/);
  });
});
