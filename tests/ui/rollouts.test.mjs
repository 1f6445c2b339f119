// Browser tests of the Rollouts page against a real server, a real git
// repository whose commit adds a rollout.toml, and real simulated
// collectors. Tests run in order and build on each other: one rollout is
// followed from its canary wave to completion, a second one is aborted.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { startServer, launchBrowser, newPage, login, adminPage as adminPageOf, checkPage, until, Api } from "./harness.mjs";

let server;
let browser;
let rolloutId;
let commit;
const VIEWER_PW = "rollout-viewer-password";

// The canary wave (the 2 staging collectors) bakes for an hour, so the
// rollout stays there until someone promotes it; the 3 prod collectors
// form the last wave, "rest".
const POLICY = `[gates]
apply_timeout = "10m"
healthy = true

[[waves]]
name = "canary"
selector.match_labels = { env = "staging" }
bake = "1h"
`;

before(async () => {
  server = await startServer({ name: "rollouts" });
  await server.sim({ count: 2, labels: { env: "staging", role: "app", os: "linux" } });
  await server.sim({ count: 3, labels: { env: "prod", role: "app", os: "linux" } });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

const adminPage = () => adminPageOf(browser, server);

/** Change the batch processor (every collector's render uses it). */
function batchWith(timeout) {
  return `# Processors run in the order a pipeline lists them.

[processors.memory]
type = "memory_limiter"
settings = { check_interval = "1s", limit_percentage = 80, spike_limit_percentage = 20 }

[processors.batch]
type = "batch"
settings = { timeout = "${timeout}", send_batch_size = 8192 }

[processors.detect]
type = "resourcedetection"
settings = { detectors = ["env", "system"], timeout = "2s", override = false }

[processors.drop-health]
type = "filter"
settings.error_mode = "ignore"
settings.traces.span = ['attributes["http.route"] == "/healthz"']

[processors.redact]
type = "redaction"
[processors.redact.settings]
allow_all_keys = true
blocked_values = ['4[0-9]{12}(?:[0-9]{3})?']
summary = "info"
`;
}

async function current() {
  return (await server.admin.get("/api/v1/rollouts")).current;
}

test("a commit with a rollout policy shows its waves and gates; the canary bakes while the rest waits", async () => {
  const page = await adminPage();
  // Every collector applied the first commit before the rollout starts.
  await until("5 collectors applied", async () => {
    const list = await server.admin.get("/api/v1/collectors?limit=100");
    return list.items.length === 5 && list.items.every((c) => c.config_status === "applied");
  });
  // The first commit went to everyone at once.
  await page.goto(`${server.base}/rollouts`);
  assert.equal((await page.locator("#rollout-state").textContent()).trim(), "completed");
  assert.match(await page.locator("#no-waves").textContent(), /first commit/);
  assert.match(await page.locator("#rollout-current").textContent(), /Initial fleet config/);
  // One commit brings the policy and a change every render has: it rolls
  // out under that policy.
  writeFileSync(join(server.repo, "rollout.toml"), POLICY);
  commit = await server.commit("processors.toml", batchWith("2s"), "Shorter batch timeout");
  const cur = await until("the canary wave to bake", async () => {
    const c = await current();
    return c?.commit === commit && c.waves[0].state === "baking" && c;
  });
  rolloutId = cur.id;

  await page.goto(`${server.base}/rollouts`);
  const tiles = page.locator("#rollout-current");
  assert.equal(await tiles.getAttribute("data-rollout"), rolloutId);
  assert.equal((await page.locator("#rollout-state").textContent()).trim(), "running");
  assert.match(await tiles.textContent(), /Shorter batch timeout/, "the commit is named by its message");
  const canary = page.locator('tr[data-wave="canary"]');
  const rest = page.locator('tr[data-wave="rest"]');
  assert.match(await canary.textContent(), /env=staging/);
  assert.match(await canary.textContent(), /baking/);
  assert.match(await canary.locator("ul.gates").textContent(), /passed applied/);
  assert.match(await canary.textContent(), /1h/);
  assert.equal(await canary.getAttribute("aria-current"), "step");
  assert.deepEqual(
    await canary.locator("td.num").allTextContents(),
    ["2", "2", "2", "0", "0"],
    "2 collectors in the canary wave, connected and applied",
  );
  assert.match(await rest.textContent(), /pending/);
  assert.match(await rest.textContent(), /counted once reached/);
  // The rest of the fleet is still on the baseline: nothing pushed to it.
  const list = (await server.admin.get("/api/v1/collectors?limit=100")).items;
  const prod = list.filter((c) => c.labels.env === "prod");
  const staging = list.filter((c) => c.labels.env === "staging");
  assert.equal(new Set([...prod, ...staging].map((c) => c.desired_hash)).size, 2, "prod and staging are served different renders");
  for (const name of ["Pause", "Promote wave canary", "Abort"]) await page.getByRole("button", { name }).waitFor();
  await checkPage(page, "rollouts");

  // The config page says a rollout is on and links here.
  await page.goto(`${server.base}/config`);
  assert.match(await page.locator("#config-rollout").textContent(), /running \(wave canary, 1 of 2\)/);
  await Promise.all([page.waitForURL(/\/rollouts$/), page.locator("#config-rollout").getByRole("link", { name: "Rollouts" }).click()]);
  await page.context().close();
});

test("a viewer sees the rollout but no action, and a forged action is refused", async () => {
  const r = await server.admin.post("/api/v1/users", { username: "vic", password: VIEWER_PW, role: "viewer" });
  assert.equal(r.status, 201, r.text);
  const page = await newPage(browser);
  await login(page, server.base, "vic", VIEWER_PW);
  await page.goto(`${server.base}/rollouts`);
  await page.locator('tr[data-wave="canary"]').waitFor();
  assert.equal(await page.locator("form.rollout-actions").count(), 0, "no action form for a viewer");
  assert.equal(await page.getByRole("button", { name: /Pause|Abort|Promote|Resume/ }).count(), 0);
  await checkPage(page, "rollouts-viewer");
  const status = await page.evaluate(async (id) => {
    const r = await fetch(`/rollouts/${id}/action`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ action: "abort", reason: "forged" }),
    });
    return r.status;
  }, rolloutId);
  assert.equal(status, 403);
  const api = await Api.login(server.base, "vic", VIEWER_PW);
  assert.equal((await api.post(`/api/v1/rollouts/${rolloutId}/pause`)).status, 403);
  assert.equal((await current()).state, "running", "nothing changed");
  await page.context().close();
});

