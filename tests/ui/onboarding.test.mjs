// Browser tests of onboarding: Add collector (enrollment token, secret
// shown once, snippets, the first collector appearing live), Enrollment
// tokens (list, revoke) and API tokens (create, use, revoke), against a
// real server and real `linkmesh-sim` collectors. Tests run in order and
// build on each other (the token created first is revoked later).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import { startServer, launchBrowser, newPage, login, checkPage, until, Api, ADMIN_PASSWORD, binDir } from "./harness.mjs";

let server;
let browser;
const sims = [];
// The enrollment token made in the first test: { id, name, secret }.
let made;

before(async () => {
  server = await startServer({ name: "onboarding" });
  browser = await launchBrowser();
});

after(async () => {
  for (const s of sims) if (s.exitCode === null) s.kill("SIGTERM");
  await browser?.close();
  await server?.stop();
});

/**
 * Run the `linkmesh-sim` command exactly as the page shows it
 * (`LINKMESH_SIM_ENROLLMENT_TOKEN='…' linkmesh-sim --flag value …`), with
 * the binary from LINKMESH_BIN_DIR. Returns { proc, output() }.
 */
function runShownCommand(command, extraArgs = []) {
  const m = command.trim().match(/^LINKMESH_SIM_ENROLLMENT_TOKEN='([^']+)' linkmesh-sim (.*)$/s);
  assert.ok(m, `the sim command has the expected shape: ${command}`);
  const args = [...m[2].split(/\s+/).filter(Boolean), ...extraArgs];
  const proc = spawn(join(binDir, "linkmesh-sim"), args, {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, LINKMESH_SIM_ENROLLMENT_TOKEN: m[1] },
  });
  let out = "";
  proc.stdout.on("data", (d) => (out += d));
  proc.stderr.on("data", (d) => (out += d));
  sims.push(proc);
  return { proc, output: () => out };
}

