import { spawn } from "node:child_process";
import path from "node:path";
import { expect, provisionDevice, test } from "./fixtures/agents";
import { CredentialsPage } from "./fixtures/credentials-page";

// A device set up wrong (here the Python example device with a heartbeat faster than
// servers take) never comes online; the admin sees why beside its credential, instead of
// a device that silently never connected.
test("a device whose hello is refused shows why on the credentials page", async ({ page, request }) => {
  const id = `py-wrong-${Date.now().toString(36)}`;
  const { amqpUrl, secret } = await provisionDevice(request, id);
  const device = spawn(
    process.env.TETHER_PYTHON ?? "/usr/bin/python3",
    [path.resolve(__dirname, "../../examples/python-device/device.py"), "--amqp-url", amqpUrl, "--device-id", id, "--heartbeat-ms", "50"],
    { env: { ...process.env, TETHER_DEVICE_SECRET: secret }, stdio: "ignore" },
  );
  try {
    const credentials = new CredentialsPage(page);
    // The list is read when the page loads: look again until the hello has arrived.
    await expect(async () => {
      await credentials.goto();
      await expect(credentials.row(id).getByTestId("hello-refused")).toContainText("heartbeat_ms 50 is outside 100–600000", { timeout: 1_000 });
    }).toPass({ timeout: 20_000 });
    await expect(credentials.row(id).getByTestId("presence")).toHaveText("never connected");
    expect(device.exitCode, "the device runs on, trying").toBeNull();
  } finally {
    device.kill("SIGKILL");
  }
});
