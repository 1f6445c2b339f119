// The routing canvas: pan, zoom and drag on the server-rendered SVG; the
// layout and notes saved as the versioned canvas document (a stale save
// opens the conflict dialog, never overwrites); route edits kept as a draft
// in this browser, previewed, then published or downloaded as a patch.
// Everything goes through the REST API with the session cookie.

const $ = (sel) => document.querySelector(sel);
const dataEl = $("#routing-data");
const data = dataEl ? JSON.parse(dataEl.textContent) : null;
const svg = $("#routing-graph");
const NODE_W = 200, NODE_H = 58;

let version = data?.canvas?.version ?? 0;
let doc = data?.canvas?.document ?? {};
const draftKey = `linkmesh.routing.draft.${data?.commit}`;
let draft = JSON.parse(localStorage.getItem(draftKey) || "[]");

function status(text) {
  const s = $("#canvas-status");
  if (s) s.textContent = text;
}

async function api(method, path, body) {
  const r = await fetch(path, {
    method,
    headers: body === undefined ? {} : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  const type = r.headers.get("content-type") || "";
  const payload = type.includes("json") ? await r.json() : await r.text();
  return { status: r.status, body: payload };
}

// ---- the graph: positions, edges, pan, zoom, drag ----

const nodes = new Map();
for (const g of svg?.querySelectorAll(".node") ?? []) {
  const m = /translate\((-?\d+),(-?\d+)\)/.exec(g.getAttribute("transform"));
  nodes.set(g.dataset.id, { el: g, x: +m[1], y: +m[2] });
}
const view = { x: 0, y: 0, k: 1 };

function place(id) {
  const n = nodes.get(id);
  n.el.setAttribute("transform", `translate(${n.x},${n.y})`);
  for (const e of svg.querySelectorAll(".edge")) {
    if (e.dataset.from !== id && e.dataset.to !== id) continue;
    const a = nodes.get(e.dataset.from), b = nodes.get(e.dataset.to);
    const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2;
    const dx = Math.max(30, Math.trunc((x2 - x1) / 2));
    e.setAttribute("d", `M${x1},${y1} C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2},${y2}`);
  }
}

function applyView() {
  $("#viewport").setAttribute("transform", `translate(${view.x},${view.y}) scale(${view.k})`);
}

function zoom(f) {
  view.k = Math.min(3, Math.max(0.3, view.k * f));
  applyView();
}

function toSvg(ev) {
  const p = svg.createSVGPoint();
  p.x = ev.clientX;
  p.y = ev.clientY;
  return p.matrixTransform(svg.getScreenCTM().inverse());
}

if (svg) {
  let drag = null;
  svg.addEventListener("pointerdown", (ev) => {
    const g = ev.target.closest(".node");
    const p = toSvg(ev);
    if (g) {
      const n = nodes.get(g.dataset.id);
      drag = { id: g.dataset.id, dx: p.x / view.k - n.x, dy: p.y / view.k - n.y };
      g.classList.add("dragging");
      g.focus();
    } else {
      drag = { pan: true, sx: p.x - view.x, sy: p.y - view.y };
      svg.classList.add("panning");
    }
    svg.setPointerCapture(ev.pointerId);
  });
  svg.addEventListener("pointermove", (ev) => {
    if (!drag) return;
    const p = toSvg(ev);
    if (drag.pan) {
      view.x = p.x - drag.sx;
      view.y = p.y - drag.sy;
      applyView();
    } else {
      const n = nodes.get(drag.id);
      n.x = Math.round(p.x / view.k - drag.dx);
      n.y = Math.round(p.y / view.k - drag.dy);
      place(drag.id);
    }
  });
  svg.addEventListener("pointerup", () => {
    if (drag?.id) nodes.get(drag.id).el.classList.remove("dragging");
    svg.classList.remove("panning");
    drag = null;
  });
  svg.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    zoom(ev.deltaY < 0 ? 1.1 : 1 / 1.1);
  }, { passive: false });
  svg.addEventListener("keydown", (ev) => {
    const g = ev.target.closest?.(".node");
    const step = { ArrowLeft: [-10, 0], ArrowRight: [10, 0], ArrowUp: [0, -10], ArrowDown: [0, 10] }[ev.key];
    if (!g || !step) return;
    ev.preventDefault();
    const n = nodes.get(g.dataset.id);
    n.x += step[0];
    n.y += step[1];
    place(g.dataset.id);
  });
  $("#zoom-in").addEventListener("click", () => zoom(1.2));
  $("#zoom-out").addEventListener("click", () => zoom(1 / 1.2));
  $("#zoom-reset").addEventListener("click", () => Object.assign(view, { x: 0, y: 0, k: 1 }) && applyView());
}

