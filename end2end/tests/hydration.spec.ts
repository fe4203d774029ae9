import { expect, test } from "@playwright/test";
import { FleetPage } from "./fixtures/fleet-page";

test("once hydrated, the connect-a-device help opens and closes in place", async ({ page }) => {
  const errors: string[] = [];
  page.on("pageerror", (error) => errors.push(error.message));
  const fleet = new FleetPage(page);
  await fleet.goto();
  await fleet.waitForHydration();

  await expect(fleet.help).toBeHidden();
  await expect(fleet.helpToggle).toHaveAttribute("aria-expanded", "false");

  await fleet.helpToggle.click();
  await expect(fleet.help).toBeVisible();
  await expect(fleet.help).toContainText("tether-agent");
  await expect(fleet.helpToggle).toHaveText("Hide how to connect a device");
  await expect(fleet.helpToggle).toHaveAttribute("aria-expanded", "true");

  await fleet.helpToggle.click();
  await expect(fleet.help).toBeHidden();
  await expect(fleet.helpToggle).toHaveText("Show how to connect a device");
  expect(errors).toEqual([]);
});
