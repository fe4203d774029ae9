import { spawn, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { APIRequestContext, TestInfo } from "@playwright/test";
import { anonymousPage, createUser, logIn } from "./fixtures/accounts";
import { agentBinary, expect, provisionDevice, test } from "./fixtures/agents";

// A software update from the browser: two real devices (`tether-agent --config`, with
// `[update] enabled = true`, each with a copy of the agent as its own executable) in a
// group; an artifact uploaded through the Updates page's form; rolled out to the group
// from its "Roll out" link; the job's page shows the devices' stages live, and the job
// completes with both devices back online as 2.0.0.
//
// A small file on a loopback link is downloaded, checked and installed in a few
// milliseconds, sooner than a page opens. So the devices are stopped (after announcing
// `update`) before the rollout, which waits for offline devices; they are started again
// once the job's page is open and following, and it sees every stage as it happens.
//
// The "new version" is a shell script that execs (a copy of) the real agent with
// `--firmware 2.0.0`: the agent replaces its executable with it and starts it with its
// own arguments; the new process (its pid in `<state_dir>/trial.healthy`) outlives the
// one the test started. Every process started here is ended at the end, even when the
// test fails: those the test spawned, those named in `trial.healthy`, and any other
// process running with one of this test's configuration files.

type Device = {
  id: string;
  dir: string;
  config: string;
  executable: string;
  state: string;
  log: string;
  env: NodeJS.ProcessEnv;
  // The processes the test started, the latest last.
  children: ChildProcess[];
};

const VERSION = "2.0.0";

// Provisions a device, writes its configuration and starts its agent from its own copy
// of the agent binary, its output in `<dir>/agent.log`.
async function startDevice(request: APIRequestContext, root: string, id: string, publicKey: string): Promise<Device> {
  const credential = await provisionDevice(request, id);
  const dir = path.join(root, id);
  fs.mkdirSync(path.join(dir, "state"), { recursive: true });
  const executable = path.join(dir, "tether-agent");
  fs.copyFileSync(agentBinary(), executable);
  fs.chmodSync(executable, 0o755);
  const config = path.join(dir, "agent.toml");
  fs.writeFileSync(
    config,
    [
      `device_id = "${id}"`,
      `kind = "updatable"`,
      `firmware = "1.0.0"`,
      `heartbeat_ms = 1000`,
      `telemetry_ms = 0`,
      ``,
      `[machine]`,
      `enabled = false`,
      ``,
      `[update]`,
      `enabled = true`,
      `public_key = "${publicKey}"`,
      `executable = "tether-agent"`,
      `state_dir = "state"`,
      `health_timeout_s = 60`,
      ``,
    ].join("\n"),
  );
  // Nothing of this environment's Tether settings, and not INVOCATION_ID: the agent
  // would think it runs under systemd and stop the new version after the handover.
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!key.startsWith("TETHER_") && key !== "INVOCATION_ID") env[key] = value;
  }
  Object.assign(env, { TETHER_AMQP_URL: credential.amqpUrl, TETHER_DEVICE_SECRET: credential.secret, RUST_LOG: "info", NO_COLOR: "1" });
  const device: Device = { id, dir, config, executable, state: path.join(dir, "state"), log: path.join(dir, "agent.log"), env, children: [] };
  startAgent(device);
  return device;
}

// Starts the device's agent (again): `<executable> --config <config>`.
function startAgent(device: Device): ChildProcess {
  const out = fs.openSync(device.log, "a");
  const child = spawn(device.executable, ["--config", device.config], { env: device.env, stdio: ["ignore", out, out] });
  fs.closeSync(out);
  device.children.push(child);
  return child;
}

function latest(device: Device): ChildProcess {
  return device.children[device.children.length - 1];
}

// What the server says of a device: online, firmware, and whether it announced `update`.
async function asServerSees(request: APIRequestContext, id: string): Promise<{ online: boolean; firmware: string; update: boolean } | null> {
  const response = await request.get(`/api/v1/devices/${id}`);
  if (!response.ok()) return null;
  const body: { online: boolean; firmware: string; capabilities: { commands: { name: string }[] } } = await response.json();
  return { online: body.online, firmware: body.firmware, update: body.capabilities.commands.some((c) => c.name === "update") };
}

