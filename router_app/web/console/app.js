// llm-router operator console. No framework, no CDN; text from the router is only ever set as textContent.
"use strict";

const state = { key: sessionStorage.getItem("llm-router-key") || "", inflight: new Map(), loads: [], logLines: [] };
const LOG_KEEP = 2000;
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
  return node;
}

function headers(json) {
  const h = {};
  if (state.key) h.Authorization = "Bearer " + state.key;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

async function api(path, body) {
  const init = body === undefined ? { headers: headers(false) } : { method: "POST", headers: headers(true), body: JSON.stringify(body) };
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error((data.error && data.error.message) || response.status + " " + response.statusText);
  return data;
}

const secs = (v) => (v === null || v === undefined ? "" : v < 10 ? v.toFixed(2) + " s" : v.toFixed(0) + " s");
const clock = (t) => new Date(t * 1000).toLocaleTimeString();
const gib = (b) => (b === null || b === undefined ? "?"
  : b >= 1024 ** 3 ? (b / 1024 ** 3).toFixed(1) + " GiB" : (b / 1024 ** 2).toFixed(0) + " MiB");

// --- models and memory -------------------------------------------------------------------

let refreshing = null;
function refreshSoon() {
  if (!refreshing) refreshing = setTimeout(() => { refreshing = null; refreshModels(); }, 150);
}

async function refreshModels() {
  let list, health;
  try {
    [list, health] = await Promise.all([api("/models"), api("/health")]);
  } catch (error) {
    setConn(false, error.message);
    return;
  }
  const details = Object.fromEntries((health.models || []).map((m) => [m.id, m]));
  const body = $("model-table").tBodies[0];
  body.replaceChildren();
  for (const model of list.data) {
    const info = details[model.id] || {};
    const status = (model.status && model.status.value) || model.state || "?";
    const progress = model.status && model.status.progress;
    const load = progress ? el("span", { class: "progress", title: Math.round(progress.value * 100) + " %" },
      el("span", { style: "width:" + Math.round(progress.value * 100) + "%" })) : "";
    const notes = [];
    if (model.peer) notes.push(el("span", { class: "peer" }, "on " + model.peer));
    if (info.pinned) notes.push("pinned ");
    if (info.idle_unload_in_s !== undefined) notes.push("idle: unloads in " + secs(info.idle_unload_in_s) + " ");
    if (info.last_error) notes.push(el("span", { class: "error" }, info.last_error.split("\n")[0]));
    if (info.last_eviction) notes.push(" evicted: " + info.last_eviction.cause);
    const actions = model.peer ? "" : el("span", {},
      el("button", { onclick: () => act("/models/load", model.id), disabled: status === "loaded" || status === "loading" ? "" : undefined }, "Load"),
      " ",
      el("button", { onclick: () => act("/models/unload", model.id), disabled: status === "unloaded" ? "" : undefined }, "Unload"),
      " ",
      el("button", { onclick: () => pin(model.id, !info.pinned), title: "admin key" }, info.pinned ? "Unpin" : "Pin"));
    body.append(el("tr", { "data-model": model.id },
      el("td", {}, model.id),
      el("td", { class: "s-" + status, "data-status": status }, status + (info.phase && info.phase !== status ? " (" + info.phase + ")" : "")),
      el("td", {}, load, info.median_load_s ? " ~" + secs(info.median_load_s) : ""),
      el("td", {}, secs(info.last_load_s)),
      el("td", {}, String(info.inflight ?? "")),
      el("td", {}, ...notes),
      el("td", {}, actions)));
  }
  renderMemory(health.memory || []);
  sampleMemory(health.memory || []);
  setConn(true);
  if (list.data.some((m) => m.status && m.status.value === "loading")) setTimeout(refreshSoon, 1000);
}

function renderMemory(devices) {
  const box = $("memory");
  box.replaceChildren();
  for (const device of devices) {
    const bar = el("div", { class: "bar" });
    const capacity = device.capacity || device.used || 1;
    for (const held of device.models) {
      const bytes = held.measured ?? held.counted ?? 0;
      bar.append(el("span", {
        class: held.counted_from === "estimate" ? "estimated" : "",
        style: "width:" + Math.max(1, (100 * bytes) / capacity).toFixed(1) + "%",
        title: held.model + ": " + gib(held.measured) + " measured, " + gib(held.estimated) + " estimated, " + gib(held.counted) + " counted",
        "data-model": held.model,
      }, held.model));
    }
    // Each resident model's footprint as measured after its load beside the estimate from its files, and which of
    // them (or the config's `memory`) the scheduler counts.
    const legend = el("ul", { class: "held" }, ...device.models.map((held) => el("li", { "data-model": held.model },
      held.model + (held.retiring ? " (retiring)" : "") + ": measured " + gib(held.measured) + ", estimated " +
      gib(held.estimated) + ", counted " + gib(held.counted) + " from the " + (held.counted_from || "?"))));
    box.append(el("div", { class: "device", "data-device": device.device },
      el("div", {}, device.device + " (" + device.kind + "): " + gib(device.used) + " of " + gib(device.capacity) + ", free " + gib(device.free)),
      bar, legend));
  }
}

// Memory over time: one sample of each device's used share per refresh (events, and every 5 s).
const memorySamples = [];
function sampleMemory(devices) {
  const used = devices.filter((d) => d.capacity).map((d) => d.used / d.capacity);
  if (!used.length) return;
  memorySamples.push(Math.max(...used));
  if (memorySamples.length > 120) memorySamples.shift();
  const svg = $("memory-chart");
  const points = memorySamples.map((v, i) => (i * 300) / 119 + "," + (58 - 56 * v).toFixed(1)).join(" ");
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points);
  const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
  title.textContent = "busiest device's memory in use, last " + memorySamples.length + " samples";
  line.append(title);
  svg.replaceChildren(line);
}