test("Add collector: the secret is shown once with working snippets, and the first collector appears without a reload", async () => {
  const page = await newPage(browser);
  await login(page, server.base, "admin", ADMIN_PASSWORD);
  await page.getByRole("link", { name: "Add collector" }).click();
  await page.getByRole("heading", { level: 1, name: "Add collector" }).waitFor();
  await checkPage(page, "add-collector");

  // A bad field is named, and what was typed is kept.
  await page.getByLabel("Name").fill("edge eu");
  await page.getByLabel("Maximum uses").fill("lots");
  await page.getByRole("button", { name: "Create enrollment token" }).click();
  assert.match(await page.getByRole("alert").textContent(), /"lots" is not a whole number/);
  assert.equal(await page.getByLabel("Name").inputValue(), "edge eu");
  assert.equal(await page.getByLabel("Maximum uses").getAttribute("aria-invalid"), "true");

  await page.getByLabel("Labels").fill("site=eu\nenv=edge");
  await page.getByLabel("Maximum uses").fill("2");
  await page.getByLabel("Expires in").fill("2h");
  await page.getByRole("button", { name: "Create enrollment token" }).click();
  await page.getByRole("heading", { name: "Enrollment token “edge eu” created" }).waitFor();

  const secret = (await page.locator("#secret").textContent()).trim();
  assert.match(secret, /^lme_/);
  // The address bar never carries the secret; a reload fetches ?created=<id>.
  const url = new URL(page.url());
  assert.equal(url.pathname, "/add-collector");
  const id = url.searchParams.get("created");
  assert.ok(id && !page.url().includes(secret.slice(4)), `no secret in ${page.url()}`);
  made = { id, name: "edge eu", secret };

  const wsUrl = `${server.base.replace("http://", "ws://")}/v1/opamp`;
  const supervisor = await page.locator("#snippet-supervisor").textContent();
  assert.match(supervisor, new RegExp(`endpoint: ${wsUrl}\\n`));
  assert.ok(supervisor.includes(`- "Bearer ${secret}"`), supervisor);
  const extension = await page.locator("#snippet-extension").textContent();
  assert.match(extension, new RegExp(`endpoint: ${wsUrl}\\n`));
  assert.ok(extension.includes(`Authorization: "Bearer ${secret}"`), extension);
  const simCommand = await page.locator("#snippet-sim").textContent();
  assert.ok(simCommand.includes(`--server ${server.base} `), simCommand);
  // Copy buttons are there once scripts run.
  assert.equal(await page.getByRole("button", { name: "Copy the token" }).isVisible(), true);

  await page.getByText("Waiting for the first collector to enroll with this token…").waitFor();
  await checkPage(page, "add-collector-created");

  // A real simulated collector runs the command the page shows.
  const marker = await page.evaluate(() => (window.__notReloaded = true));
  const sim = runShownCommand(simCommand);
  await until(`the sim to connect (${sim.output()})`, () => sim.output().includes("connected 1 collectors") || (sim.proc.exitCode !== null && Promise.reject(new Error(sim.output()))), 120000);
  const link = page.locator("#progress-list a").first();
  await link.waitFor({ timeout: 30000 });
  assert.equal(await page.evaluate(() => window.__notReloaded), marker, "the page was not reloaded");
  assert.equal(await page.locator("#token-uses").textContent(), "1");
  const collectorName = (await link.textContent()).trim();
  await checkPage(page, "add-collector-enrolled");

  // Reload: the secret is gone for good, the enrolled collector is there.
  await page.reload();
  await page.getByRole("heading", { name: "Enrollment token “edge eu”" }).waitFor();
  assert.equal(await page.locator("#secret").count(), 0);
  assert.ok(!(await page.content()).includes(secret.slice(4)), "the reloaded page does not contain the secret");
  assert.match(await page.getByText("shown once, when it was created").textContent(), /cannot be shown again/);
  await page.locator("#progress-list a").first().waitFor();
  // Back does not bring it back from a cache either.
  const again = await server.admin.req("GET", `/add-collector?created=${encodeURIComponent(id)}`);
  assert.equal(again.status, 200);
  assert.ok(!again.text.includes(secret.slice(4)));

  // The link opens the collector, which carries the token's labels and is in the table.
  await page.locator("#progress-list a").first().click();
  await page.getByRole("heading", { level: 1, name: `Collector ${collectorName}` }).waitFor();
  const labels = await page.locator("#current-labels").textContent();
  assert.match(labels, /site=eu/);
  assert.match(labels, /env=edge/);
  await page.goto(`${server.base}/collectors?selector=site%3Deu`);
  assert.equal(await page.locator("#collectors tbody tr").count(), 1);
  assert.match(await page.locator("#collectors tbody").textContent(), new RegExp(collectorName));
  await page.context().close();
});

test("Enrollment tokens: state and uses are listed; revoking (confirmed, naming the token) refuses a new sim", async () => {
  assert.ok(made, "the first test made a token");
  const page = await newPage(browser);
  await login(page, server.base, "admin", ADMIN_PASSWORD);
  await page.goto(`${server.base}/settings/enrollment-tokens`);
  const row = page.locator(`tr[data-token="${made.id}"]`);
  assert.match(await row.textContent(), /edge eu/);
  assert.match(await row.textContent(), /active/);
  assert.match(await row.textContent(), /1 \/ 2/);
  assert.match(await row.textContent(), /site=eu/);
  assert.match(await row.textContent(), /user:admin/);
  await checkPage(page, "enrollment-tokens");

  // Dismissing the confirmation keeps the token.
  let asked = "";
  page.once("dialog", (d) => {
    asked = d.message();
    d.dismiss();
  });
  await row.getByRole("button", { name: "Revoke enrollment token edge eu" }).click();
  await until("the confirmation", () => asked);
  assert.match(asked, /Revoke enrollment token “edge eu”/);
  assert.match(await row.textContent(), /active/);

  page.once("dialog", (d) => d.accept());
  await Promise.all([page.waitForURL((u) => u.searchParams.get("revoked") === made.id), row.getByRole("button", { name: "Revoke enrollment token edge eu" }).click()]);
  assert.match(await page.getByRole("status").textContent(), /is revoked/);
  assert.match(await page.locator(`tr[data-token="${made.id}"]`).textContent(), /revoked/);
  assert.equal(await page.locator(`tr[data-token="${made.id}"] button`).count(), 0, "a revoked token has no Revoke button");
  await checkPage(page, "enrollment-tokens-revoked");

  // A new sim collector with the revoked token is refused.
  const sim = runShownCommand(
    `LINKMESH_SIM_ENROLLMENT_TOKEN='${made.secret}' linkmesh-sim --server ${server.base} --grpc ${server.grpc} --transport grpc --collectors 1`,
  );
  const code = await until("the refused sim to exit", () => sim.proc.exitCode !== null && { code: sim.proc.exitCode });
  assert.notEqual(code.code, 0, sim.output());
  assert.match(sim.output(), /revoked/, sim.output());
  await page.context().close();
});