test("the page follows the rollout live; pause asks first and names the commit; resume and promote finish it", async () => {
  const page = await adminPage();
  await page.goto(`${server.base}/rollouts`);
  await page.evaluate(() => (window.__notReloaded = true));

  // Someone else pauses it (the API): the page shows it without a reload.
  assert.equal((await server.admin.post(`/api/v1/rollouts/${rolloutId}/pause`)).status, 200);
  await until("paused, live", async () => (await page.locator("#rollout-state").textContent()).trim() === "paused");
  assert.equal(await page.evaluate(() => window.__notReloaded), true, "the page was not reloaded");

  // Cancelling the confirmation changes nothing.
  let asked = "";
  page.once("dialog", (d) => {
    asked = d.message();
    d.dismiss();
  });
  await page.getByRole("button", { name: "Resume" }).click();
  assert.match(asked, new RegExp(`Resume the rollout of ${commit.slice(0, 12)} \\(“Shorter batch timeout”\\)`));
  assert.equal((await current()).state, "paused");

  page.once("dialog", (d) => d.accept());
  await Promise.all([page.waitForURL(/done=resume/), page.getByRole("button", { name: "Resume" }).click()]);
  await page.locator("#rollout-notice").filter({ hasText: "Rollout resumed" }).waitFor();
  assert.equal((await page.locator("#rollout-state").textContent()).trim(), "running");

  await page.getByLabel(/Reason/).fill("canary looks good");
  page.once("dialog", (d) => {
    asked = d.message();
    d.accept();
  });
  await Promise.all([page.waitForURL(/done=promote/), page.getByRole("button", { name: "Promote wave canary" }).click()]);
  assert.match(asked, /Promote wave “canary”/);
  // The rest wave is reached, applies, and the rollout completes: live.
  await until("completed, live", async () => (await page.locator("#rollout-state").textContent()).trim() === "completed", 90000);
  assert.match(await page.locator('tr[data-wave="canary"]').textContent(), /passed/);
  assert.match(await page.locator('tr[data-wave="canary"]').textContent(), /promoted/);
  assert.match(await page.locator('tr[data-wave="rest"]').textContent(), /passed/);
  assert.equal(await page.getByRole("button", { name: /Pause|Abort|Promote|Resume/ }).count(), 0, "a finished rollout offers no action");
  const list = (await server.admin.get("/api/v1/collectors?limit=100")).items;
  assert.equal(new Set(list.map((c) => c.desired_hash)).size, 1, "every collector is served the new commit");
  await checkPage(page, "rollouts-completed");

  // Each action is in the audit log, by the admin, with the commit as target.
  const audit = (await server.admin.get("/api/v1/audit?action=rollout.")).items;
  const mine = audit.filter((e) => e.actor === "user:admin" && e.target === commit).map((e) => e.action);
  assert.deepEqual(new Set(mine), new Set(["rollout.pause", "rollout.resume", "rollout.promote"]));
  const promote = audit.find((e) => e.action === "rollout.promote");
  assert.equal(promote.detail.reason, "canary looks good");
  await page.context().close();
});