async function pin(model, pinned) {
  try { await api("/admin/pin", { model, pinned }); } catch (error) { alert("pin " + model + ": " + error.message); }
  refreshSoon();
}

async function act(path, model) {
  try { await api(path, { model }); } catch (error) { alert(path + " " + model + ": " + error.message); }
  refreshSoon();
}

// --- activity ----------------------------------------------------------------------------

function renderInflight() {
  const body = $("inflight-table").tBodies[0];
  body.replaceChildren();
  for (const r of state.inflight.values()) {
    body.append(el("tr", { "data-request": String(r.id) },
      el("td", {}, String(r.id)), el("td", {}, clock(r.started)), el("td", {}, r.model), el("td", {}, r.api),
      el("td", {}, r.client), el("td", {}, secs(r.waited_s)),
      el("td", {}, el("button", { onclick: () => cancel(r.id) }, "Cancel"))));
  }
}

async function cancel(id) {
  try { await api("/console/requests/" + id + "/cancel", {}); } catch (error) { alert("cancel " + id + ": " + error.message); }
}

function addRecent(r) {
  const body = $("recent-table").tBodies[0];
  const tokens = (r.prompt_tokens ?? "?") + " / " + (r.completion_tokens ?? "?");
  body.prepend(el("tr", { "data-request": String(r.id), "data-outcome": r.outcome },
    el("td", {}, String(r.id)), el("td", {}, clock(r.started)), el("td", {}, r.model), el("td", {}, r.api),
    el("td", {}, r.client), el("td", {}, secs(r.waited_s)), el("td", {}, secs(r.ttft_s)), el("td", {}, tokens),
    el("td", { class: "tps" }, r.tokens_per_s ? r.tokens_per_s.toFixed(1) : ""), el("td", {}, r.outcome)));
  while (body.rows.length > 200) body.deleteRow(-1);
}

// --- events and logs ---------------------------------------------------------------------

