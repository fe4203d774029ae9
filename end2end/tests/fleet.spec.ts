import { expect, test } from "./fixtures/agents";
import { FleetPage } from "./fixtures/fleet-page";

// The fleet list at any size: searched, filtered, sorted and paged by its address, so a
// view can be reloaded and shared, with the counts above it.

test("search, filter by status and kind, sort and page", async ({ page, startAgent }) => {
  const thermostat = await startAgent("thermostat");
  const sw = await startAgent("switch");
  for (const agent of [thermostat, sw]) {
    await expect.poll(async () => (await page.request.get(`/api/v1/devices/${agent.id}`)).status(), { timeout: 15_000 }).toBe(200);
  }
  const fleet = new FleetPage(page);
  await fleet.goto("");
  await fleet.waitForHydration();
  await fleet.waitForLive();
  const online = Number(await page.getByTestId("count-online").textContent());
  expect(online).toBeGreaterThanOrEqual(2);

  // The kinds offered follow the fleet live: a switch that connects counts at once.
  const switches = async () => {
    const label = await page.getByTestId("fleet-kind").locator('option[value="switch"]').textContent();
    return Number(label?.match(/\((\d+)\)$/)?.[1] ?? 0);
  };
  const before = await switches();
  expect(before).toBeGreaterThanOrEqual(1);
  await startAgent("switch");
  await expect.poll(switches, { timeout: 15_000 }).toBeGreaterThan(before);

  // A search: only that device, and the address says so.
  await page.getByTestId("fleet-search").fill(thermostat.id.toUpperCase());
  await page.getByTestId("fleet-search").press("Enter");
  await expect(page).toHaveURL(new RegExp(`\\?search=${thermostat.id.toUpperCase()}$`));
  await expect(page.getByTestId("device-row")).toHaveCount(1);
  await expect(fleet.row(thermostat.id)).toBeVisible();
  await expect(page.getByTestId("fleet-range")).toHaveText("Showing 1–1 of 1");

  // Offline only: it is online, so nothing matches; the search stays.
  await page.getByTestId("fleet-status").selectOption("offline");
  await expect(page).toHaveURL(/status=offline/);
  await expect(page).toHaveURL(/search=/);
  await expect(page.getByTestId("fleet-range")).toHaveText("No devices match.");
  await expect(page.getByTestId("device-row")).toHaveCount(0);

  // By kind, among the online: every row a switch.
  await page.goto("/?status=online&kind=switch");
  await fleet.waitForLive();
  await expect(fleet.row(sw.id)).toBeVisible();
  for (const kind of await page.getByTestId("device-row").locator('td[data-label="Kind"]').allTextContents()) {
    expect(kind).toBe("switch");
  }

  // Sorting by a column, then the other way.
  await page.goto("/?status=online");
  await fleet.waitForHydration();
  await page.getByTestId("sort-kind").click();
  await expect(page).toHaveURL(/sort=kind&order=asc/);
  await expect(page.getByRole("columnheader", { name: /Kind/ })).toHaveAttribute("aria-sort", "ascending");
  const ascending = await page.getByTestId("device-row").locator('td[data-label="Kind"]').allTextContents();
  expect(ascending).toEqual([...ascending].sort());
  await page.getByTestId("sort-kind").click();
  await expect(page).toHaveURL(/sort=kind&order=desc/);
  await expect(page.getByRole("columnheader", { name: /Kind/ })).toHaveAttribute("aria-sort", "descending");
  const descending = await page.getByTestId("device-row").locator('td[data-label="Kind"]').allTextContents();
  expect(descending).toEqual([...descending].sort().reverse());

  // A page at a time.
  await page.goto("/?status=online&limit=1");
  await fleet.waitForLive();
  await expect(page.getByTestId("device-row")).toHaveCount(1);
  const first = await page.getByTestId("device-row").getAttribute("data-device");
  await page.getByTestId("fleet-next").click();
  await expect(page).toHaveURL(/offset=1/);
  await expect(page.getByTestId("fleet-range")).toHaveText(/^Showing 2–2 of \d+$/);
  await expect(page.getByTestId("device-row")).toHaveCount(1);
  expect(await page.getByTestId("device-row").getAttribute("data-device")).not.toBe(first);
  await page.getByTestId("fleet-previous").click();
  await expect(page.getByTestId("device-row")).toHaveAttribute("data-device", first!);
});

test.describe("without JavaScript", () => {
  test.use({ javaScriptEnabled: false });

  test("the filter form and the pager work as plain HTML", async ({ page, request, startAgent }) => {
    const gateway = await startAgent("gateway");
    await expect.poll(async () => (await request.get(`/api/v1/devices/${gateway.id}`)).status(), { timeout: 15_000 }).toBe(200);
    await page.goto("/");
    await page.getByTestId("fleet-search").fill(gateway.id);
    await page.getByRole("button", { name: "Filter" }).click();
    await expect(page).toHaveURL(new RegExp(`search=${gateway.id}`));
    await expect(page.getByTestId("device-row")).toHaveCount(1);
    await expect(page.getByTestId("fleet-range")).toHaveText("Showing 1–1 of 1");
    await page.goto("/?limit=1");
    await page.getByTestId("fleet-next").click();
    await expect(page).toHaveURL(/offset=1/);
    await expect(page.getByTestId("fleet-range")).toHaveText(/^Showing 2–2 of \d+$/);
  });
});
