import { randomBytes } from "node:crypto";
import { expect, provisionDevice, test } from "./fixtures/agents";
import { anonymousPage, createUser, logIn } from "./fixtures/accounts";
import { brokerAccepts, CredentialsPage } from "./fixtures/credentials-page";
import { DevicePage } from "./fixtures/device-page";
import { FleetPage } from "./fixtures/fleet-page";

const newId = (what: string) => `e2e-${what}-${randomBytes(4).toString("hex")}`;

test("an admin provisions a device on the page and sees its secret once", async ({ page, request, context }) => {
  await context.grantPermissions(["clipboard-read", "clipboard-write"]);
  const credentials = new CredentialsPage(page);
  await credentials.goto();
  const id = newId("made");
  await credentials.provision(id);

  const { url, secret, command } = await credentials.shown();
  expect(secret).toMatch(/^[0-9a-f]{48}$/);
  expect(url).toMatch(/^amqps?:\/\//);
  expect(url, "the URL carries no credential").not.toContain("@");
  expect(command).toBe(`TETHER_AMQP_URL='${url}' TETHER_DEVICE_SECRET='${secret}' tether-agent --device-id ${id}`);
  await expect(credentials.credential).toContainText("it will not be shown again");
  expect(await brokerAccepts(request, id, secret)).toBe(true);

  await credentials.credential.getByRole("button", { name: "Copy command" }).click();
  await expect(page.getByTestId("copied")).toHaveText("Copied.");
  expect(await page.evaluate(() => navigator.clipboard.readText())).toBe(command);

  await expect(credentials.row(id)).toBeVisible();
  await expect(credentials.row(id).getByTestId("presence")).toHaveText("never connected");

  // Never again: not after a reload, not in the list, not in the API.
  await page.reload();
  await expect(credentials.row(id)).toBeVisible();
  await expect(credentials.secret).toHaveCount(0);
  expect(await page.content()).not.toContain(secret);
  expect(await (await request.get("/api/v1/provisioned")).text()).not.toContain(secret);
});

test("rotating asks first, then shows a new secret and retires the old one", async ({ page, request }) => {
  const id = newId("rotated");
  const first = await provisionDevice(request, id);
  const credentials = new CredentialsPage(page);
  await credentials.goto();
  await expect(credentials.row(id).locator("td").nth(2)).toHaveText("never");

  // Cancelled: nothing changes.
  await credentials.row(id).getByRole("button", { name: "Rotate secret" }).click();
  await expect(credentials.row(id)).toContainText("The old one stops working");
  await credentials.row(id).getByRole("button", { name: "Cancel" }).click();
  await expect(credentials.secret).toHaveCount(0);
  expect(await brokerAccepts(request, id, first.secret)).toBe(true);

  await credentials.confirm(id, "Rotate secret", "Yes, rotate");
  await expect(credentials.credential).toHaveAttribute("data-device", id);
  const { secret } = await credentials.shown();
  expect(secret).toMatch(/^[0-9a-f]{48}$/);
  expect(secret).not.toBe(first.secret);
  await expect(credentials.row(id).locator("td").nth(2)).not.toHaveText("never");
  expect(await brokerAccepts(request, id, secret)).toBe(true);
  expect(await brokerAccepts(request, id, first.secret)).toBe(false);
});

test("revoking asks first, then the device is gone from the list", async ({ page, request }) => {
  const id = newId("revoked");
  const { secret } = await provisionDevice(request, id);
  const credentials = new CredentialsPage(page);
  await credentials.goto();

  await credentials.row(id).getByRole("button", { name: "Revoke" }).click();
  await expect(credentials.row(id)).toContainText(`Revoke ${id}?`);
  await credentials.row(id).getByRole("button", { name: "Cancel" }).click();
  await expect(credentials.row(id).getByRole("button", { name: "Revoke" })).toBeVisible();

  await credentials.confirm(id, "Revoke", "Yes, revoke");
  await expect(page.getByText(`Revoked ${id}`)).toBeVisible();
  await expect(credentials.row(id)).toHaveCount(0);
  expect(await brokerAccepts(request, id, secret)).toBe(false);
  const audit = await request.get(`/api/v1/audit?target=${id}`);
  expect((await audit.json()).map((e: { action: string }) => e.action)).toEqual(["device_revoked", "device_provisioned"]);
});

test("an invalid or taken id is refused with a clear message", async ({ page, request }) => {
  const credentials = new CredentialsPage(page);
  await credentials.goto();

  await credentials.idInput.fill("two words");
  await expect(credentials.idProblem).toHaveText(/1 to 64 ASCII letters, digits, '-' or '_'/);
  await expect(credentials.idInput).toHaveAttribute("aria-invalid", "true");
  await credentials.form.getByRole("button", { name: "Provision" }).click();
  await expect(credentials.error).toHaveAttribute("data-code", "invalid_input");
  await expect(credentials.credential).toHaveCount(0);
  await credentials.idInput.fill("fine-now");
  await expect(credentials.idProblem).toBeEmpty();

  const taken = newId("taken");
  await provisionDevice(request, taken);
  await credentials.idInput.fill(taken);
  await credentials.form.getByRole("button", { name: "Provision" }).click();
  await expect(credentials.error).toHaveAttribute("data-code", "already_exists");
  await expect(credentials.error).toContainText(`"${taken}" is already provisioned`);
  await expect(credentials.credential).toHaveCount(0);
});

test("only admins see the page and its link", async ({ browser, page, request }) => {
  await page.goto("/");
  await expect(page.getByRole("navigation", { name: "Account" }).getByRole("link", { name: "Devices" })).toHaveAttribute("href", "/admin/devices");

  const operator = await createUser(request, "operator");
  const theirs = await anonymousPage(browser);
  await logIn(theirs, operator.name, operator.password);
  await expect(theirs.getByRole("navigation", { name: "Account" }).getByRole("link", { name: "Devices" })).toHaveCount(0);
  await theirs.goto("/admin/devices");
  await expect(theirs.getByRole("heading", { name: "Not for your role" })).toBeVisible();
  await expect(theirs.getByTestId("provision")).toHaveCount(0);
  const listed = await theirs.request.get("/api/v1/provisioned");
  expect(listed.status()).toBe(403);
  await theirs.context().close();
});

// Needs the agent's per-device login (TETHER_DEVICE_SECRET) and the server's embedded
// broker checking devices against its database, and closing a revoked device's
// connection at once.
test("a device provisioned on the page connects with what it showed, obeys, and is cut off when revoked", async ({ page, runAgent }) => {
  test.setTimeout(60_000);
  const credentials = new CredentialsPage(page);
  await credentials.goto();
  const id = newId("field");
  await credentials.provision(id);
  const { url, secret } = await credentials.shown();
  runAgent(id, { amqpUrl: url, secret }, "switch");

  const fleet = new FleetPage(page);
  await fleet.goto();
  await fleet.waitForLive();
  await expect(fleet.row(id).getByTestId("presence")).toHaveText("online", { timeout: 15_000 });

  const device = new DevicePage(page, id);
  await device.goto();
  await device.waitForLive();
  // "on" rather than "toggle": sending it again (if the first click came before the
  // form was ready) changes nothing.
  await expect(async () => {
    await device.send("on");
    await expect(device.latestCommand()).toBeVisible({ timeout: 2_000 });
  }).toPass({ timeout: 10_000 });
  await expect(device.latestCommand()).toHaveAttribute("data-status", "succeeded", { timeout: 10_000 });
  await expect(device.latestCommand().getByTestId("result")).toContainText('"on": true');

  await credentials.goto();
  await expect(credentials.row(id).getByTestId("presence")).toHaveText("online");
  await credentials.confirm(id, "Revoke", "Yes, revoke");
  await expect(credentials.row(id)).toHaveCount(0);

  // The server throws it off the broker at once: offline (or gone) within seconds, and
  // it stays so, whatever the agent tries next.
  const presence = async () => {
    const response = await page.request.get(`/api/v1/devices/${id}`);
    if (response.status() === 404) return "gone";
    return (await response.json()).online ? "online" : "offline";
  };
  await expect.poll(presence, { timeout: 10_000 }).not.toBe("online");
  await fleet.goto();
  await fleet.waitForLive();
  await expect(fleet.row(id).getByTestId("presence").filter({ hasText: "online" })).toHaveCount(0);
  await page.waitForTimeout(3_000);
  expect(await presence()).not.toBe("online");
});