function addEvent(e) {
  const body = $("event-table").tBodies[0];
  const what = e.action + (e.ok === false ? " FAILED" : "");
  body.prepend(el("tr", {}, el("td", {}, clock(e.time)), el("td", {}, e.model), el("td", {}, what),
    el("td", {}, e.cause ? e.cause + (e.reason ? ": " + e.reason : "") : (e.reason || "")), el("td", {}, secs(e.seconds))));
  while (body.rows.length > 300) body.deleteRow(-1);
  if ((e.action === "load" || e.action === "wake") && e.ok) {
    state.loads.push(e.seconds);
    state.loads = state.loads.slice(-30);
    drawLoads();
  }
}

function drawLoads() {
  const svg = $("load-chart");
  svg.replaceChildren();
  const max = Math.max(...state.loads, 0.001);
  const width = 300 / 30;
  state.loads.forEach((s, i) => {
    const h = (58 * s) / max;
    const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    rect.setAttribute("x", String(i * width + 1));
    rect.setAttribute("y", String(60 - h));
    rect.setAttribute("width", String(width - 2));
    rect.setAttribute("height", String(h));
    const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    title.textContent = secs(s);
    rect.append(title);
    svg.append(rect);
  });
}

function addLog(e) {
  const select = $("log-source");
  if (![...select.options].some((o) => o.value === e.source)) select.append(el("option", { value: e.source }, e.source));
  state.logLines.push(e);
  if (state.logLines.length > LOG_KEEP) state.logLines.shift();
  const wanted = select.value;
  if (!wanted || wanted === e.source) appendLogLine(e);
}

function appendLogLine(e) {
  const pre = $("log-lines");
  pre.append(document.createTextNode("[" + e.source + "] " + e.line + "\n"));
  while (pre.childNodes.length > LOG_KEEP) pre.removeChild(pre.firstChild);
  if ($("log-follow").checked) pre.scrollTop = pre.scrollHeight;
}

function redrawLogs() {
  $("log-lines").replaceChildren();
  const wanted = $("log-source").value;
  for (const e of state.logLines) if (!wanted || wanted === e.source) appendLogLine(e);
}

function handle(e) {
  switch (e.kind) {
    case "snapshot":
      state.inflight = new Map(e.inflight.map((r) => [r.id, r]));
      renderInflight();
      $("recent-table").tBodies[0].replaceChildren();
      $("event-table").tBodies[0].replaceChildren();
      $("log-lines").replaceChildren();
      state.logLines = [];
      state.loads = [];
      for (const r of [...e.recent].reverse()) addRecent(r);
      break;
    case "model": refreshSoon(); break;
    case "switch": addEvent(e); refreshSoon(); break;
    case "log": addLog(e); break;
    case "request": addRecent(e.request); refreshSoon(); break;
    case "inflight":
      if (e.action === "started") state.inflight.set(e.request.id, e.request);
      else state.inflight.delete(e.id);
      renderInflight();
      break;
  }
}

// --- the event stream (fetch, not EventSource: it carries the Authorization header) ------------

function setConn(ok, why) {
  const badge = $("conn");
  badge.className = "badge " + (ok ? "ok" : "bad");
  badge.textContent = ok ? "live" : "offline" + (why ? ": " + why : "");
}

let streamAbort = null;
async function follow() {
  if (streamAbort) streamAbort.abort();
  const abort = new AbortController();
  streamAbort = abort;
  let delay = 500;
  while (!abort.signal.aborted) {
    try {
      const response = await fetch("/console/events", { headers: headers(false), signal: abort.signal });
      if (!response.ok) throw new Error(response.status + " " + response.statusText);
      setConn(true);
      delay = 500;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          for (const line of frame.split("\n")) {
            if (line.startsWith("data: ")) {
              handle(JSON.parse(line.slice(6)));
            }
          }
        }
      }
    } catch (error) {
      if (abort.signal.aborted) return;
      setConn(false, error.message);
    }
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 10000);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("key").value = state.key;
  $("keyform").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("key").value.trim();
    sessionStorage.setItem("llm-router-key", state.key);
    refreshModels();
    follow();
  });
  $("log-source").addEventListener("change", redrawLogs);
  refreshModels();
  follow();
  setInterval(refreshModels, 5000);  // countdowns and the memory chart move between events too
});