test("a viewer sees the tokens without controls, and the server refuses the viewer's forged POSTs", async () => {
  const r = await server.admin.post("/api/v1/users", { username: "vera", password: "viewer-password-long", role: "viewer" });
  assert.equal(r.status, 201, r.text);
  const t = await server.admin.post("/api/v1/enrollment-tokens", { name: "still active" });
  assert.equal(t.status, 201, t.text);
  const page = await newPage(browser);
  await login(page, server.base, "vera", "viewer-password-long");
  await page.goto(`${server.base}/settings/enrollment-tokens`);
  assert.match(await page.locator(`tr[data-token="${t.json.id}"]`).textContent(), /still active/);
  assert.equal(await page.locator("#enrollment-tokens button").count(), 0);
  await page.goto(`${server.base}/add-collector`);
  assert.equal(await page.locator("form[action='/add-collector']").count(), 0);
  assert.match(await page.locator("main").textContent(), /only editors and admins create enrollment tokens/);
  await checkPage(page, "add-collector-viewer");

  // Same-origin form posts from the viewer's own session (as a forged form would send).
  const status = await page.evaluate(async (id) => {
    const post = (path, body) => fetch(path, { method: "POST", headers: { "content-type": "application/x-www-form-urlencoded" }, body, redirect: "manual" }).then((r) => r.status);
    return [await post(`/settings/enrollment-tokens/${id}/revoke`, ""), await post("/add-collector", "name=forged")];
  }, t.json.id);
  assert.deepEqual(status, [403, 403]);
  const list = await server.admin.get("/api/v1/enrollment-tokens");
  assert.equal(list.items.find((x) => x.id === t.json.id).state, "active");
  assert.equal(list.items.filter((x) => x.name === "forged").length, 0);
  await page.context().close();
});

test("API tokens: created with the secret shown once, usable, then revoked", async () => {
  const page = await newPage(browser);
  await login(page, server.base, "admin", ADMIN_PASSWORD);
  await page.getByRole("link", { name: "API tokens" }).click();
  await page.getByRole("heading", { level: 1, name: "API tokens" }).waitFor();
  await page.getByLabel("Expires in").fill("whenever");
  await page.getByLabel("Name").fill("ci deploy");
  await page.getByRole("button", { name: "Create API token" }).click();
  assert.match(await page.getByRole("alert").textContent(), /"whenever" is not a lifetime/);

  await page.getByLabel("Expires in").fill("7d");
  await page.getByRole("button", { name: "Create API token" }).click();
  await page.getByRole("heading", { name: "API token “ci deploy” created" }).waitFor();
  const secret = (await page.locator("#secret").textContent()).trim();
  assert.match(secret, /^lma_/);
  assert.equal(new URL(page.url()).pathname + new URL(page.url()).search, "/settings/api-tokens");
  await checkPage(page, "api-tokens-created");

  const bearer = (s) => fetch(`${server.base}/api/v1/fleet/summary`, { headers: { authorization: `Bearer ${s}` } }).then((r) => r.status);
  assert.equal(await bearer(secret), 200, "the new token works");

  await page.reload();
  await page.getByRole("heading", { level: 1, name: "API tokens" }).waitFor();
  assert.equal(await page.locator("#secret").count(), 0);
  assert.ok(!(await page.content()).includes(secret.slice(4)), "the reloaded page does not contain the secret");
  const row = page.locator("#api-tokens tr", { hasText: "ci deploy" });
  assert.match(await row.textContent(), /admin/);
  assert.match(await row.textContent(), /active/);
  await checkPage(page, "api-tokens");

  let asked = "";
  page.once("dialog", (d) => {
    asked = d.message();
    d.accept();
  });
  await Promise.all([page.waitForURL((u) => u.searchParams.has("revoked")), row.getByRole("button", { name: "Revoke API token ci deploy" }).click()]);
  assert.match(asked, /Revoke API token “ci deploy”/);
  assert.match(await page.getByRole("status").textContent(), /is revoked/);
  assert.equal(await page.locator("#api-tokens tr", { hasText: "ci deploy" }).count(), 0);
  assert.equal(await bearer(secret), 401, "the revoked token is refused");
  await page.context().close();
});

