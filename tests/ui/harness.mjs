// Reusable harness for the console's browser tests: starts the real
// `linkmesh` binary (target/debug, built by cargo first) on free loopback
// ports with a temp config, a temp redb file, a temp git repository made
// from config/examples/fleet-config and a bootstrap admin password file;
// starts real `linkmesh-sim` collectors; drives Debian's Chromium through
// playwright-core and checks pages with axe-core.
//
// Every wait polls with a deadline; nothing sleeps for a fixed time to
// wait for state.

import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync, mkdirSync, cpSync, readFileSync, openSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, "..", "..");
const targetDir = process.env.CARGO_TARGET_DIR ? resolve(process.env.CARGO_TARGET_DIR) : join(repoRoot, "target");
// LINKMESH_BIN_DIR: where linkmesh and linkmesh-sim are (default: the
// cargo target's debug directory).
export const binDir = process.env.LINKMESH_BIN_DIR ? resolve(process.env.LINKMESH_BIN_DIR) : join(targetDir, "debug");
export const screenshotDir = join(repoRoot, "target", "ui-screenshots");
export const ADMIN_PASSWORD = "ui-test-admin-password-long";

/** Poll `fn` until it returns a truthy value; fail naming `what`. */
export async function until(what, fn, timeoutMs = 60000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      last = v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${last?.stack ?? JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.unref();
    s.on("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

function git(cwd, ...args) {
  execFileSync("git", ["-c", "user.name=UI Test", "-c", "user.email=ui-test@example.invalid", ...args], {
    cwd,
    stdio: "pipe",
  });
}

/** A minimal API client with a login session, like a browser (Origin). */
export class Api {
  constructor(base) {
    this.base = base;
    this.cookie = null;
  }
  static async login(base, username, password) {
    const api = new Api(base);
    const r = await fetch(`${base}/api/v1/auth/login`, {
      method: "POST",
      headers: { "content-type": "application/json", origin: base },
      body: JSON.stringify({ username, password }),
    });
    if (r.status !== 200) throw new Error(`login as ${username}: ${r.status} ${await r.text()}`);
    api.cookie = r.headers.get("set-cookie").split(";")[0];
    return api;
  }
  async req(method, path, body, headers = {}) {
    const r = await fetch(`${this.base}${path}`, {
      method,
      headers: {
        origin: this.base,
        cookie: this.cookie,
        ...(body !== undefined ? { "content-type": "application/json" } : {}),
        ...headers,
      },
      body: body !== undefined ? JSON.stringify(body) : undefined,
    });
    const text = await r.text();
    let json = null;
    try {
      json = JSON.parse(text);
    } catch {}
    return { status: r.status, json, text, headers: r.headers };
  }
  async get(path) {
    const r = await this.req("GET", path);
    if (r.status !== 200) throw new Error(`GET ${path}: ${r.status} ${r.text}`);
    return r.json;
  }
  async post(path, body) {
    return this.req("POST", path, body);
  }
}

/**
 * Start a server. Returns { base, grpc, dir, repo, admin (Api), stop(),
 * commit(file, text, message), log() }.
 */
export async function startServer({ name = "ui", publish = false } = {}) {
  const dir = mkdtempSync(join(tmpdir(), `linkmesh-${name}-`));
  const repo = join(dir, "fleet-config");
  cpSync(join(repoRoot, "config", "examples", "fleet-config"), repo, { recursive: true });
  git(repo, "init", "-q", "-b", "main");
  git(repo, "add", "-A");
  git(repo, "commit", "-q", "-m", "Initial fleet config");
  // publish: serve a bare clone with config_store.allow_publish (the server
  // refuses to publish to a branch checked out in a work tree).
  const served = publish ? join(dir, "fleet-config.git") : repo;
  if (publish) git(dir, "clone", "-q", "--bare", repo, served);
  const pwFile = join(dir, "admin-password");
  writeFileSync(pwFile, ADMIN_PASSWORD + "\n", { mode: 0o600 });
  const http = await freePort();
  const grpcPort = await freePort();
  const base = `http://127.0.0.1:${http}`;
  const config = join(dir, "linkmesh.toml");
  writeFileSync(
    config,
    `[server]
http_listen = "127.0.0.1:${http}"
grpc_listen = "127.0.0.1:${grpcPort}"
public_url = "${base}"
instance_name = "${name}-1"
shutdown_grace = "2s"

[storage]
backend = "embedded"

[storage.embedded]
path = "${join(dir, "linkmesh.redb")}"

[auth]
bootstrap_admin_username = "admin"
bootstrap_admin_password_file = "${pwFile}"

[config_store]
url = "${served}"
branch = "main"
poll_interval = "2s"
allow_publish = ${publish}

[telemetry]
log_format = "pretty"
log_level = "warn"
`,
  );
  const logFile = join(dir, "server.log");
  const out = openSync(logFile, "a");
  const proc = spawn(join(binDir, "linkmesh"), ["serve", "--config", config], {
    stdio: ["ignore", out, out],
  });
  let spawnError = null;
  proc.on("error", (e) => (spawnError = e));
  const sims = [];
  const server = {
    base,
    grpc: `http://127.0.0.1:${grpcPort}`,
    dir,
    repo,
    served,
    proc,
    log: () => readFileSync(logFile, "utf8"),
    async commit(file, text, message) {
      mkdirSync(dirname(join(repo, file)), { recursive: true });
      writeFileSync(join(repo, file), text);
      git(repo, "add", "-A");
      git(repo, "commit", "-q", "-m", message);
      return execFileSync("git", ["rev-parse", "HEAD"], { cwd: repo }).toString().trim();
    },
    /**
     * Start `count` simulated collectors enrolled with a new token carrying
     * `labels`; `extraArgs` go to linkmesh-sim as they are.
     */
    async sim({ count, labels = {}, token, heartbeat = "5s", transport = "grpc", extraArgs = [] }) {
      if (!token) {
        const r = await server.admin.post("/api/v1/enrollment-tokens", { name: `sim ${JSON.stringify(labels)}`, labels });
        if (r.status !== 201) throw new Error(`enrollment token: ${r.status} ${r.text}`);
        token = r.json.token;
      }
      const args = ["--server", base, "--grpc", server.grpc, "--transport", transport, "--collectors", String(count),
        "--enrollment-token", token, "--heartbeat", heartbeat, "--push-rounds", "0", "--hold", "24h"];
      for (const [k, v] of Object.entries(labels)) args.push("--label", `${k}=${v}`);
      args.push(...extraArgs);
      const p = spawn(join(binDir, "linkmesh-sim"), args, { stdio: ["ignore", "pipe", "pipe"] });
      let output = "";
      p.stdout.on("data", (d) => (output += d));
      p.stderr.on("data", (d) => (output += d));
      /** Everything the sim printed so far (e.g. "restart received by <id>"). */
      p.output = () => output;
      sims.push(p);
      await until(`${count} sim collectors to connect (${output})`, () => output.includes(`connected ${count} collectors`) || (p.exitCode !== null && Promise.reject(new Error(output))), 120000);
      return p;
    },
    async stop() {
      for (const s of sims) s.kill("SIGTERM");
      proc.kill("SIGTERM");
      await new Promise((r) => (proc.exitCode !== null ? r() : proc.once("exit", r)));
      if (!process.env.LINKMESH_UI_KEEP) rmSync(dir, { recursive: true, force: true });
    },
  };
  await until("the server to be ready", async () => {
    if (spawnError) throw new Error(`cannot start ${join(binDir, "linkmesh")} (run cargo build --bins first): ${spawnError.message}`);
    if (proc.exitCode !== null) throw new Error(`the server exited: ${server.log()}`);
    const r = await fetch(`${base}/readyz`).catch(() => null);
    return r?.status === 200;
  });
  server.admin = await Api.login(base, "admin", ADMIN_PASSWORD);
  return server;
}

/** Headless Chromium (Debian's). The flags keep it off the network. */
export async function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
}

/**
 * A new browser context + page that records CSP violations and page
 * errors (the test fails on any).
 */
export async function newPage(browser) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.problems = [];
  page.on("console", (m) => {
    if (m.type() === "error" && /Content Security Policy|Refused to/.test(m.text())) page.problems.push(m.text());
  });
  page.on("pageerror", (e) => page.problems.push(String(e)));
  return page;
}

/** Log in through the login form. */
export async function login(page, base, username, password) {
  await page.goto(`${base}/login`);
  await page.getByLabel("User name").fill(username);
  await page.getByLabel("Password").fill(password);
  await Promise.all([page.waitForURL((u) => !u.pathname.startsWith("/login")), page.getByRole("button", { name: "Log in" }).click()]);
}

/** A new page logged in as the bootstrap admin of `server`. */
export async function adminPage(browser, server) {
  const page = await newPage(browser);
  await login(page, server.base, "admin", ADMIN_PASSWORD);
  return page;
}

/** Save target/ui-screenshots/<name>.png. */
export async function screenshot(page, name) {
  mkdirSync(screenshotDir, { recursive: true });
  await page.screenshot({ path: join(screenshotDir, `${name}.png`), fullPage: true });
}

const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

/**
 * Run axe-core in the page; returns its serious and critical violations.
 * The source is evaluated through the DevTools protocol, not injected as
 * an inline script (which the page's CSP would refuse).
 */
export async function axeViolations(page) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ["violations"] }));
  return result.violations
    .filter((v) => v.impact === "serious" || v.impact === "critical")
    .map((v) => `${v.id} (${v.impact}): ${v.help} — ${v.nodes.map((n) => n.target.join(" ")).slice(0, 3).join(", ")}`);
}

/**
 * Check a page the way every page is checked: axe-core finds no serious or
 * critical violation, no CSP or script error happened, and a screenshot is
 * saved as target/ui-screenshots/<name>.png. Every test file uses it.
 */
export async function checkPage(page, name) {
  const violations = await axeViolations(page);
  assert.deepEqual(violations, [], `accessibility violations on ${name}`);
  assert.deepEqual(page.problems, [], `script or CSP errors on ${name}`);
  await screenshot(page, name);
}
