// Add collector and API tokens pages. Pages work without this file; it
// (1) turns the history entry of a page that showed a secret (the answer
// to a POST) into a plain GET of a page without it, so a reload neither
// shows the secret again nor resubmits the form, and (2) follows the
// "collectors enrolled with this token" panel without a reload.

const replace = document.querySelector("[data-replace-url]");
if (replace && replace.dataset.replaceUrl) {
  history.replaceState(null, "", replace.dataset.replaceUrl);
}

// While nobody has enrolled, ask every 2 s (one key read on the server);
// afterwards every 10 s, and stop once the token can enroll nobody new.
const WAITING_MS = 2000;
const FOLLOWING_MS = 10000;

function render(panel, p) {
  const body = panel.querySelector("#progress-body");
  const uses = document.getElementById("token-uses");
  if (uses && uses.textContent !== String(p.uses)) uses.textContent = String(p.uses);
  const state = document.getElementById("token-state");
  const stateText = p.state.replace("_", " ");
  if (state && state.textContent !== stateText) state.textContent = stateText;
  if (p.collectors.length === 0) return;
  const list = document.createElement("ul");
  list.id = "progress-list";
  for (const c of p.collectors) {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = `/collectors/${encodeURIComponent(c.id)}`;
    a.textContent = c.name;
    li.append(a, " enrolled");
    list.append(li);
  }
  if (p.uses > p.collectors.length) {
    const li = document.createElement("li");
    li.textContent = `${p.uses} collectors have used this token in all.`;
    list.append(li);
  }
  const old = body.querySelector("#progress-list");
  if (old && old.isEqualNode(list)) return;
  body.replaceChildren(list);
}

function follow(panel) {
  const url = panel.dataset.progress;
  const tick = async () => {
    let next = WAITING_MS;
    try {
      const r = await fetch(url, { headers: { accept: "application/json" }, credentials: "same-origin" });
      // A redirect to the login page (session ended) is not JSON: stop.
      if (!r.ok || !(r.headers.get("content-type") || "").includes("json")) return;
      const p = await r.json();
      render(panel, p);
      if (p.collectors.length > 0) next = FOLLOWING_MS;
      if (p.state !== "active") return;
    } catch {
      next = FOLLOWING_MS;
    }
    setTimeout(tick, next);
  };
  tick();
}

const panel = document.querySelector("[data-progress]");
if (panel) follow(panel);
