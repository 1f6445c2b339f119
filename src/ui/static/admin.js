// Administration pages: the audit log's time filters are typed in the
// browser's zone and sent as UTC. Without this script the inputs are read
// as UTC (the page says so).

function pad(n) {
  return String(n).padStart(2, "0");
}

// A Date as a datetime-local value in the browser's zone.
function localValue(d) {
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function utcInputs() {
  const inputs = document.querySelectorAll("input[data-utc]");
  if (inputs.length === 0) return;
  // The server renders UTC values; show them in the browser's zone.
  for (const i of inputs) {
    if (i.value) {
      const d = new Date(`${i.value}Z`);
      if (!Number.isNaN(d.getTime())) i.value = localValue(d);
    }
  }
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  for (const h of document.querySelectorAll("[data-zone-hint]")) h.textContent = `Times are in your zone (${zone}).`;
  for (const form of new Set([...inputs].map((i) => i.form))) {
    form.addEventListener("submit", () => {
      for (const i of form.querySelectorAll("input[data-utc]")) {
        if (!i.value) continue;
        const d = new Date(i.value); // a datetime-local value is local time
        if (Number.isNaN(d.getTime())) continue;
        // Send UTC under the input's name; the visible input keeps its value.
        const hidden = document.createElement("input");
        hidden.type = "hidden";
        hidden.name = i.name;
        hidden.value = d.toISOString().replace(/\.\d+Z$/, "Z");
        i.removeAttribute("name");
        form.append(hidden);
      }
    });
  }
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", utcInputs);
else utcInputs();
