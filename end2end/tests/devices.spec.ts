import { expect, test } from "./fixtures/agents";
import { FleetPage } from "./fixtures/fleet-page";

test("a device that connects appears online without a reload", async ({ page, startAgent }) => {
  const fleet = new FleetPage(page);
  await fleet.goto();
  await fleet.waitForLive();

  const thermostat = await startAgent("thermostat");
  const row = fleet.row(thermostat.id);
  await expect(row.getByTestId("presence")).toHaveText("online", { timeout: 15_000 });
  await expect(row).toContainText("thermostat");
  await expect(row.getByRole("link", { name: thermostat.id })).toHaveAttribute("href", `/devices/${thermostat.id}`);
});

test("killing an agent shows its device offline within the heartbeat window", async ({ page, startAgent }) => {
  const fleet = new FleetPage(page);
  const victim = await startAgent("switch", { heartbeatMs: 500 });
  await fleet.goto();
  await fleet.waitForLive();
  await expect(fleet.row(victim.id).getByTestId("presence")).toHaveText("online", { timeout: 15_000 });

  victim.kill();
  // Three missed 500 ms heartbeats, plus the server's 250 ms sweep and some slack.
  await expect(fleet.row(victim.id).getByTestId("presence")).toHaveText("offline", { timeout: 4_000 });
});

test.describe("without JavaScript", () => {
  test.use({ javaScriptEnabled: false });

  test("the server renders the devices it knows", async ({ page, request, startAgent }) => {
    const sw = await startAgent("switch");
    await expect
      .poll(async () => (await request.get(`/api/v1/devices/${sw.id}`)).status(), { timeout: 15_000 })
      .toBe(200);
    const fleet = new FleetPage(page);
    await fleet.goto();
    await expect(fleet.row(sw.id).getByTestId("presence")).toHaveText("online");
  });
});