test("API tokens: a token gets a role no higher than its creator's, and acts with it", async () => {
  const u = await server.admin.post("/api/v1/users", { username: "eddie", password: "eddie-password-long", role: "editor" });
  assert.equal(u.status, 201, u.text);
  const page = await newPage(browser);
  await login(page, server.base, "eddie", "eddie-password-long");
  await page.goto(`${server.base}/settings/api-tokens`);
  const role = page.getByLabel("Role");
  assert.deepEqual(await role.locator("option").allTextContents(), ["viewer", "editor"], "an editor is offered up to editor");
  assert.equal(await role.inputValue(), "editor", "the creator's own role by default");
  await page.getByLabel("Name").fill("dashboards");
  await role.selectOption("viewer");
  await page.getByRole("button", { name: "Create API token" }).click();
  await page.getByRole("heading", { name: "API token “dashboards” created" }).waitFor();
  const secret = (await page.locator("#secret").textContent()).trim();
  assert.equal((await page.locator("#api-tokens tr", { hasText: "dashboards" }).locator(".token-role").textContent()).trim(), "viewer");
  await checkPage(page, "api-tokens-roles");

  // The viewer token reads but cannot change the fleet, though its owner can.
  const call = (method, path, body) =>
    fetch(`${server.base}${path}`, {
      method,
      headers: { authorization: `Bearer ${secret}`, "content-type": "application/json" },
      body: body && JSON.stringify(body),
    }).then((r) => r.status);
  assert.equal(await call("GET", "/api/v1/fleet/summary"), 200);
  assert.equal(await call("POST", "/api/v1/enrollment-tokens", { name: "from a viewer token" }), 403);
  // Nor can it make itself a wider token.
  assert.equal(await call("POST", "/api/v1/api-tokens", { name: "wider", role: "editor" }), 403);

  // Above the creator's role: refused by the server, whatever the form offers.
  const forged = await page.evaluate(async () => {
    const r = await fetch("/settings/api-tokens", {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ name: "escalate", expires_in: "1d", role: "admin" }),
    });
    return { status: r.status, text: await r.text() };
  });
  assert.equal(forged.status, 403);
  assert.match(forged.text, /role: an API token.{1,6}s role can be no higher than yours \(editor\)/);
  const api = await Api.login(server.base, "eddie", "eddie-password-long");
  const r = await api.post("/api/v1/api-tokens", { name: "escalate", role: "admin" });
  assert.equal(r.status, 403);
  assert.match(r.json.detail, /role: .*no higher than yours \(editor\)/);
  const mine = (await server.admin.get("/api/v1/api-tokens")).items.filter((t) => t.owner === "eddie");
  assert.deepEqual(mine.map((t) => [t.name, t.role]), [["dashboards", "viewer"]], "only the allowed token exists");
  await page.context().close();
});
