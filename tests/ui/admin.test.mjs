// Browser tests of the administration pages (users, audit log, server
// health) and of what a viewer can do anywhere in the console, against a
// real server and real simulated collectors. Tests run in order and build
// on each other: the viewer is created through the Users page, and the
// audit log lists what the earlier tests did.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, launchBrowser, newPage, login, adminPage as adminPageOf, checkPage, until, Api } from "./harness.mjs";

let server;
let browser;
let collectorId;
const VIEWER_PW = "viewer-password-long-1";
const testStart = new Date(Date.now() - 1000);

before(async () => {
  server = await startServer({ name: "admin" });
  await server.sim({ count: 3, labels: { env: "prod", role: "app" } });
  browser = await launchBrowser();
  const list = await server.admin.get("/api/v1/collectors");
  collectorId = list.items[0].id;
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

const adminPage = () => adminPageOf(browser, server);

/** Create a user through the Users page. */
async function createUser(page, username, role, password) {
  await page.goto(`${server.base}/settings/users`);
  await page.getByLabel("User name").fill(username);
  await page.getByLabel("Role", { exact: true }).selectOption(role);
  await page.getByLabel("Initial password").fill(password);
  await Promise.all([page.waitForURL(/created=/), page.getByRole("button", { name: "Create user" }).click()]);
  await page.locator("#users-notice").filter({ hasText: `User ${username} created` }).waitFor();
}

test("users: create, change role, disable (no more login); the password is never echoed", async () => {
  const page = await adminPage();
  await createUser(page, "carol", "viewer", "carol-password-long");
  assert.ok(!(await page.content()).includes("carol-password-long"), "the password is not in the page");
  const row = page.locator('tr[data-user="carol"]');
  assert.match(await row.textContent(), /viewer/);
  await checkPage(page, "users");

  // A too-short password: refused, the name kept, the password not.
  await page.getByLabel("User name").fill("dave");
  await page.getByLabel("Initial password").fill("short-pw-ok1"); // 12 chars passes the browser's minlength
  await page.getByLabel("Initial password").evaluate((i) => i.removeAttribute("minlength"));
  await page.getByLabel("Initial password").fill("short");
  await page.getByRole("button", { name: "Create user" }).click();
  await page.locator("#create-error").filter({ hasText: "password" }).waitFor();
  assert.equal(await page.getByLabel("User name").inputValue(), "dave");
  assert.equal(await page.getByLabel("Initial password").inputValue(), "");

  await page.goto(`${server.base}/settings/users/carol`);
  await page.getByLabel("Role of carol").selectOption("editor");
  await Promise.all([page.waitForURL(/saved=role/), page.getByRole("button", { name: "Save role" }).click()]);
  assert.equal(await page.locator("#user-role").textContent(), "editor");
  await checkPage(page, "user-edit");

  // carol logs in, then is disabled: her session ends and login is refused.
  const carol = await Api.login(server.base, "carol", "carol-password-long");
  assert.equal((await carol.req("GET", "/api/v1/users/carol")).status, 200);
  page.once("dialog", (d) => d.accept());
  await Promise.all([page.waitForURL(/saved=access/), page.getByRole("button", { name: "Disable carol" }).click()]);
  assert.equal(await page.locator("#user-access").textContent(), "disabled");
  assert.equal((await carol.req("GET", "/api/v1/users/carol")).status, 401, "the open session stops working");
  await assert.rejects(Api.login(server.base, "carol", "carol-password-long"), /401/);
  const other = await newPage(browser);
  await other.goto(`${server.base}/login`);
  await other.getByLabel("User name").fill("carol");
  await other.getByLabel("Password").fill("carol-password-long");
  await other.getByRole("button", { name: "Log in" }).click();
  await other.getByRole("alert").filter({ hasText: "Wrong user name or password" }).waitFor();
  await other.context().close();
  await page.context().close();
});

test("users: two admins edit the same user; the second sees a conflict naming the change", async () => {
  const setup = await adminPage();
  await createUser(setup, "erin", "viewer", "erin-password-long");
  await setup.context().close();
  const a = await adminPage();
  const b = await adminPage();
  await a.goto(`${server.base}/settings/users/erin`);
  await b.goto(`${server.base}/settings/users/erin`);
  await a.getByLabel("Role of erin").selectOption("editor");
  await Promise.all([a.waitForURL(/saved=role/), a.getByRole("button", { name: "Save role" }).click()]);
  await b.getByLabel("Role of erin").selectOption("admin");
  await b.getByRole("button", { name: "Save role" }).click();
  const err = b.locator("#user-error");
  await err.waitFor();
  assert.match(await err.textContent(), /Conflict: someone else changed erin .*role viewer → editor/);
  assert.equal(await b.getByLabel("Role of erin").inputValue(), "admin", "the admin's choice is kept");
  assert.equal(await b.locator("#user-role").textContent(), "editor", "the current value is shown");
  assert.equal((await server.admin.get("/api/v1/users/erin")).role, "editor", "nothing was overwritten");
  await checkPage(b, "user-conflict");
  // Saving again on top of the version now shown works.
  await Promise.all([b.waitForURL(/saved=role/), b.getByRole("button", { name: "Save role" }).click()]);
  assert.equal((await server.admin.get("/api/v1/users/erin")).role, "admin");
  await a.context().close();
  await b.context().close();
});

/**
 * Every mutating control on the page: forms that POST, enabled edit buttons.
 * Exempt: logout, and a user's own API tokens — a viewer may make a token for
 * their own automation, and it acts with the viewer's read-only role, so it
 * changes nothing of the fleet.
 */
async function mutatingControls(page) {
  return page.evaluate(() => {
    const found = [];
    const selfService = (action) => action === "/logout" || /^\/settings\/api-tokens(\/|$)/.test(action || "");
    for (const f of document.querySelectorAll("form")) {
      const method = (f.getAttribute("method") || "get").toLowerCase();
      if (method !== "get" && !selfService(f.getAttribute("action"))) found.push(`form ${method} ${f.getAttribute("action")}`);
    }
    for (const b of document.querySelectorAll("button:not([disabled])")) {
      if (b.closest("form")) continue; // judged with its form
      if (/save|edit|delete|remove|revoke|restart|rotate|deregister|publish|create|disable|enable|pin/i.test(b.textContent)) {
        found.push(`button ${b.textContent.trim()}`);
      }
    }
    return found;
  });
}

test("a viewer sees no mutating control on any console page, and forged POSTs are refused", async () => {
  const adm = await adminPage();
  await createUser(adm, "vera", "viewer", VIEWER_PW);
  await adm.context().close();

  const page = await newPage(browser);
  await login(page, server.base, "vera", VIEWER_PW);
  // Walk the navigation, so a page added later is covered too.
  const hrefs = await page.locator('nav[aria-label="Main"] a').evaluateAll((as) => as.map((a) => a.getAttribute("href")));
  assert.ok(hrefs.length >= 8, `the navigation lists the pages: ${hrefs}`);
  const pages = [...new Set([...hrefs, `/collectors/${collectorId}`])];
  for (const href of pages) {
    const r = await page.goto(`${server.base}${href}`);
    assert.ok(r.status() < 500, `${href} answers ${r.status()}`);
    assert.deepEqual(await mutatingControls(page), [], `mutating controls shown to a viewer on ${href}`);
  }
  await page.goto(`${server.base}/settings/users`);
  await page.getByText("Users are managed by admins").waitFor();
  await checkPage(page, "users-viewer");

  // The viewer's own session, the page's own Origin: the server refuses anyway.
  const before = await server.admin.get(`/api/v1/collectors/${collectorId}`);
  const usersBefore = (await server.admin.get("/api/v1/users")).items.length;
  const tokensBefore = (await server.admin.get("/api/v1/enrollment-tokens")).items.length;
  const forged = await page.evaluate(async (id) => {
    const form = (body) => ({ method: "POST", headers: { "content-type": "application/x-www-form-urlencoded" }, body: new URLSearchParams(body) });
    const json = (body) => ({ method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    const out = {};
    out.labels = (await fetch(`/collectors/${id}/labels`, form({ labels: "owned=yes", version: "1" }))).status;
    out.userCreate = (await fetch("/settings/users", form({ username: "mallory", role: "admin", password: "mallory-password-long" }))).status;
    out.userEdit = (await fetch("/settings/users/vera", form({ action: "role", role: "admin", version: "1", loaded_role: "viewer", loaded_disabled: "false" }))).status;
    out.restart = (await fetch(`/api/v1/collectors/${id}/restart`, json({}))).status;
    out.tokenCreate = (await fetch("/api/v1/enrollment-tokens", json({ name: "forged" }))).status;
    return out;
  }, collectorId);
  assert.deepEqual(forged, { labels: 403, userCreate: 403, userEdit: 403, restart: 403, tokenCreate: 403 });
  const afterC = await server.admin.get(`/api/v1/collectors/${collectorId}`);
  assert.deepEqual(afterC.labels, before.labels, "labels unchanged");
  assert.equal((await server.admin.get("/api/v1/users")).items.length, usersBefore, "no user created");
  assert.equal((await server.admin.get("/api/v1/users/vera")).role, "viewer", "the viewer is still a viewer");
  assert.equal((await server.admin.get("/api/v1/enrollment-tokens")).items.length, tokensBefore, "no token created");
  await page.context().close();
});

test("the audit log lists this test's actions and its filters narrow the list", async () => {
  // A labels edit through the API, to be listed too.
  const c = await server.admin.get(`/api/v1/collectors/${collectorId}`);
  const r = await server.admin.req("PATCH", `/api/v1/collectors/${collectorId}/labels`, { labels: { ...c.labels, audited: "yes" }, version: c.version });
  assert.ok(r.status === 200, `labels edit: ${r.status} ${r.text}`);

  const page = await adminPage();
  await page.goto(`${server.base}/audit`);
  const text = await page.locator("#audit").textContent();
  for (const action of ["auth.login", "user.create", "user.update"]) assert.ok(text.includes(action), `${action} listed`);
  await checkPage(page, "audit");

  // Actor filter: only vera's events (her login).
  await page.getByLabel("Actor").fill("vera");
  await Promise.all([page.waitForURL(/actor=vera/), page.getByRole("button", { name: "Filter" }).click()]);
  const actors = await page.locator("#audit tbody tr td:nth-child(2)").allTextContents();
  assert.ok(actors.length > 0 && actors.every((a) => a.includes("vera")), `only vera: ${actors}`);

  // Action filter: only user.create, exactly the users made here.
  await page.goto(`${server.base}/audit`);
  await page.getByLabel("Action").fill("user.create");
  await Promise.all([page.waitForURL(/action=user\.create/), page.getByRole("button", { name: "Filter" }).click()]);
  const targets = await page.locator("#audit tbody tr td:nth-child(4)").allTextContents();
  assert.deepEqual(new Set(targets), new Set(["admin", "carol", "erin", "vera"]));

  // A time range in the browser's zone, sent as UTC: from before this test file
  // started until one minute later contains the first logins; a range before
  // the server started is empty.
  const local = (d) => {
    const p = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  };
  await page.goto(`${server.base}/audit`);
  await page.getByLabel("From").fill(local(new Date(testStart.getTime() - 3600_000)));
  await page.getByLabel("To (before)").fill(local(new Date(testStart.getTime() - 60_000)));
  await Promise.all([page.waitForURL(/from=/), page.getByRole("button", { name: "Filter" }).click()]);
  const url = new URL(page.url());
  assert.match(url.searchParams.get("from"), /Z$/, "the browser sent UTC");
  await page.locator("#audit-empty").waitFor();
  await page.getByLabel("To (before)").fill(local(new Date(Date.now() + 60_000)));
  await Promise.all([page.waitForURL((u) => u.href !== url.href), page.getByRole("button", { name: "Filter" }).click()]);
  assert.ok((await page.locator("#audit tbody tr").count()) > 5);
  await checkPage(page, "audit-filtered");

  // The REST API has the same filters; a bad value is a 400 naming it.
  const api = await server.admin.get("/api/v1/audit?actor=vera&action=auth.");
  assert.ok(api.items.length > 0 && api.items.every((e) => e.actor === "user:vera"));
  const bad = await server.admin.req("GET", "/api/v1/audit?from=yesterday");
  assert.equal(bad.status, 400);
  assert.match(bad.text, /`from`/);
  const spec = await server.admin.get("/api/v1/openapi.json");
  const names = spec.paths["/api/v1/audit"].get.parameters.map((p) => p.name);
  for (const n of ["actor", "action", "from", "to", "cursor", "limit"]) assert.ok(names.includes(n), `${n} documented`);
  await page.context().close();
});

test("server health shows this instance alive with its connected collectors", async () => {
  const page = await adminPage();
  await page.goto(`${server.base}/health`);
  const row = page.locator('tr[data-instance="admin-1"]');
  await until("this instance's presence row", async () => {
    await page.reload();
    return (await row.count()) === 1;
  });
  assert.match(await row.textContent(), /alive/);
  assert.equal((await row.locator(".connected").textContent()).trim(), "3");
  assert.equal((await page.locator("#local-connected").textContent()).trim(), "3");
  assert.match(await page.locator("#local-p50").textContent(), /ms/);
  assert.match((await page.locator("#local-reloads").textContent()).trim(), /^[0-9]+$/);
  await checkPage(page, "health");
  await page.context().close();
});