// ---- saving the layout: versioned, conflicts shown ----

function myDocument() {
  const positions = {};
  for (const [id, n] of nodes) positions[id] = { x: n.x, y: n.y };
  return { ...doc, nodes: positions, notes: $("#canvas-notes").value };
}

function loadDocument(c) {
  version = c.version;
  doc = c.document;
  for (const [id, n] of nodes) {
    const p = doc.nodes?.[id];
    if (p) Object.assign(n, { x: p.x, y: p.y }) && place(id);
  }
  $("#canvas-notes").value = doc.notes ?? "";
}

async function save() {
  const r = await api("PUT", "/api/v1/canvas", { version, document: myDocument() });
  if (r.status === 200) {
    version = r.body.version;
    doc = r.body.document;
    status(`Layout saved (version ${version}).`);
  } else if (r.status === 409) {
    $("#conflict-review-box").hidden = true;
    $("#conflict").showModal();
  } else {
    status(`Saving failed: ${r.body.detail ?? r.status}`);
  }
}

$("#save-layout")?.addEventListener("click", save);
$("#conflict-load")?.addEventListener("click", async () => {
  const r = await api("GET", "/api/v1/canvas");
  loadDocument(r.body);
  $("#conflict").close();
  status(`Loaded the latest layout (version ${version}, saved by ${r.body.updated_by}).`);
});
$("#conflict-review")?.addEventListener("click", async () => {
  const r = await api("GET", "/api/v1/canvas");
  const moved = Object.keys(r.body.document.nodes ?? {}).filter((id) => {
    const p = r.body.document.nodes[id], n = nodes.get(id);
    return n && (p.x !== n.x || p.y !== n.y);
  });
  $("#conflict-theirs").textContent =
    `version ${r.body.version} by ${r.body.updated_by}; ${moved.length} node(s) placed differently from yours` +
    `${(r.body.document.notes ?? "") !== $("#canvas-notes").value ? "; different notes" : ""}.`;
  $("#conflict-review-box").hidden = false;
  $("#conflict-save").dataset.version = r.body.version;
  doc = r.body.document;
});
$("#conflict-save")?.addEventListener("click", async () => {
  version = +$("#conflict-save").dataset.version;
  $("#conflict").close();
  await save();
});
$("#conflict-close")?.addEventListener("click", () => $("#conflict").close());

// ---- route drafts ----

const routes = new Map((data?.graph?.routes ?? []).map((r) => [r.name, r.route]));

function selectorText(s) {
  const parts = Object.entries(s?.match_labels ?? {}).map(([k, v]) => `${k}=${v}`);
  for (const e of s?.match_expressions ?? []) {
    parts.push({ In: `${e.key} in (${e.values.join(", ")})`, NotIn: `${e.key} notin (${e.values.join(", ")})`,
      Exists: e.key, DoesNotExist: `!${e.key}` }[e.operator]);
  }
  return parts.join(", ");
}

