import fs from "node:fs";
import { expect, test } from "./fixtures/agents";
import { DevicePage } from "./fixtures/device-page";

// A real device (the agent from a configuration file) on its page: its log read, followed
// live, searched and downloaded; a diagnostics report collected, listed and downloaded.

async function openDevice(page: import("@playwright/test").Page, id: string): Promise<DevicePage> {
  const device = new DevicePage(page, id);
  await expect.poll(async () => (await page.request.get(`/api/v1/devices/${id}`)).status(), { timeout: 15_000 }).toBe(200);
  await device.goto();
  await device.waitForLive();
  await expect(device.presence).toHaveText("online", { timeout: 15_000 });
  return device;
}

test("a device's log is shown, followed live, searched and downloaded", async ({ page, startRealAgent }) => {
  const real = await startRealAgent(["boot ok", "disk warning: 91% used", "service started"]);
  await openDevice(page, real.id);
  const viewer = page.getByTestId("log-viewer");
  const output = viewer.getByTestId("log-output");
  // The built-in commands have their own cards, not generic forms.
  await expect(page.getByRole("form", { name: "logs", exact: true })).toHaveCount(0);

  // The last lines.
  await viewer.getByLabel("Last lines").fill("2");
  await viewer.getByRole("button", { name: "Show" }).click();
  await expect(viewer.getByTestId("log-status")).toHaveAttribute("data-status", "succeeded", { timeout: 10_000 });
  await expect(output).toHaveText("disk warning: 91% used\nservice started\n");
  await expect(viewer.getByTestId("log-count")).toHaveText("2 lines");

  // Followed: lines written on the device appear while it follows.
  await viewer.getByLabel("Follow new lines").check();
  await viewer.getByLabel("for (s)").fill("30");
  await viewer.getByRole("button", { name: "Follow" }).click();
  await expect(viewer.getByTestId("log-status")).toHaveAttribute("data-status", "progress", { timeout: 10_000 });
  await expect(output).toContainText("service started");
  real.append(["sensor 4 error: timeout", "sensor 4 recovered"]);
  await expect(output).toContainText("sensor 4 error: timeout\nsensor 4 recovered", { timeout: 10_000 });
  real.append(["Error again on sensor 7"]);
  await expect(output).toContainText("Error again on sensor 7", { timeout: 10_000 });

  // Searched in the browser, ignoring case, matches marked.
  await viewer.getByLabel("Search the lines shown").fill("error");
  await expect(viewer.getByTestId("log-count")).toHaveText("2 of 5 lines match");
  await expect(output.locator("mark")).toHaveText(["error", "Error"]);
  await expect(output).not.toContainText("recovered");

  // Downloaded: every line, not only the matches.
  const download = page.waitForEvent("download");
  await viewer.getByRole("button", { name: "Download" }).click();
  const file = await download;
  expect(file.suggestedFilename()).toBe(`${real.id}-app.log`);
  const text = fs.readFileSync(await file.path(), "utf8");
  expect(text).toBe("disk warning: 91% used\nservice started\nsensor 4 error: timeout\nsensor 4 recovered\nError again on sensor 7\n");

  // Stopped: the follow ends as cancelled, and later lines do not come.
  await viewer.getByRole("button", { name: "Stop" }).click();
  await expect(viewer.getByTestId("log-status")).toHaveAttribute("data-status", "cancelled", { timeout: 10_000 });
  real.append(["after the stop"]);
  await viewer.getByLabel("Search the lines shown").fill("");
  await page.waitForTimeout(1500);
  await expect(output).not.toContainText("after the stop");
});

test("a diagnostics report is collected, kept by the server and downloaded", async ({ page, startRealAgent }) => {
  const real = await startRealAgent(["hello"]);
  await openDevice(page, real.id);
  const card = page.getByTestId("diagnostics");
  await expect(card.getByTestId("no-reports")).toBeVisible();

  await card.getByRole("button", { name: "Collect a report" }).click();
  const report = card.getByTestId("report");
  await expect(report).toHaveCount(1, { timeout: 15_000 });
  await expect(report).toContainText("kB");

  // Kept by the server: there after a reload.
  await page.reload();
  await expect(page.getByTestId("diagnostics").getByTestId("report")).toHaveCount(1);

  const download = page.waitForEvent("download");
  await page.getByTestId("diagnostics").getByRole("link", { name: "Download" }).click();
  const file = await download;
  expect(file.suggestedFilename()).toMatch(new RegExp(`^diagnostics-${real.id}-\\d{8}T\\d{6}Z\\.json$`));
  const body = JSON.parse(fs.readFileSync(await file.path(), "utf8"));
  expect(body.device_id).toBe(real.id);
  expect(body.report.kernel.arch).toBe("x86_64");
  expect(body.report.config.secret).toBe("***");
  expect(JSON.stringify(body)).not.toContain(real.secret);
});
