import { defineConfig } from "@playwright/test";
import os from "node:os";
import path from "node:path";

// Where global-setup.ts saves the logged-in admin's session: every test starts logged in
// as that admin unless it says otherwise.
process.env.TETHER_E2E_STATE ??= path.join(os.tmpdir(), `tether-e2e-admin-${process.pid}.json`);

// Debian's Chromium: Playwright's own browser download cannot work here (no network
// but the package registries), so tests drive the system browser.
const chromium = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

export default defineConfig({
  testDir: "./tests",
  // Starts the release server on a free port and sets TETHER_BASE_URL (unless it is set).
  globalSetup: "./global-setup.ts",
  timeout: 30_000,
  expect: { timeout: 5_000 },
  fullyParallel: true,
  forbidOnly: !!process.env.CI,
  retries: process.env.CI ? 1 : 0,
  workers: process.env.CI ? 2 : undefined,
  reporter: [
    ["list"],
    ["json", { outputFile: "test-results/results.json" }],
  ],
  use: {
    baseURL: process.env.TETHER_BASE_URL,
    storageState: process.env.TETHER_E2E_STATE,
    trace: "on-first-retry",
    launchOptions: {
      executablePath: chromium,
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
      ],
    },
  },
  projects: [{ name: "chromium", use: { browserName: "chromium" } }],
});