function parseSelector(text) {
  const sel = { match_labels: {}, match_expressions: [] };
  const parts = text.match(/[^,(]+(\([^)]*\))?/g) ?? [];
  for (const raw of parts.map((p) => p.trim()).filter(Boolean)) {
    let m;
    if ((m = /^(\S+)\s+(in|notin)\s+\((.*)\)$/i.exec(raw))) {
      const values = m[3].split(",").map((v) => v.trim()).filter(Boolean);
      sel.match_expressions.push({ key: m[1], operator: m[2].toLowerCase() === "in" ? "In" : "NotIn", values });
    } else if ((m = /^([^=!\s]+)\s*=\s*(\S*)$/.exec(raw))) {
      sel.match_labels[m[1]] = m[2];
    } else if ((m = /^!\s*(\S+)$/.exec(raw))) {
      sel.match_expressions.push({ key: m[1], operator: "DoesNotExist", values: [] });
    } else if (/^\S+$/.test(raw)) {
      sel.match_expressions.push({ key: raw, operator: "Exists", values: [] });
    } else {
      throw new Error(`cannot read "${raw}": use key=value, key in (a, b), key notin (a), key or !key`);
    }
  }
  return sel;
}

function saveDraft() {
  localStorage.setItem(draftKey, JSON.stringify(draft));
  const ul = $("#draft-changes");
  if (!ul) return;
  ul.replaceChildren();
  if (!draft.length) ul.innerHTML = '<li class="muted">No changes yet.</li>';
  for (const c of draft) {
    const li = document.createElement("li");
    li.textContent = c.op === "remove" ? `Remove route ${c.name}`
      : `${routes.has(c.name) ? "Change" : "New"} route ${c.name}: priority ${c.route.priority}, ` +
        `selector ${selectorText(c.route.selector) || "*"}, pipelines ${c.route.pipelines.join(", ")}`;
    ul.append(li);
  }
  for (const g of nodes.values()) g.el.classList.toggle("node-draft", draft.some((c) => `route:${c.name}` === g.el.dataset.id));
}

function openEditor(name) {
  const current = draft.find((c) => c.name === name && c.op === "set")?.route ?? routes.get(name);
  $("#route-editor-title").textContent = name ? `Edit route ${name}` : "New route";
  $("#rf-name").value = name ?? "";
  $("#rf-name").readOnly = !!name;
  $("#rf-priority").value = current?.priority ?? 0;
  $("#rf-final").checked = !!current?.final;
  $("#rf-selector").value = selectorText(current?.selector);
  $("#rf-remove").hidden = !name || !routes.has(name);
  $("#rf-error").hidden = true;
  const box = $("#rf-pipelines");
  box.replaceChildren();
  for (const p of data.graph.pipelines) {
    const id = `rf-p-${p.name}`;
    const label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = ` ${p.name}`;
    const input = Object.assign(document.createElement("input"), { type: "checkbox", id, value: p.name });
    input.checked = current?.pipelines?.includes(p.name) ?? false;
    const div = document.createElement("div");
    div.append(input, label);
    box.append(div);
  }
  $("#route-editor").showModal();
}

$("#route-form")?.addEventListener("submit", (ev) => {
  const action = ev.submitter?.value;
  if (action === "cancel") return;
  const name = $("#rf-name").value.trim();
  const others = draft.filter((c) => c.name !== name);
  if (action === "remove") {
    draft = [...others, { op: "remove", name }];
  } else {
    let selector;
    try {
      selector = parseSelector($("#rf-selector").value);
    } catch (e) {
      ev.preventDefault();
      $("#rf-error").textContent = `Selector: ${e.message}`;
      $("#rf-error").hidden = false;
      return;
    }
    const old = routes.get(name) ?? {};
    // Keep the route's pipeline order; newly ticked ones go last.
    const ticked = [...$("#rf-pipelines").querySelectorAll("input:checked")].map((i) => i.value);
    const kept = (old.pipelines ?? []).filter((p) => ticked.includes(p));
    const pipelines = [...kept, ...ticked.filter((p) => !kept.includes(p))];
    const route = { ...old, priority: +$("#rf-priority").value, final: $("#rf-final").checked, selector, pipelines };
    delete route.file;
    draft = [...others, { op: "set", name, route }];
  }
  saveDraft();
});

for (const b of document.querySelectorAll(".edit-route")) b.addEventListener("click", () => openEditor(b.dataset.route));
$("#new-route")?.addEventListener("click", () => openEditor(null));
$("#discard-draft")?.addEventListener("click", () => {
  draft = [];
  saveDraft();
  $("#draft-result").replaceChildren();
});

