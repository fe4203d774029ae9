import { expect, test } from "@playwright/test";
import { FleetPage } from "./fixtures/fleet-page";

test("the server's HTML already holds the page", async ({ request }) => {
  const response = await request.get("/");
  expect(response.status()).toBe(200);
  const html = await response.text();
  expect(html).toContain("<h1>Fleet</h1>");
  expect(html).toContain("/pkg/tether.js");
});

test.describe("without JavaScript", () => {
  test.use({ javaScriptEnabled: false });

  test("the page is readable and styled before any WASM runs", async ({ page }) => {
    const fleet = new FleetPage(page);
    await fleet.goto();
    await expect(page).toHaveTitle("Tether");
    await expect(fleet.heading).toBeVisible();
    await expect(page.getByTestId("connection")).toHaveText(/connecting/);
    await expect(fleet.helpToggle).toHaveText("Show how to connect a device");
    // Nothing hydrated: the browser-only effect never ran.
    await expect(page.getByTestId("fleet")).not.toHaveAttribute("data-hydrated", "true");
    // The stylesheet loaded: the brand bar is laid out as a flex row.
    await expect(page.locator(".topbar")).toHaveCSS("display", "flex");
  });
});