// Every process of this device: the one spawned, the new version it handed over to, and
// anything else running with its configuration file.
function pidsOf(device: Device): Set<number> {
  const pids = new Set<number>();
  for (const child of device.children) {
    if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) pids.add(child.pid);
  }
  try {
    const pid = Number(fs.readFileSync(path.join(device.state, "trial.healthy"), "utf8").split("\n")[0]);
    if (Number.isInteger(pid) && pid > 0) pids.add(pid);
  } catch {
    // Never handed over.
  }
  for (const entry of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const argv = fs.readFileSync(`/proc/${entry}/cmdline`, "utf8").split("\0");
      if (argv.includes(device.config)) pids.add(Number(entry));
    } catch {
      // Gone meanwhile.
    }
  }
  return pids;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return !/^\d+ \(.*\) Z /.test(stat);
  } catch {
    return false;
  }
}

// Ends every process of these devices: politely, then for good.
async function stopAll(devices: Device[], testInfo: TestInfo): Promise<void> {
  for (let round = 0; round < 3; round++) {
    const pids = new Set(devices.flatMap((d) => [...pidsOf(d)]).filter(alive));
    if (pids.size === 0) break;
    for (const pid of pids) {
      try {
        process.kill(pid, round === 0 ? "SIGTERM" : "SIGKILL");
      } catch {
        // Already gone.
      }
    }
    const until = Date.now() + (round === 0 ? 5_000 : 2_000);
    while ([...pids].some(alive) && Date.now() < until) await new Promise((resolve) => setTimeout(resolve, 100));
  }
  for (const device of devices) {
    const left = [...pidsOf(device)].filter(alive);
    expect(left, `processes of ${device.id} still running`).toEqual([]);
    if (fs.existsSync(device.log)) {
      await testInfo.attach(`agent ${device.id}`, { path: device.log, contentType: "text/plain" });
    }
  }
}

