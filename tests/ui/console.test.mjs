// Browser tests of the console against a real server and real simulated
// collectors. One server for the file; tests run in order and build on
// each other where the issue's scenario does (the audit page lists the
// actions done before it).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, launchBrowser, newPage, login, checkPage, until, ADMIN_PASSWORD } from "./harness.mjs";

let server;
let browser;
let devSim;

before(async () => {
  server = await startServer({ name: "console" });
  await server.sim({ count: 6, labels: { env: "prod", role: "app", os: "linux" } });
  devSim = await server.sim({ count: 4, labels: { env: "dev", role: "web", os: "linux" } });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

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

test("the collectors table sorts by name and by last seen, pages per sort, and follows status live", async () => {
  // Cursor paging through the API, per sort: every collector once, in order.
  const walk = async (sort) => {
    const seen = [];
    let cursor = "";
    for (let i = 0; i < 10; i++) {
      const page = await server.admin.get(`/api/v1/collectors?sort=${sort}&limit=5${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
      seen.push(...page.items);
      if (!page.next_cursor) break;
      cursor = page.next_cursor;
    }
    return seen;
  };
  const byName = await walk("name");
  assert.equal(byName.length, 12);
  assert.equal(new Set(byName.map((c) => c.id)).size, 12, "no collector twice");
  const names = byName.map((c) => c.name.toLowerCase());
  assert.deepEqual(names, [...names].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)));
  const bySeen = await walk("last_seen");
  assert.equal(new Set(bySeen.map((c) => c.id)).size, 12);
  const seen = bySeen.map((c) => Date.parse(c.last_seen ?? 0));
  assert.deepEqual(seen, [...seen].sort((a, b) => b - a), "newest first");

  const page = await newPage(browser);
  await login(page, server.base, "admin", ADMIN_PASSWORD);
  await page.goto(`${server.base}/collectors?sort=name`);
  const shown = (await page.locator("#collectors tbody tr td:first-child a").allTextContents()).map((n) => n.toLowerCase());
  assert.deepEqual(shown, names, "the table is in name order");
  await page.getByRole("link", { name: "Last seen" }).click();
  await page.waitForURL((u) => u.searchParams.get("sort") === "last_seen");
  assert.equal(await page.locator("th[aria-sort=descending]").textContent(), "Last seen");
  await checkPage(page, "collectors-sorted");

  // Two more collectors; their rows follow them without a reload.
  const edge = await server.sim({ count: 2, labels: { env: "edge", role: "app" } });
  await page.goto(`${server.base}/collectors?selector=env%3Dedge`);
  const states = page.locator("#collectors [data-key$='.connection']");
  assert.equal(await states.count(), 2);
  await until("both edge rows connected", async () => (await states.allTextContents()).every((t) => t === "connected"));
  await page.evaluate(() => (window.__notReloaded = true));
  edge.kill("SIGKILL");
  await until("both edge rows disconnected, live", async () => (await states.allTextContents()).every((t) => t === "disconnected"));
  assert.equal(await page.evaluate(() => window.__notReloaded), true, "the page was not reloaded");
  await checkPage(page, "collectors-live");
  await page.context().close();
});

test("collector detail actions: restart reaches the sim, pin and clear a config, rotate, deregister", async () => {
  const dev = (await server.admin.get("/api/v1/collectors?selector=env%3Ddev")).items[0];
  const page = await newPage(browser);
  const dialogs = [];
  page.on("dialog", (d) => {
    dialogs.push(d.message());
    d.accept();
  });
  await login(page, server.base, "admin", ADMIN_PASSWORD);
  await page.goto(`${server.base}/collectors/${dev.id}`);

  // Restart: confirmed by name, and the simulated collector gets it.
  await page.getByRole("button", { name: "Restart" }).click();
  await page.locator("#action-result").filter({ hasText: "Restart requested" }).waitFor();
  assert.equal(dialogs.at(-1), `Restart collector ${dev.name}?`);
  await until("the sim to receive the restart", () => devSim.output().includes(`restart received by ${dev.id}`));

  // The config status history shows the config being applied.
  assert.match(await page.locator("#config-history").textContent(), /APPLIED/);
  const detail = await server.admin.get(`/api/v1/collectors/${dev.id}`);
  assert.equal(detail.status.config_history[0].status, "APPLIED", "the API shows the history too");

  // Pin the render of the served commit, then clear the pin.
  const served = await page.locator("#pin-commit option").nth(1).getAttribute("value");
  await page.getByLabel("Pinned config").selectOption(served);
  await page.getByRole("button", { name: "Apply" }).click();
  await page.locator("#action-result").filter({ hasText: "Config pinned" }).waitFor();
  assert.equal(dialogs.at(-1), `Change the pinned config of collector ${dev.name}?`);
  assert.equal(await page.locator("#config-source").textContent(), "pinned to this collector");
  assert.equal((await server.admin.get(`/api/v1/collectors/${dev.id}`)).desired.source, "assignment");
  await checkPage(page, "collector-actions");
  await page.getByLabel("Pinned config").selectOption("");
  await page.getByRole("button", { name: "Apply" }).click();
  await page.locator("#action-result").filter({ hasText: "Pin cleared" }).waitFor();
  assert.match(await page.locator("#config-source").textContent(), /^config_store@/);

  // Rotate and deregister an edge collector (its sim is gone).
  const edge = (await server.admin.get("/api/v1/collectors?selector=env%3Dedge")).items[0];
  await page.goto(`${server.base}/collectors/${edge.id}`);
  await page.getByRole("button", { name: "Rotate credential" }).click();
  const secret = await page.locator("#new-credential").textContent();
  assert.match(secret, /^lmc_/, "the new credential is shown once");
  assert.equal(dialogs.at(-1), `Rotate the credential of collector ${edge.name}?`);
  await checkPage(page, "collector-rotated");
  await page.goto(`${server.base}/collectors/${edge.id}`);
  assert.equal(await page.locator("#new-credential").count(), 0, "and never again");
  assert.ok(!(await page.content()).includes(secret));

  // Deregister: a wrong name is refused, the right one removes it.
  await page.getByLabel(/to confirm/).fill("not-its-name");
  await page.getByRole("button", { name: "Deregister" }).click();
  await page.locator("#action-error").filter({ hasText: "type the collector's name" }).waitFor();
  assert.ok((await server.admin.req("GET", `/api/v1/collectors/${edge.id}`)).status === 200, "nothing deleted");
  await page.getByLabel(/to confirm/).fill(edge.name);
  await page.getByRole("button", { name: "Deregister" }).click();
  await page.locator("#deregistered").waitFor();
  assert.match(dialogs.at(-1), new RegExp(`^Deregister collector ${edge.name}\\?`));
  assert.equal((await server.admin.req("GET", `/api/v1/collectors/${edge.id}`)).status, 404);
  const rows = await page.locator("#collectors tbody tr").allTextContents();
  assert.ok(!rows.some((r) => r.includes(edge.id)), "gone from the table");
  await checkPage(page, "collector-deregistered");
  await page.context().close();
});

test("the config page previews a render for a label set and counts the collectors each route applies to", async () => {
  const page = await newPage(browser);
  await login(page, server.base, "admin", ADMIN_PASSWORD);
  // Counted from the fleet as the API lists it (the renderer's rule).
  const all = (await server.admin.get("/api/v1/collectors?limit=500")).items;
  const linux = all.filter((c) => c.labels.os === "linux" && c.labels.ring !== "canary").length;
  const apps = all.filter((c) => ["app", "web"].includes(c.labels.role) && c.labels.env !== "dev" && c.labels.ring !== "canary").length;
  assert.ok(linux > 0 && apps > 0);
  await until("the route counts to match the fleet", async () => {
    await page.goto(`${server.base}/config`);
    return (await page.locator("tr[data-route=linux-hosts] .matched").textContent()) === String(linux);
  });
  assert.equal(await page.locator("tr[data-route=applications] .matched").textContent(), String(apps));

  await page.getByLabel(/Labels of a collector/).fill("env=dev\nos=linux");
  await page.getByRole("button", { name: "Render" }).click();
  await page.locator("#preview-yaml").waitFor();
  assert.match(await page.locator("#preview-result").textContent(), /Routes applied: linux-hosts;/);
  assert.match(await page.locator("#preview-yaml").textContent(), /hostmetrics/);
  assert.equal(await page.getByLabel(/Labels of a collector/).inputValue(), "env=dev\nos=linux", "the labels stay in the form");
  await checkPage(page, "config-preview");

  await page.getByLabel(/Labels of a collector/).fill("env=dev\noops");
  await page.getByRole("button", { name: "Render" }).click();
  assert.match(await page.locator("#preview-error").textContent(), /"oops" is not key=value/);
  await page.getByLabel(/Labels of a collector/).fill("env=dev");
  await page.getByRole("button", { name: "Render" }).click();
  assert.match(await page.locator("#preview-error").textContent(), /No route matches/);
  await page.context().close();
});

test("a collector lacking a component the fleet config uses shows incompatible, naming it, in the table and on its page", async () => {
  // The real sim binary reports these AvailableComponents: no hostmetrics
  // receiver, which the linux-hosts route's host-metrics pipeline needs.
  await server.sim({
    count: 1,
    labels: { env: "dev", os: "linux", team: "compat" },
    extraArgs: ["--available-components", "receivers=otlp;processors=memory_limiter,resourcedetection,batch;exporters=otlp,otlphttp"],
  });
  const page = await newPage(browser);
  await login(page, server.base, "admin", ADMIN_PASSWORD);
  const url = `${server.base}/collectors?selector=${encodeURIComponent("team=compat")}&config_status=incompatible`;
  const row = page.locator("#collectors tbody tr");
  await until("the collector listed as incompatible", async () => {
    await page.goto(url);
    return (await row.count()) === 1;
  });
  const text = await row.textContent();
  assert.match(text, /incompatible/);
  assert.match(text, /receivers\/hostmetrics/, "the table names the missing component");
  await checkPage(page, "collectors-incompatible");

  await row.getByRole("link").first().click();
  await page.getByRole("heading", { level: 1 }).waitFor();
  assert.equal((await page.locator("#config-status").textContent()).trim(), "incompatible");
  const detail = page.getByRole("row").filter({ hasText: "Config error" });
  assert.match(await detail.textContent(), /receivers\/hostmetrics/, "the detail page names the missing component");
  // Nothing was pushed to it: the API agrees with the pages.
  const id = new URL(page.url()).pathname.split("/").pop();
  const c = await server.admin.get(`/api/v1/collectors/${id}`);
  assert.equal(c.config_status, "incompatible");
  assert.match(c.config_error, /receivers\/hostmetrics/);
  await checkPage(page, "collector-incompatible");
  await page.context().close();
});