function block(title, text) {
  const h = Object.assign(document.createElement("h3"), { textContent: title });
  const pre = document.createElement("pre");
  // A diff can scroll: keyboard users must be able to reach it.
  pre.tabIndex = 0;
  pre.setAttribute("aria-label", title);
  for (const line of text.split("\n")) {
    const span = document.createElement("span");
    if (line.startsWith("+") && !line.startsWith("+++")) span.className = "diff-add";
    if (line.startsWith("-") && !line.startsWith("---")) span.className = "diff-del";
    span.textContent = `${line}\n`;
    pre.append(span);
  }
  return [h, pre];
}

function showProblem(out, p) {
  const div = Object.assign(document.createElement("div"), { className: "error" });
  div.setAttribute("role", "alert");
  div.append(Object.assign(document.createElement("p"), { textContent: p.detail ?? String(p) }));
  const ul = document.createElement("ul");
  for (const e of p.errors ?? []) {
    ul.append(Object.assign(document.createElement("li"), { textContent: [e.file, e.key, e.message].filter(Boolean).join(": ") }));
  }
  div.append(ul);
  out.append(div);
}

function body() {
  return { base_commit: data.commit, changes: draft };
}

$("#preview-draft")?.addEventListener("click", async () => {
  const out = $("#draft-result");
  out.replaceChildren(Object.assign(document.createElement("p"), { textContent: "Computing the impact…" }));
  const r = await api("POST", "/api/v1/routing/drafts/preview", body());
  out.replaceChildren();
  if (r.status !== 200 || !r.body.valid) return showProblem(out, r.status === 200 ? { detail: "The draft is invalid:", errors: r.body.errors } : r.body);
  const imp = r.body.impact;
  const names = imp.affected.slice(0, 20).map((a) => a.name).join(", ");
  out.append(Object.assign(document.createElement("p"), {
    id: "impact-summary",
    textContent: `${imp.affected_count} of ${imp.collectors} collectors would get a new config` +
      `${imp.affected_count ? `: ${names}${imp.affected_count > 20 ? ", …" : ""}` : ""}.` +
      `${imp.pinned ? ` ${imp.pinned} pinned collector(s) are not affected.` : ""}` +
      `${r.body.stale ? " The served commit changed since this page loaded: reload before publishing." : ""}`,
  }));
  for (const f of r.body.files) out.append(...block(`TOML diff: ${f.file}`, f.diff));
  if (imp.render_diff) out.append(...block(`Render diff for ${imp.render_diff.name}`, imp.render_diff.diff));
});

$("#publish-draft")?.addEventListener("click", async () => {
  const out = $("#draft-result");
  const r = await api("POST", "/api/v1/routing/drafts/publish", { ...body(), message: $("#draft-message").value || null });
  out.replaceChildren();
  if (r.status !== 201) return showProblem(out, r.body);
  const commit = r.body.commit;
  out.append(Object.assign(document.createElement("p"), { id: "publish-result", textContent: `Published commit ${commit.slice(0, 12)}; waiting for the server to serve it…` }));
  for (let i = 0; i < 120; i++) {
    const s = await api("GET", "/api/v1/config/status");
    const attempt = s.body.last_attempt;
    if (attempt?.revision?.commit === commit) {
      if (!attempt.valid) return showProblem(out, { detail: "The commit was refused:", errors: attempt.errors });
      draft = [];
      saveDraft();
      $("#publish-result").textContent = `Commit ${commit.slice(0, 12)} is served. Reload to see the new graph.`;
      return;
    }
    await new Promise((res) => setTimeout(res, 500));
  }
});

$("#download-patch")?.addEventListener("click", async () => {
  const r = await fetch("/api/v1/routing/drafts/patch", {
    method: "POST", headers: { "content-type": "application/json" }, credentials: "same-origin",
    body: JSON.stringify({ ...body(), message: $("#draft-message").value || null }),
  });
  if (r.status !== 200) return showProblem($("#draft-result"), await r.json());
  const a = Object.assign(document.createElement("a"), { href: URL.createObjectURL(await r.blob()), download: "routes-draft.patch" });
  a.click();
  URL.revokeObjectURL(a.href);
});

saveDraft();