test("upload an artifact, start an update rollout on a group, watch it finish", async ({ page, request }, testInfo) => {
  test.setTimeout(180_000);
  const run = randomBytes(4).toString("hex");
  const group = `e2e-update-${run}`;
  const name = `e2e-agent-${run}`;
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "tether-e2e-update-"));
  const devices: Device[] = [];
  const errors: string[] = [];
  page.on("pageerror", (error) => errors.push(error.message));
  try {
    // The update key the page shows is the server's, and what the agents verify with.
    await page.goto("/updates");
    await expect(page.getByRole("heading", { name: "Software updates", level: 1 })).toBeVisible();
    await expect(page.getByTestId("updates")).toHaveAttribute("data-hydrated", "true");
    const publicKey = ((await page.getByTestId("signing-key").textContent()) ?? "").trim();
    expect(publicKey).toMatch(/^[0-9a-f]{64}$/);
    const served: { algorithm: string; public_key: string } = await (await request.get("/api/v1/artifacts/signing-key")).json();
    expect(served).toEqual({ algorithm: "ed25519", public_key: publicKey });
    await expect(page.getByTestId("signing-key-config")).toContainText(`public_key = "${publicKey}"`);

    // Two devices at version 1.0.0 that take updates, in a group of their own.
    for (const n of [1, 2]) devices.push(await startDevice(request, root, `e2e-upd-${run}-${n}`, publicKey));
    for (const device of devices) {
      const put = await request.put(`/api/v1/devices/${device.id}/groups`, { data: [group] });
      expect(put.status(), await put.text()).toBe(200);
    }
    for (const device of devices) {
      await expect.poll(() => asServerSees(request, device.id), { timeout: 20_000 }).toEqual({ online: true, firmware: "1.0.0", update: true });
    }
    // Stopped (they say goodbye): the rollout waits for them.
    for (const device of devices) latest(device).kill("SIGTERM");
    for (const device of devices) {
      await expect.poll(() => latest(device).exitCode, { timeout: 10_000 }).toBe(0);
      await expect.poll(async () => (await asServerSees(request, device.id))?.online, { timeout: 10_000 }).toBe(false);
    }

    // The new version: a script running another copy of the real agent as 2.0.0.
    const newAgent = path.join(root, "tether-agent-2");
    fs.copyFileSync(agentBinary(), newAgent);
    fs.chmodSync(newAgent, 0o755);
    const script = `#!/bin/sh\nexec '${newAgent}' "$@" --firmware ${VERSION}\n`;
    const sha256 = createHash("sha256").update(script).digest("hex");

    // Uploaded through the form; listed at once.
    const form = page.getByTestId("upload-form");
    await form.getByLabel("Name").fill(name);
    await form.getByLabel("Version").fill(VERSION);
    await form.getByLabel("Architecture").selectOption("any");
    await form.getByLabel("File").setInputFiles({ name: "tether-agent-2.0.0.sh", mimeType: "text/x-shellscript", buffer: Buffer.from(script) });
    await expect(form.getByTestId("upload-file")).toContainText("tether-agent-2.0.0.sh");
    await form.getByTestId("upload-start").click();
    await expect(form.getByTestId("upload-done")).toHaveText(`Uploaded ${name} ${VERSION} (any): ${Buffer.byteLength(script)} bytes.`, { timeout: 10_000 });
    await expect(form.getByTestId("upload-error")).toHaveCount(0);
    const row = page.getByTestId("artifact-row").filter({ hasText: name });
    await expect(row).toHaveCount(1);
    await expect(row.getByTestId("artifact-version")).toHaveText(VERSION);
    await expect(row.getByTestId("artifact-arch")).toHaveText("any");
    await expect(row.getByTestId("artifact-size")).toHaveText(`${Buffer.byteLength(script)} bytes`);
    await expect(row.getByTestId("artifact-sha256")).toHaveText(`${sha256.slice(0, 12)}…`);
    await expect(row.getByTestId("artifact-sha256")).toHaveAttribute("title", sha256);
    await expect(row.getByTestId("artifact-uploaded")).toContainText(process.env.TETHER_E2E_ADMIN!);
    const artifactId = (await row.getAttribute("data-artifact"))!;
    const kept = await request.get(`/api/v1/artifacts/${artifactId}`);
    expect(kept.status(), await kept.text()).toBe(200);
    expect(await kept.json()).toMatchObject({ name, version: VERSION, arch: "any", sha256, size: Buffer.byteLength(script) });

    // Rolled out to the group from the artifact's row: the new-job form, the update chosen.
    await row.getByTestId("artifact-roll-out").click();
    await expect(page).toHaveURL(new RegExp(`/jobs\\?artifact=${artifactId}$`));
    await expect(page.getByTestId("new-job")).toHaveAttribute("open");
    const jobForm = page.getByTestId("new-job-form");
    await expect(jobForm.getByTestId("job-command")).toHaveValue("cmd:update");
    await expect(jobForm.getByTestId("job-artifact")).toHaveValue(artifactId);
    await expect(jobForm.getByTestId("job-artifact-chosen")).toContainText(sha256.slice(0, 12));
    await expect(jobForm.getByLabel("Timeout per device (s)")).toHaveAttribute("placeholder", "300");
    await jobForm.getByLabel("Group").fill(group);
    await jobForm.getByLabel("Devices at once").fill("2");
    await jobForm.getByLabel("Offline devices").selectOption("wait");
    await jobForm.getByLabel("Minutes to wait").fill("10");
    await jobForm.getByLabel("Name (optional)").fill(`update ${group}`);
    // Every text the devices' rows show, kept as it appears (the stages come and go fast).
    await page.evaluate(() => {
      const seen: string[] = [];
      (window as unknown as { seen: string[] }).seen = seen;
      const record = () => {
        for (const cell of document.querySelectorAll('[data-testid="target-stage"], [data-testid="target-message"]')) {
          const text = (cell.textContent ?? "").trim();
          if (text && !seen.includes(text)) seen.push(text);
        }
      };
      new MutationObserver(record).observe(document.body, { subtree: true, childList: true, characterData: true, attributes: true });
    });
    await jobForm.getByRole("button", { name: "Start the update" }).click();

    await expect(page).toHaveURL(/\/jobs\/[^/?#]+$/, { timeout: 10_000 });
    const jobId = decodeURIComponent(new URL(page.url()).pathname.split("/").pop()!);
    const header = page.getByTestId("job");
    await expect(header.getByRole("heading", { level: 1 })).toHaveText(`update ${group}`);
    await expect(header.getByTestId("job-command")).toHaveText("update");
    await expect(header.getByTestId("job-args")).toHaveCount(0);
    const installs = header.getByTestId("job-artifact");
    await expect(installs).toHaveAttribute("data-artifact", artifactId);
    await expect(installs.getByTestId("job-artifact-name")).toHaveText(name);
    await expect(installs.getByTestId("job-artifact-version")).toHaveText(VERSION);
    await expect(installs.getByTestId("job-artifact-arch")).toHaveText("any");
    await expect(installs.getByTestId("job-artifact-sha256")).toHaveText(`${sha256.slice(0, 12)}…`);
    await expect(installs.getByTestId("job-artifact-sha256")).toHaveAttribute("title", sha256);
    await expect(header.getByTestId("job-targets-description")).toContainText(group);
    await expect(header).toHaveAttribute("data-hydrated", "true");
    for (const device of devices) {
      const target = page.locator(`[data-testid="job-target-row"][data-device="${device.id}"]`);
      await expect(target).toHaveAttribute("data-status", "waiting", { timeout: 10_000 });
      await expect(target.getByTestId("target-message")).toHaveText("offline: waiting for it to come back");
    }

    // Back online, each device is updated; the page follows.
    for (const device of devices) startAgent(device);
    await expect(header.getByTestId("job-state")).toHaveAttribute("data-state", "completed", { timeout: 120_000 });
    await expect(header.getByTestId("count-succeeded")).toHaveText("2");
    await expect(header.getByTestId("count-failed")).toHaveText("0");
    await expect(header.getByTestId("count-total")).toHaveText("2");
    for (const device of devices) {
      const target = page.locator(`[data-testid="job-target-row"][data-device="${device.id}"]`);
      await expect(target).toHaveAttribute("data-status", "succeeded");
      await expect(target.getByTestId("target-message")).toHaveText(`updated to ${VERSION} and back online`);
      await expect(target.getByTestId("target-stage")).toHaveCount(0);
    }

    // The stages, as the rows showed them.
    const seen: string[] = await page.evaluate(() => (window as unknown as { seen: string[] }).seen);
    testInfo.attach("texts the rows showed", { body: seen.join("\n"), contentType: "text/plain" });
    for (const stage of [/^downloading: \d+ % \(\d+ of \d+ bytes\)$/, /^verifying$/, /^installing$/, new RegExp(`^restarting into ${VERSION}$`), new RegExp(`^installed ${VERSION}; waiting for it to come back with it$`)]) {
      expect(seen.some((text) => stage.test(text)), `the rows showed ${stage} (they showed ${JSON.stringify(seen)})`).toBe(true);
    }

    // The server says the same: both devices run 2.0.0, from the artifact.
    const job = await (await request.get(`/api/v1/jobs/${encodeURIComponent(jobId)}`)).json();
    expect(job).toMatchObject({ state: "completed", command: "update", artifact: { id: artifactId, version: VERSION, sha256 } });
    expect(job.counts).toMatchObject({ total: 2, succeeded: 2, failed: 0 });
    for (const device of devices) {
      const body = await (await request.get(`/api/v1/devices/${device.id}`)).json();
      expect(body).toMatchObject({ online: true, firmware: VERSION });
      // The process the test started kept the new version, handed over and left.
      await expect.poll(() => latest(device).exitCode, { timeout: 10_000 }).toBe(0);
      expect(fs.readFileSync(device.executable, "utf8"), "the executable is the artifact").toBe(script);
      const [pid, firmware] = fs.readFileSync(path.join(device.state, "trial.healthy"), "utf8").split("\n");
      expect(firmware).toBe(VERSION);
      expect(alive(Number(pid)), "the new version runs").toBe(true);
    }
    expect(errors).toEqual([]);
  } finally {
    await stopAll(devices, testInfo);
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test("an artifact is removed once the admin confirms, and a viewer can only read", async ({ page, request, browser }) => {
  const name = `e2e-remove-${randomBytes(4).toString("hex")}`;
  const uploaded = await request.post(`/api/v1/artifacts?name=${name}&version=0.1.0&arch=x86_64`, {
    headers: { "content-type": "application/octet-stream" },
    data: Buffer.from("not really a program\n"),
  });
  expect(uploaded.status(), await uploaded.text()).toBe(201);
  const artifact: { id: string } = await uploaded.json();

  await page.goto("/updates");
  await expect(page.getByTestId("updates")).toHaveAttribute("data-hydrated", "true");
  const row = page.locator(`[data-testid="artifact-row"][data-artifact="${artifact.id}"]`);
  await expect(row.getByTestId("artifact-name")).toHaveText(name);
  await expect(row.getByTestId("artifact-size")).toHaveText("21 bytes");
  await expect(row.getByTestId("artifact-roll-out")).toHaveAttribute("href", `/jobs?artifact=${artifact.id}`);

  // Its rollout form, rendered by the server and hydrated, has it chosen.
  const errors: string[] = [];
  page.on("pageerror", (error) => errors.push(error.message));
  await page.goto(`/jobs?artifact=${artifact.id}`);
  await expect(page.getByTestId("jobs")).toHaveAttribute("data-hydrated", "true");
  await expect(page.getByTestId("new-job")).toHaveAttribute("open");
  await expect(page.getByTestId("job-command")).toHaveValue("cmd:update");
  await expect(page.getByTestId("job-artifact")).toHaveValue(artifact.id);
  await expect(page.getByRole("button", { name: "Start the update" })).toBeVisible();
  expect(errors).toEqual([]);
  await page.goto("/updates");
  await expect(page.getByTestId("updates")).toHaveAttribute("data-hydrated", "true");

  // A viewer sees the list and the key, but neither the upload form nor the actions.
  const viewer = await createUser(request, "viewer");
  const viewerPage = await anonymousPage(browser);
  try {
    await logIn(viewerPage, viewer.name, viewer.password, "/updates");
    await expect(viewerPage.getByTestId("updates")).toHaveAttribute("data-hydrated", "true");
    const seenByViewer = viewerPage.locator(`[data-testid="artifact-row"][data-artifact="${artifact.id}"]`);
    await expect(seenByViewer.getByTestId("artifact-name")).toHaveText(name);
    await expect(seenByViewer.getByTestId("artifact-roll-out")).toHaveCount(0);
    await expect(seenByViewer.getByTestId("artifact-remove")).toHaveCount(0);
    await expect(viewerPage.getByTestId("upload-form")).toHaveCount(0);
    await expect(viewerPage.getByTestId("signing-key")).toHaveText(/^[0-9a-f]{64}$/);
  } finally {
    await viewerPage.context().close();
  }

  // Asked first; keeping it changes nothing.
  await row.getByTestId("artifact-remove").click();
  await expect(row.getByRole("alert")).toContainText(`Remove ${name} 0.1.0 (x86_64)?`);
  await row.getByRole("button", { name: "Keep it" }).click();
  await expect(row.getByTestId("artifact-remove")).toBeVisible();
  await row.getByTestId("artifact-remove").click();
  await row.getByTestId("artifact-remove-confirm").click();
  await expect(row).toHaveCount(0);
  await expect(page.getByTestId("artifact-done")).toHaveText(`Removed ${name} 0.1.0 (x86_64).`);
  const gone = await request.get(`/api/v1/artifacts/${artifact.id}`);
  expect(gone.status()).toBe(404);
});
