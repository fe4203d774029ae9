import { defineConfig } from "@playwright/test";

// The specs that need no server nor browser (contracts.spec.ts: the AsyncAPI document,
// read by @asyncapi/parser), alone: `npx playwright test -c playwright.contracts.config.ts`.
// The full suite (playwright.config.ts, scripts/test.sh) runs them too.
export default defineConfig({
  testDir: "./tests",
  testMatch: "contracts.spec.ts",
  timeout: 30_000,
  reporter: [["list"]],
});
