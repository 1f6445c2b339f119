// LinkMesh console enhancements. Pages work without this file; it adds
// local times, live updates over Server-Sent Events, copy buttons and
// confirmations. No framework, no inline script (the CSP forbids it).

const rtf = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });

function relative(ms) {
  const s = Math.round((ms - Date.now()) / 1000);
  const abs = Math.abs(s);
  if (abs < 60) return rtf.format(s, "second");
  if (abs < 3600) return rtf.format(Math.round(s / 60), "minute");
  if (abs < 86400) return rtf.format(Math.round(s / 3600), "hour");
  return rtf.format(Math.round(s / 86400), "day");
}

// <time datetime="…Z" data-rel> : local time (or "2 min ago"), UTC on hover.
export function localTimes(root = document) {
  for (const t of root.querySelectorAll("time[datetime]")) {
    const ms = Date.parse(t.getAttribute("datetime"));
    if (Number.isNaN(ms)) continue;
    const d = new Date(ms);
    t.title = d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
    t.textContent = t.hasAttribute("data-rel") ? relative(ms) : d.toLocaleString();
  }
}

// [data-live="/events/…"]: the server sends JSON objects of key -> text;
// elements with a matching data-key get the new text. The server
// coalesces updates (at most about one per second).
function live() {
  for (const el of document.querySelectorAll("[data-live]")) {
    const src = new EventSource(el.getAttribute("data-live"));
    src.addEventListener("update", (ev) => {
      let data;
      try { data = JSON.parse(ev.data); } catch { return; }
      for (const [key, value] of Object.entries(data)) {
        for (const target of el.querySelectorAll(`[data-key="${CSS.escape(key)}"]`)) {
          if (target.textContent !== String(value)) target.textContent = String(value);
          // data-value drives the colour (CSS), so it follows the text.
          if (target.hasAttribute("data-value")) target.setAttribute("data-value", String(value));
        }
      }
      el.dispatchEvent(new CustomEvent("live-update", { detail: data }));
    });
    src.addEventListener("reload", () => window.location.reload());
  }
}

// <button data-copy="#id">: copy the text of #id.
function copyButtons() {
  for (const b of document.querySelectorAll("button[data-copy]")) {
    b.hidden = false;
    b.addEventListener("click", async () => {
      const src = document.querySelector(b.getAttribute("data-copy"));
      if (!src) return;
      try {
        await navigator.clipboard.writeText(src.textContent.trim());
        b.textContent = "Copied";
      } catch {
        const r = document.createRange();
        r.selectNodeContents(src);
        const sel = window.getSelection();
        sel.removeAllRanges();
        sel.addRange(r);
        b.textContent = "Selected: press Ctrl+C";
      }
    });
  }
}

// <form data-confirm="Deregister collector x?">, or a submit button with
// its own data-confirm: ask before submitting. Delegated, so forms that a
// refresh (below) puts in the page are covered too.
function confirmations() {
  document.addEventListener("submit", (ev) => {
    const f = ev.target;
    const q = ev.submitter?.getAttribute("data-confirm") ?? f.getAttribute("data-confirm");
    if (q && !window.confirm(q)) ev.preventDefault();
  });
}

// <div data-refresh="/x/live">: every 2 s while the page is visible, fetch
// that server-rendered fragment and swap it in when it changed. Not while
// the user is in a control inside it (a half-typed reason, a focused
// button): the swap waits until focus leaves.
const REFRESH_MS = 2000;
function refreshers() {
  for (const el of document.querySelectorAll("[data-refresh]")) {
    const url = el.getAttribute("data-refresh");
    let last = null;
    const tick = async () => {
      if (!document.hidden && !el.contains(document.activeElement)) {
        try {
          const r = await fetch(url, { credentials: "same-origin" });
          // Redirected to the login page: the session ended; stop.
          if (r.redirected || !r.ok) return;
          const html = await r.text();
          if (html !== last && !el.contains(document.activeElement)) {
            el.innerHTML = html;
            localTimes(el);
            last = html;
          }
        } catch {}
      }
      setTimeout(tick, REFRESH_MS);
    };
    setTimeout(tick, REFRESH_MS);
  }
}

function start() {
  localTimes();
  setInterval(() => localTimes(), 30000);
  live();
  copyButtons();
  confirmations();
  refreshers();
  document.documentElement.dataset.ready = "1";
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
