import { expect, test } from "./fixtures/agents";
import { anonymousPage, createUser, logIn, setGroups } from "./fixtures/accounts";
import { DevicePage } from "./fixtures/device-page";

test("a person logs in with the form and out again", async ({ browser, request }) => {
  const user = await createUser(request, "operator");
  const page = await anonymousPage(browser);
  await page.goto("/");
  await expect(page).toHaveURL(/\/login\?next=%2F$/);
  await page.getByLabel("Name").fill(user.name);
  await page.getByLabel("Password").fill("not the password");
  await page.getByRole("button", { name: "Log in" }).click();
  await expect(page.getByRole("alert")).toHaveText("Wrong name or password.");

  await page.getByLabel("Name").fill(user.name);
  await page.getByLabel("Password").fill(user.password);
  await page.getByRole("button", { name: "Log in" }).click();
  await expect(page).toHaveURL(/\/$/);
  await expect(page.getByTestId("me")).toHaveText(`${user.name} · operator`);
  await expect(page.getByRole("heading", { name: "Fleet", level: 1 })).toBeVisible();

  await page.getByRole("button", { name: "Log out" }).click();
  await expect(page.getByText("You are logged out.")).toBeVisible();
  await page.goto("/");
  await expect(page).toHaveURL(/\/login/);
  await page.context().close();
});

test("a viewer sees the device but has no command form, and the API refuses them", async ({ browser, request, startAgent }) => {
  const gateway = await startAgent("gateway");
  await expect.poll(async () => (await request.get(`/api/v1/devices/${gateway.id}`)).status(), { timeout: 15_000 }).toBe(200);
  const group = `site-${gateway.id}`;
  await setGroups(request, gateway.id, [group]);
  const viewer = await createUser(request, "viewer", [group]);
  const page = await anonymousPage(browser);
  await logIn(page, viewer.name, viewer.password);
  const device = new DevicePage(page, gateway.id);
  await device.goto();
  await device.waitForLive();
  await expect(page.getByTestId("no-commands")).toBeVisible();
  await expect(page.getByRole("button", { name: /send|run/i })).toHaveCount(0);
  const refused = await page.request.post(`/api/v1/devices/${gateway.id}/commands`, { data: { name: "reboot" } });
  expect(refused.status()).toBe(403);
  expect((await refused.json()).code).toBe("forbidden");
  await page.context().close();
});

test("an operator sends and cancels, and the log says who; others' devices stay hidden", async ({ browser, request, startAgent }) => {
  const [mine, theirs] = await Promise.all([startAgent("gateway"), startAgent("switch")]);
  for (const agent of [mine, theirs]) {
    await expect.poll(async () => (await request.get(`/api/v1/devices/${agent.id}`)).status(), { timeout: 15_000 }).toBe(200);
  }
  const group = `site-${mine.id}`;
  await setGroups(request, mine.id, [group]);
  await setGroups(request, theirs.id, [`other-${theirs.id}`]);
  const operator = await createUser(request, "operator", [group]);
  const page = await anonymousPage(browser);
  await logIn(page, operator.name, operator.password);
  await expect(page.locator(`[data-testid="device-row"][data-device="${mine.id}"]`)).toBeVisible({ timeout: 10_000 });
  await expect(page.locator(`[data-testid="device-row"][data-device="${theirs.id}"]`)).toHaveCount(0);
  await page.goto(`/devices/${theirs.id}`);
  await expect(page.getByRole("heading", { name: "Unknown device" })).toBeVisible();

  const device = new DevicePage(page, mine.id);
  await device.goto();
  await device.waitForLive();
  await device.send("echo", { message: "slow", delay_ms: "20000" });
  const entry = device.latestCommand();
  await expect(entry).toHaveAttribute("data-status", "delivered", { timeout: 10_000 });
  await expect(entry.getByTestId("issued-by")).toHaveText(`by ${operator.name}`);
  await entry.getByRole("button", { name: "Cancel" }).click();
  await expect(entry).toHaveAttribute("data-status", "cancelled", { timeout: 10_000 });
  await page.context().close();

  // The admin's audit page shows both, with the operator's name.
  const audit = await request.get(`/api/v1/audit?actor=${operator.name}`);
  const actions = (await audit.json()).map((e: { action: string }) => e.action);
  expect(actions).toEqual(["command_cancelled", "command_sent", "login"]);
});

test("an admin creates a user and a token in the UI, and the audit page lists it all", async ({ page }) => {
  const name = `e2e-made-${Date.now().toString(36)}`;
  await page.goto("/admin/users");
  const form = page.getByTestId("new-user");
  await expect(form).toBeVisible();
  await page.waitForFunction(() => document.querySelector("[data-testid=me]") !== null);
  await expect(async () => {
    await form.getByLabel("Name").fill(name);
    await form.getByLabel(/First password/).fill("a first password");
    await form.getByRole("combobox").selectOption("operator");
    await form.getByLabel(/Device groups/).fill("site-x, site-y");
    await form.getByRole("button", { name: "Create user" }).click();
    await expect(page.getByText(`Created ${name} (operator).`)).toBeVisible({ timeout: 2_000 });
  }).toPass({ timeout: 15_000 });
  await expect(page.locator(`[data-user="${name}"]`)).toBeVisible();

  await page.goto("/account");
  const tokenName = `ci-${Date.now().toString(36)}`;
  await expect(async () => {
    await page.getByRole("textbox", { name: "Name" }).fill(tokenName);
    await page.getByRole("button", { name: "Create token" }).click();
    await expect(page.getByTestId("token-secret")).toBeVisible({ timeout: 2_000 });
  }).toPass({ timeout: 15_000 });
  const secret = (await page.getByTestId("token-secret").textContent())!.trim();
  const me = await page.request.get("/api/v1/me", { headers: { authorization: `Bearer ${secret}` } });
  expect(me.status()).toBe(200);
  const row = page.locator("tr", { hasText: tokenName });
  await row.getByRole("button", { name: "Revoke" }).click();
  await expect(page.locator(`tr[data-revoked="true"]`, { hasText: tokenName })).toBeVisible();
  const revoked = await page.request.get("/api/v1/me", { headers: { authorization: `Bearer ${secret}` } });
  expect(revoked.status()).toBe(401);

  await page.goto("/admin/audit");
  await expect(page.getByTestId("audit-check")).toHaveAttribute("data-intact", "true");
  const admin = process.env.TETHER_E2E_ADMIN!;
  await expect(async () => {
    await page.getByLabel("Who").fill(admin);
    await page.getByLabel("Action").fill("user_created");
    await page.getByLabel("Since").selectOption("1");
    await page.getByRole("button", { name: "Filter" }).click();
    await expect(page.locator(`[data-testid="audit"] tr[data-action="user_created"]`, { hasText: name })).toBeVisible({ timeout: 2_000 });
  }).toPass({ timeout: 15_000 });
  for (const action of ["token_created", "token_revoked"]) {
    await page.getByLabel("Action").fill(action);
    await page.getByRole("button", { name: "Filter" }).click();
    await expect(page.locator(`[data-testid="audit"] tr[data-action="${action}"][data-actor="${admin}"]`).first()).toBeVisible();
  }
});
