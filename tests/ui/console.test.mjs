// Browser tests of the console against a real server and real simulated
// collectors. One server for the file; tests run in order and build on
// each other where the scenario does (the audit page lists the
// actions done before it).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, launchBrowser, newPage, login, screenshot, axeViolations, until, ADMIN_PASSWORD } from "./harness.mjs";

let server;
let browser;

before(async () => {
  server = await startServer({ name: "console" });
  await server.sim({ count: 6, labels: { env: "prod", role: "app", os: "linux" } });
  await server.sim({ count: 4, labels: { env: "dev", role: "web", os: "linux" } });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** Check a page the way every page is checked: axe, CSP, screenshot. */
async function checkPage(page, name) {
  const violations = await axeViolations(page);
  assert.deepEqual(violations, [], `accessibility violations on ${name}`);
  assert.deepEqual(page.problems, [], `script or CSP errors on ${name}`);
  await screenshot(page, name);
}

test("a wrong password says so; the right one opens the overview", async () => {
  const page = await newPage(browser);
  await page.goto(`${server.base}/collectors?selector=env%3Dprod`);
  assert.match(new URL(page.url()).pathname, /^\/login$/, "a page without a session redirects to the login");
  await page.getByLabel("User name").fill("admin");
  await page.getByLabel("Password").fill("not-the-password");
  await page.getByRole("button", { name: "Log in" }).click();
  await page.getByRole("alert").filter({ hasText: "Wrong user name or password" }).waitFor();
  await checkPage(page, "login-error");
  await page.getByLabel("Password").fill(ADMIN_PASSWORD);
  await page.getByRole("button", { name: "Log in" }).click();
  // Back where the user was going, filters included.
  await page.getByRole("heading", { level: 1, name: "Collectors" }).waitFor();
  assert.equal(new URL(page.url()).searchParams.get("selector"), "env=prod");
  await page.context().close();
});

test("the overview counts match the simulated fleet and follow it live", async () => {
  const page = await newPage(browser);
  await login(page, server.base, "admin", ADMIN_PASSWORD);
  await until("10 connected on the overview", async () => (await page.locator("#count-connected").textContent()) === "10");
  assert.equal(await page.locator("#count-total").textContent(), "10");
  assert.equal(await page.locator("#count-disconnected").textContent(), "0");
  assert.match(await page.getByText("Serving commit").textContent(), /Initial fleet config/);
  await checkPage(page, "overview");
  // Two more collectors join: the page shows them without a reload.
  const marker = await page.evaluate(() => (window.__notReloaded = true));
  await server.sim({ count: 2, labels: { env: "staging", role: "app" } });
  await until("12 connected, live", async () => (await page.locator("#count-connected").textContent()) === "12");
  assert.equal(await page.evaluate(() => window.__notReloaded), marker, "the page was not reloaded");
  await page.context().close();
});

test("every response carries the security headers; a cross-site form post is refused", async () => {
  const r = await fetch(`${server.base}/login`);
  const csp = r.headers.get("content-security-policy");
  assert.match(csp, /script-src 'self'/);
  assert.doesNotMatch(csp, /unsafe-inline/);
  assert.match(csp, /frame-ancestors 'none'/);
  assert.equal(r.headers.get("x-frame-options"), "DENY");
  assert.equal(r.headers.get("x-content-type-options"), "nosniff");
  assert.ok(r.headers.get("referrer-policy"));
  // A forged mutation from another site with the admin's cookie.
  const forged = await fetch(`${server.base}/api/v1/enrollment-tokens`, {
    method: "POST",
    headers: { cookie: server.admin.cookie, origin: "http://evil.example", "content-type": "application/json" },
    body: JSON.stringify({ name: "forged" }),
  });
  assert.equal(forged.status, 403);
  const noOrigin = await fetch(`${server.base}/api/v1/enrollment-tokens`, {
    method: "POST",
    headers: { cookie: server.admin.cookie, "content-type": "application/json" },
    body: JSON.stringify({ name: "forged" }),
  });
  assert.equal(noOrigin.status, 403);
  const tokens = await server.admin.get("/api/v1/enrollment-tokens");
  assert.ok(!tokens.items.some((t) => t.name === "forged"), "no forged token was created");
});

test("filter collectors by label, open one and see its rendered config", async () => {
  const page = await newPage(browser);
  await login(page, server.base, "admin", ADMIN_PASSWORD);
  await page.goto(`${server.base}/collectors`);
  await page.getByLabel("Label selector").fill("env=dev");
  await page.getByRole("button", { name: "Filter" }).click();
  await page.waitForURL((u) => u.searchParams.get("selector") === "env=dev");
  const rows = page.locator("#collectors tbody tr");
  assert.equal(await rows.count(), 4, "the 4 dev collectors");
  for (const t of await rows.allTextContents()) assert.match(t, /env=dev/);
  await checkPage(page, "collectors-filtered");
  await rows.first().getByRole("link").click();
  await page.getByRole("heading", { level: 1, name: /^Collector / }).waitFor();
  // role=web, os=linux -> the applications route does not apply to dev; linux-hosts does.
  const rendered = await page.locator("pre.rendered-config").first().textContent();
  assert.match(rendered, /host-metrics|hostmetrics/, "the rendered config of the linux-hosts route");
  await until("the collector reports the config applied", async () => {
    await page.reload();
    return (await page.locator("#config-status").textContent()) === "applied";
  });
  await checkPage(page, "collector-detail");
  await page.context().close();
});

test("two sessions edit a collector's labels: the second sees a conflict", async () => {
  const list = await server.admin.get("/api/v1/collectors?selector=env%3Dstaging");
  const id = list.items[0].id;
  const a = await newPage(browser);
  const b = await newPage(browser);
  await login(a, server.base, "admin", ADMIN_PASSWORD);
  await login(b, server.base, "admin", ADMIN_PASSWORD);
  await a.goto(`${server.base}/collectors/${id}`);
  await b.goto(`${server.base}/collectors/${id}`);
  await a.getByLabel(/Labels, one/).fill("env=staging\nrole=app\nteam=alpha");
  await a.getByRole("button", { name: "Save labels" }).click();
  await a.locator("#current-labels").getByText("team=alpha").waitFor();
  await b.getByLabel(/Labels, one/).fill("env=staging\nrole=app\nteam=beta");
  await b.getByRole("button", { name: "Save labels" }).click();
  const err = b.getByRole("alert");
  await err.waitFor();
  assert.match(await err.textContent(), /Conflict/);
  // The other session's labels are shown, nothing was overwritten.
  assert.ok(await b.locator("#current-labels").getByText("team=alpha").isVisible());
  const now = await server.admin.get(`/api/v1/collectors/${id}`);
  assert.equal(now.labels.team, "alpha");
  await checkPage(b, "collector-label-conflict");
  await a.context().close();
  await b.context().close();
});

test("an invalid commit's errors show on the config page; the last valid one stays served", async () => {
  const page = await newPage(browser);
  await login(page, server.base, "admin", ADMIN_PASSWORD);
  await page.goto(`${server.base}/config`);
  const served = await page.locator("#served-commit").textContent();
  await server.commit("routes.toml", '[routes.broken]\npriority = 1\npipelines = ["no-such-pipeline"]\n', "Break the routes");
  await until("the refused commit on the config page", async () => {
    await page.goto(`${server.base}/config`);
    return page.locator("#config-errors").isVisible();
  });
  const errors = await page.locator("#config-errors").textContent();
  assert.match(errors, /routes\.toml/);
  assert.match(errors, /no-such-pipeline/);
  assert.equal(await page.locator("#served-commit").textContent(), served);
  await checkPage(page, "config-refused");
  await page.context().close();
});
