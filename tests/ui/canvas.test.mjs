// Browser tests of the routing canvas against a real server serving a bare
// config repository with publishing on, and real simulated collectors.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { startServer, launchBrowser, newPage, login, checkPage, until, ADMIN_PASSWORD } from "./harness.mjs";

let server;
let browser;

before(async () => {
  server = await startServer({ name: "canvas", publish: true });
  await server.sim({ count: 3, labels: { env: "prod", role: "app", os: "linux" } });
  await server.sim({ count: 2, labels: { env: "dev", role: "web", os: "linux" } });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

async function canvasPage() {
  const page = await newPage(browser);
  await login(page, server.base, "admin", ADMIN_PASSWORD);
  await page.goto(`${server.base}/routing`);
  await page.getByRole("heading", { level: 1, name: "Routing" }).waitFor();
  return page;
}

test("the graph is on the page before scripts, and passes axe", async () => {
  const page = await newPage(browser);
  await login(page, server.base, "admin", ADMIN_PASSWORD);
  const html = await (await page.request.get(`${server.base}/routing`)).text();
  assert.match(html, /data-id="route:applications"/, "server-rendered SVG");
  assert.match(html, /data-id="pipeline:app-traces"/);
  await page.goto(`${server.base}/routing`);
  const row = page.getByRole("row").filter({ hasText: "applications" });
  assert.match(await row.textContent(), /3/, "applications matches the 3 prod app collectors");
  await checkPage(page, "routing-canvas");
  await page.context().close();
});

test("two pages save the canvas: the second sees the conflict dialog", async () => {
  const a = await canvasPage();
  const b = await canvasPage();
  const node = a.locator('[data-id="route:gateways"]');
  await node.focus();
  await a.keyboard.press("ArrowRight");
  await a.keyboard.press("ArrowRight");
  await a.getByRole("button", { name: "Save layout" }).click();
  await a.getByText(/Layout saved \(version \d+\)/).waitFor();
  await b.getByLabel("Notes").fill("b's notes");
  await b.getByRole("button", { name: "Save layout" }).click();
  const dialog = b.getByRole("dialog", { name: "Someone else saved the canvas" });
  await dialog.waitFor();
  await checkPage(b, "routing-canvas-conflict");
  await dialog.getByRole("button", { name: "Review and save again" }).click();
  await dialog.getByText(/node\(s\) placed differently/).waitFor();
  await dialog.getByRole("button", { name: "Save my layout over theirs" }).click();
  await b.getByText(/Layout saved \(version \d+\)/).waitFor();
  const saved = await server.admin.get("/api/v1/canvas");
  assert.equal(saved.document.notes, "b's notes");
  await a.context().close();
  await b.context().close();
});

test("edit a route, see the impact, publish: the commit is served and the affected collectors get it", async () => {
  const page = await canvasPage();
  const before = await server.admin.get("/api/v1/collectors?limit=100");
  await page.getByRole("button", { name: "Edit applications" }).click();
  const editor = page.getByRole("dialog");
  await editor.getByLabel("Selector").fill("role in (app, web)");
  await editor.getByRole("button", { name: "Add to draft" }).click();
  await page.getByText(/Change route applications/).waitFor();
  await page.getByRole("button", { name: "Preview impact" }).click();
  const summary = page.locator("#impact-summary");
  await summary.waitFor();
  assert.match(await summary.textContent(), /^2 of 5 collectors would get a new config/);
  await page.getByRole("heading", { name: "TOML diff: routes.toml" }).waitFor();
  await page.getByRole("heading", { name: /Render diff for/ }).waitFor();
  await checkPage(page, "routing-canvas-preview");
  await page.getByLabel("Commit message").fill("Dev web hosts run the app pipelines");
  await page.getByRole("button", { name: "Publish" }).click();
  await page.getByText(/is served\. Reload/).waitFor({ timeout: 60000 });
  const tip = execFileSync("git", ["rev-parse", "main"], { cwd: server.served }).toString().trim();
  assert.equal((await server.admin.get("/api/v1/config/revision")).commit, tip);
  const author = execFileSync("git", ["log", "-1", "--format=%an|%s", "main"], { cwd: server.served }).toString().trim();
  assert.equal(author, "admin|Dev web hosts run the app pipelines");
  const old = new Map(before.items.map((c) => [c.id, c.desired_hash]));
  await until("the dev web collectors applied the new config", async () => {
    const now = await server.admin.get("/api/v1/collectors?limit=100");
    return now.items.every((c) => {
      const changed = c.desired_hash !== old.get(c.id);
      const dev = c.labels.env === "dev";
      return dev ? changed && c.config_status === "applied" : !changed;
    });
  });
  await page.context().close();
});
