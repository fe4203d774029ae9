import { expect, test } from "./fixtures/agents";

// A page of another site, opened by the operator in the same browser, tries to cancel
// a command through the operator's browser and to listen on the live channel.
test("a hostile page can neither cancel a command nor open the live channel", async ({ page, startAgent, baseURL }) => {
  const gateway = await startAgent("gateway");
  await expect.poll(async () => (await page.request.get(`/api/v1/devices/${gateway.id}`)).status(), { timeout: 15_000 }).toBe(200);
  const sent = await page.request.post(`/api/v1/devices/${gateway.id}/commands`, {
    data: { name: "echo", args: { delay_ms: 20_000 }, timeout_ms: 30_000 },
  });
  expect(sent.status()).toBe(202);
  const command = await sent.json();
  const tether = new URL(baseURL!);

  await page.route("http://evil.test/**", (route) =>
    route.fulfill({
      contentType: "text/html",
      body: `<!doctype html><title>Free prizes</title>
        <form id="f" method="post" action="${tether.origin}/api/cancel_command">
          <input name="id" value="${command.id}">
        </form>`,
    }),
  );
  await page.goto("http://evil.test/");
  const live = await page.evaluate(
    (url) =>
      new Promise<string>((resolve) => {
        const socket = new WebSocket(url);
        socket.onopen = () => resolve("open");
        socket.onerror = () => resolve("refused");
        setTimeout(() => resolve("no answer"), 5_000);
      }),
    `ws://${tether.host}/api/v1/live`,
  );
  expect(live).toBe("refused");

  await page.evaluate(() => (document.getElementById("f") as HTMLFormElement).submit());
  await page.waitForURL(`${tether.origin}/api/cancel_command`);
  await expect(page.locator("body")).toContainText("cross_site");
  const after = await (await page.request.get(`/api/v1/commands/${command.id}`)).json();
  expect(after.status).toBe("delivered");
});