test("abort with a reason: every collector goes back to the baseline, and the finished rollouts are listed", async () => {
  const baseline = commit;
  const before = new Map((await server.admin.get("/api/v1/collectors?limit=100")).items.map((c) => [c.id, c.desired_hash]));
  const next = await server.commit("processors.toml", batchWith("3s"), "Batch timeout 3s");
  await until("the second rollout's canary to bake", async () => {
    const c = await current();
    return c?.commit === next && c.waves[0].state === "baking";
  });
  const page = await adminPage();
  await page.goto(`${server.base}/rollouts`);
  await page.getByLabel(/Reason/).fill("wrong timeout");
  let asked = "";
  page.once("dialog", (d) => {
    asked = d.message();
    d.accept();
  });
  await Promise.all([page.waitForURL(/done=abort/), page.getByRole("button", { name: "Abort" }).click()]);
  assert.match(asked, new RegExp(`Abort the rollout of ${next.slice(0, 12)}.*back to the baseline commit ${baseline.slice(0, 12)}`));
  assert.equal((await page.locator("#rollout-state").textContent()).trim(), "aborted");
  assert.match(await page.locator("#rollout-reason").textContent(), /aborted by user:admin: wrong timeout/);
  const stopped = page.locator('tr[data-wave="canary"]');
  assert.match(await stopped.textContent(), /stopped \(baking\)/, "an aborted wave is not shown as still baking");
  assert.doesNotMatch(await stopped.textContent(), /until/);
  await until("every collector back on the baseline's render", async () => {
    const now = (await server.admin.get("/api/v1/collectors?limit=100")).items;
    return now.every((c) => c.desired_hash === before.get(c.id) && c.config_status === "applied");
  });
  const done = page.locator(`#past-rollouts tr[data-rollout="${rolloutId}"]`);
  assert.match(await done.textContent(), /completed/);
  assert.match(await done.textContent(), /2 of 2/, "both waves passed");
  assert.match(await done.textContent(), /Shorter batch timeout/);
  await checkPage(page, "rollouts-aborted");
  const abort = (await server.admin.get("/api/v1/audit?action=rollout.abort")).items;
  assert.deepEqual(
    abort.map((e) => [e.actor, e.target, e.detail.reason]),
    [["user:admin", next, "wrong timeout"]],
    "the abort is audited with its reason",
  );

  // A stale action (the page still offers it, the rollout finished meanwhile):
  // refused with why, nothing changed.
  const id = (await current()).id;
  const status = await page.evaluate(async (id) => {
    const r = await fetch(`/rollouts/${id}/action`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ action: "resume" }),
    });
    return { status: r.status, text: await r.text() };
  }, id);
  assert.equal(status.status, 422);
  assert.match(status.text, /Nothing was changed: state: cannot resume a rollout that is aborted/);
  await page.context().close();
});
