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
  await page.goto(`${server.base}/?from=test`);
  assert.match(new URL(page.url()).pathname, /^\/login$/, "a page without a session redirects to the login");
  await page.getByLabel("User name").fill("admin");
  await page.getByLabel("Password").fill("not-the-password");
  await page.getByRole("button", { name: "Log in" }).click();
  await page.getByRole("alert").filter({ hasText: "Wrong user name or password" }).waitFor();
  await checkPage(page, "login-error");
  await login(page, server.base, "admin", ADMIN_PASSWORD);
  await page.getByRole("heading", { level: 1, name: "Overview" }).waitFor();
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
