import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { createWriteStream, existsSync, mkdtempSync, rmSync, writeFileSync, type WriteStream } from "node:fs";
import os from "node:os";
import path from "node:path";

// Starts `tether-server` (the release build) on port 0 with its embedded broker (also
// on port 0), waits until it says where it listens, and hands that address to the tests through
// TETHER_BASE_URL, and the agent binary's path through TETHER_AGENT_BIN. Set
// TETHER_BASE_URL yourself to test a server that is already running instead (and
// TETHER_E2E_ADMIN / TETHER_E2E_ADMIN_PASSWORD to an admin account of it).
//
// Everything the server prints goes to end2end/server.log (scripts/test.sh shows its end
// when the suite fails), and also to stderr with TETHER_E2E_SERVER_LOG set.
//
// Before the server starts, an admin account is made with `tether-server user add`;
// once it listens, that admin logs in through the login form, and the session cookie is
// saved as the storage state every test starts from (playwright.config.ts). Tests of
// other roles start from no state and log in themselves.
export default async function globalSetup(): Promise<(() => Promise<void>) | void> {
  process.env.TETHER_E2E_ADMIN ??= "e2e-admin";
  process.env.TETHER_E2E_ADMIN_PASSWORD ??= "e2e admin password";
  if (process.env.TETHER_BASE_URL) {
    await saveAdminSession(process.env.TETHER_BASE_URL);
    return;
  }

  const repo = path.resolve(__dirname, "..");
  const targetDir = process.env.CARGO_TARGET_DIR ?? path.join(repo, "target");
  const bin = process.env.TETHER_SERVER_BIN ?? path.join(targetDir, "release", "tether-server");
  const siteRoot = process.env.TETHER_SITE_ROOT ?? path.join(repo, "target", "site");
  if (!existsSync(bin)) {
    throw new Error(`${bin} does not exist: build it first with \`cargo leptos build --release --split\` (scripts/test.sh does).`);
  }
  if (!existsSync(path.join(siteRoot, "pkg"))) {
    throw new Error(`${siteRoot}/pkg does not exist: build the site first with \`cargo leptos build --release --split\`.`);
  }

  // Readings go to a SQLite file of this run's own. The server runs its embedded broker on
  // a free port: devices log in to it with their own credentials, which it checks
  // against the server's database (fixtures/agents.ts provisions each device first). A
  // TETHER_AMQP_URL from the environment would point the server elsewhere: left out.
  const dataDir = mkdtempSync(path.join(os.tmpdir(), "tether-e2e-"));
  const { TETHER_AMQP_URL: _elsewhere, ...inherited } = process.env;
  const env = {
    ...inherited,
    TETHER_ADDR: "127.0.0.1:0",
    TETHER_BROKER_ADDR: "127.0.0.1:0",
    TETHER_SITE_ROOT: siteRoot,
    TETHER_DATABASE_URL: `sqlite://${path.join(dataDir, "telemetry.db")}`,
    TETHER_DATA_DIR: dataDir,
    LEPTOS_ENV: "PROD",
    RUST_LOG: process.env.RUST_LOG ?? "info",
    NO_COLOR: "1",
  };
  execFileSync(bin, ["user", "add", process.env.TETHER_E2E_ADMIN, "--role", "admin", "--password-stdin"], {
    env,
    input: `${process.env.TETHER_E2E_ADMIN_PASSWORD}\n`,
  });
  const server = spawn(bin, [], { env, stdio: ["ignore", "pipe", "pipe"] });
  const log = createWriteStream(path.join(__dirname, "server.log"));
  const baseURL = await listeningAddress(server, log);
  await saveAdminSession(baseURL);
  process.env.TETHER_BASE_URL = baseURL;
  process.env.TETHER_AGENT_BIN ??= path.join(targetDir, "release", "tether-agent");
  if (!existsSync(process.env.TETHER_AGENT_BIN)) {
    server.kill("SIGKILL");
    throw new Error(`${process.env.TETHER_AGENT_BIN} does not exist: build it with \`cargo build --release -p agent\` (scripts/test.sh does).`);
  }
  console.log(`tether-server under test: ${baseURL}`);

  return async () => {
    server.kill("SIGTERM");
    await new Promise((resolve) => server.once("exit", resolve));
    await new Promise((resolve) => log.end(resolve));
    rmSync(dataDir, { recursive: true, force: true });
  };
}

// Logs the admin in through the login form and saves the session cookie where
// playwright.config.ts reads the storage state from.
async function saveAdminSession(baseURL: string): Promise<void> {
  const response = await fetch(`${baseURL}/auth/login`, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded", origin: baseURL },
    body: new URLSearchParams({
      name: process.env.TETHER_E2E_ADMIN!,
      password: process.env.TETHER_E2E_ADMIN_PASSWORD!,
      next: "/",
    }),
    redirect: "manual",
  });
  const cookie = response.headers.getSetCookie().find((c) => c.startsWith("tether_session=") && !c.startsWith("tether_session=;"));
  if (!cookie) {
    throw new Error(`the e2e admin could not log in: ${response.status} ${response.headers.get("location")}`);
  }
  const value = cookie.split(";")[0].slice("tether_session=".length);
  const host = new URL(baseURL).hostname;
  writeFileSync(
    process.env.TETHER_E2E_STATE!,
    JSON.stringify({
      cookies: [{ name: "tether_session", value, domain: host, path: "/", expires: -1, httpOnly: true, secure: false, sameSite: "Lax" }],
      origins: [],
    }),
  );
}

// Resolves with the server's URL from its "listening on http://…" log line; rejects if
// it exits or stays silent for too long, with everything it printed. All of its output
// goes on to `log`, for as long as it runs.
function listeningAddress(server: ChildProcess, log: WriteStream): Promise<string> {
  return new Promise((resolve, reject) => {
    let output = "";
    const timer = setTimeout(() => fail("did not report its address within 30 s"), 30_000);
    const fail = (why: string) => {
      clearTimeout(timer);
      server.kill("SIGKILL");
      reject(new Error(`tether-server ${why}. Its output:\n${output}`));
    };
    let listening = false;
    const onData = (chunk: Buffer) => {
      log.write(chunk);
      if (process.env.TETHER_E2E_SERVER_LOG) process.stderr.write(chunk);
      if (listening) return;
      output += chunk.toString();
      const found = output.match(/listening on (http:\/\/[\d.:]+)/);
      if (found) {
        listening = true;
        output = "";
        clearTimeout(timer);
        resolve(found[1]);
      }
    };
    server.stdout?.on("data", onData);
    server.stderr?.on("data", onData);
    server.once("exit", (code) => fail(`exited with code ${code}`));
  });
}
