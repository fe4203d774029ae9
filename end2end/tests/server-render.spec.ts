import { expect, test } from "@playwright/test";
import { FleetPage } from "./fixtures/fleet-page";

test("the server's HTML already holds the page", async ({ request }) => {
  const response = await request.get("/");
  expect(response.status()).toBe(200);
  const html = await response.text();
  expect(html).toContain("<h1>Fleet</h1>");
  // The bundle's names carry their content's hash (cargo-leptos hash-files).
  expect(html).toMatch(/\/pkg\/tether\.[A-Za-z0-9_-]{22}\.js/);
  expect(html).toMatch(/\/pkg\/tether\.[A-Za-z0-9_-]{22}\.wasm/);
  expect(html).toMatch(/\/pkg\/tether\.[A-Za-z0-9_-]{22}\.css/);
});

test("the bundle's hashed files are cached for a year and sent compressed", async ({ request }) => {
  const html = await (await request.get("/")).text();
  for (const ext of ["js", "wasm", "css"]) {
    const path = html.match(new RegExp(`/pkg/tether\\.[A-Za-z0-9_-]{22}\\.${ext}`))?.[0];
    expect(path, `the page links to a hashed .${ext}`).toBeTruthy();
    const response = await request.get(path!, { headers: { "accept-encoding": "br, gzip" } });
    expect(response.status()).toBe(200);
    expect(response.headers()["cache-control"]).toBe("public, max-age=31536000, immutable");
    expect(response.headers()["vary"]).toBe("accept-encoding");
    // Precompressed at start, or compressed on the fly until then.
    expect(["br", "gzip"]).toContain(response.headers()["content-encoding"]);
  }
  const page = await request.get("/", { headers: { "accept-encoding": "gzip" } });
  expect(page.headers()["cache-control"]).toContain("no-cache");
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
