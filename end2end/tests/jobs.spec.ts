import { expect, test } from "./fixtures/agents";

// A job from the /jobs form: three gateways chosen by id, their `echo` command offered
// with generated argument inputs, two devices at once; the job's page follows it live
// to the end, and its counts are the API's.

test("a job started from the form runs on every device and completes live", async ({ page, startAgent }) => {
  const gateways = await Promise.all([startAgent("gateway"), startAgent("gateway"), startAgent("gateway")]);
  const ids = gateways.map((g) => g.id);
  for (const id of ids) {
    await expect
      .poll(async () => {
        const response = await page.request.get(`/api/v1/devices/${id}`);
        return response.ok() && (await response.json()).online === true;
      }, { timeout: 15_000 })
      .toBe(true);
  }

  const errors: string[] = [];
  page.on("pageerror", (error) => errors.push(error.message));
  await page.goto("/jobs");
  await expect(page.getByRole("heading", { name: "Jobs", level: 1 })).toBeVisible();
  await expect(page.getByTestId("connection")).toHaveText(/^\s*live\b/, { timeout: 15_000 });
  // The page's code is fetched on demand: live can come before it is hydrated.
  await expect(page.getByTestId("jobs")).toHaveAttribute("data-hydrated", "true", { timeout: 15_000 });

  const form = page.getByTestId("new-job-form");
  await page.getByTestId("new-job").locator("summary").click();
  const name = `e2e echo ${ids[0]}`;
  await form.getByLabel("Device ids").fill(ids.join(", "));
  await expect(form.getByTestId("job-preview")).toHaveText("3 devices match.");
  // The command the three announced is offered, with inputs for its arguments.
  await form.getByTestId("job-command").selectOption("cmd:echo");
  await form.getByLabel(/^message/).fill("hello from a job");
  await form.getByLabel(/^delay ms/).fill("500");
  await form.getByLabel("Devices at once").fill("2");
  await form.getByLabel("Name (optional)").fill(name);
  await form.getByTestId("job-start").click();

  await expect(page).toHaveURL(/\/jobs\/[^/?#]+$/, { timeout: 10_000 });
  const jobId = decodeURIComponent(new URL(page.url()).pathname.split("/").pop()!);
  const header = page.getByTestId("job");
  await expect(header.getByRole("heading", { level: 1 })).toHaveText(name);
  await expect(header.getByTestId("job-command")).toHaveText("echo");
  await expect(header.getByTestId("job-targets-description")).toHaveText("3 devices by id");
  // Nothing reloads the page from here: what changes comes over the live channel.
  await page.evaluate(() => ((window as unknown as { stayed: boolean }).stayed = true));

  const seen = new Set<string>();
  await expect
    .poll(
      async () => {
        const state = await header.getByTestId("job-state").getAttribute("data-state").catch(() => null);
        if (state) seen.add(state);
        return state;
      },
      { timeout: 20_000, intervals: [50] },
    )
    .toBe("completed");
  expect([...seen], "the job was seen running before it completed").toContain("running");
  expect(await page.evaluate(() => (window as unknown as { stayed?: boolean }).stayed)).toBe(true);

  await expect(header.getByTestId("count-succeeded")).toHaveText("3");
  await expect(header.getByTestId("count-failed")).toHaveText("0");
  await expect(header.getByTestId("count-running")).toHaveText("0");
  await expect(header.getByTestId("job-progress")).toHaveAttribute("data-finished", "3");
  await expect(header.getByTestId("job-stop-reason")).toHaveCount(0);
  await expect(header.getByTestId("job-controls")).toHaveCount(0);
  const rows = page.getByTestId("job-target-row");
  await expect(rows).toHaveCount(3);
  for (const id of ids) {
    const row = page.locator(`[data-testid="job-target-row"][data-device="${id}"]`);
    await expect(row).toHaveAttribute("data-status", "succeeded");
    await expect(row.getByRole("link", { name: id })).toHaveAttribute("href", `/devices/${id}`);
    await expect(row.getByTestId("target-command")).not.toBeEmpty();
  }
  await expect(page.getByTestId("job-targets-range")).toHaveText("Showing 1–3 of 3");

  // The page's counts are the API's.
  const response = await page.request.get(`/api/v1/jobs/${encodeURIComponent(jobId)}`);
  expect(response.status(), await response.text()).toBe(200);
  const job: { state: string; command: string; concurrency: number; counts: Record<string, number> } = await response.json();
  expect(job.state).toBe("completed");
  expect(job.command).toBe("echo");
  expect(job.concurrency).toBe(2);
  expect(job.counts).toMatchObject({ total: 3, succeeded: 3, failed: 0, skipped: 0, cancelled: 0, running: 0, pending: 0 });
  for (const status of ["succeeded", "failed", "running"]) {
    await expect(header.getByTestId(`count-${status}`)).toHaveText(String(job.counts[status]));
  }

  // Rendered by the server and hydrated, the page says the same.
  await page.reload();
  await expect(header).toHaveAttribute("data-hydrated", "true");
  await expect(header.getByTestId("job-state")).toHaveAttribute("data-state", "completed");
  await expect(header.getByTestId("count-succeeded")).toHaveText("3");
  await expect(rows).toHaveCount(3);

  // The list shows it too, rendered by the server.
  await page.goto("/jobs");
  await expect(page.getByTestId("jobs")).toHaveAttribute("data-hydrated", "true");
  const listed = page.locator(`[data-testid="job-row"][data-job="${jobId}"]`);
  await expect(listed).toHaveAttribute("data-state", "completed");
  await expect(listed.getByRole("link", { name })).toHaveAttribute("href", `/jobs/${jobId}`);
  await expect(listed.getByTestId("job-progress")).toHaveAttribute("data-finished", "3");
  expect(errors).toEqual([]);
});
