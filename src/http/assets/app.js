// nova's dashboard: one page, hash routes, live through server-sent events.
// No framework and no inline script (the Content-Security-Policy forbids it);
// charts are SVG drawn here.
"use strict";

const state = { session: null, view: null, events: null, timers: {} };
const $ = (sel, root = document) => root.querySelector(sel);

// ---- DOM and formatting helpers ----

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) el.setAttribute(k, v);
  for (const c of children.flat()) if (c) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

// A status as a class name: `not run` is `s-not-run`.
const cls = (status) => String(status).replace(/\s+/g, "-");
// A run's task counts, in the order a run goes through them.
const TASK_ORDER = ["running", "done", "pending", "failed", "denied", "interrupted", "skipped", "waiting", "not run"];
const taskCounts = (counts) => Object.entries(counts).sort(([a], [b]) => {
  const at = (k) => (TASK_ORDER.indexOf(k) + 1 || TASK_ORDER.length + 1);
  return at(a) - at(b) || a.localeCompare(b);
});
const badge = (status) => h("span", { class: `badge s-${cls(status)}`, "data-status": status }, status);
const time = (ms) => (ms ? new Date(ms).toLocaleString() : "");
const clock = (ms) => (ms ? new Date(ms).toLocaleTimeString() : "");
function duration(ms) {
  if (ms === null || ms === undefined) return "";
  if (ms < 1000) return `${ms} ms`;
  const sec = ms / 1000;
  if (sec < 60) return `${sec.toFixed(1)} s`;
  const m = Math.floor(sec / 60);
  if (m < 60) return `${m} min ${Math.round(sec % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}
function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function toast(message, reasons, info) {
  const box = $("#toast");
  box.replaceChildren(h("strong", {}, message));
  if (reasons && reasons.length) box.append(h("ul", { id: "reasons" }, reasons.map((r) => h("li", {}, r))));
  box.className = info ? "info" : "";
  box.hidden = false;
  clearTimeout(state.timers.toast);
  state.timers.toast = setTimeout(() => { box.hidden = true; }, info ? 3000 : 12000);
}

// ---- the API ----

async function api(path, options = {}) {
  const headers = { Accept: "application/json" };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  if (options.method && options.method !== "GET" && state.session && state.session.csrf_token) {
    headers["X-CSRF-Token"] = state.session.csrf_token;
  }
  const res = await fetch(`/api/v1${path}`, {
    method: options.method || "GET",
    headers,
    credentials: "same-origin",
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  if (res.status === 204) return null;
  const body = await res.json().catch(() => ({ error: `${res.status} ${res.statusText}` }));
  if (!res.ok) {
    const err = new Error(body.error || res.statusText);
    err.status = res.status;
    err.field = body.field;
    err.reasons = body.reasons || [];
    throw err;
  }
  return body;
}

async function act(label, path, body) {
  try {
    const result = await api(path, { method: "POST", body: body === undefined ? {} : body });
    toast(label, null, true);
    return result;
  } catch (err) {
    if (err.status === 401) return showLogin();
    toast(err.message, err.reasons);
    return null;
  }
}

// ---- session and live updates ----

async function start() {
  $("#sign-out").addEventListener("click", async () => {
    await api("/session", { method: "DELETE" }).catch(() => {});
    location.reload();
  });
  window.addEventListener("hashchange", route);
  state.session = await api("/session");
  if (!state.session.signed_in) return showLogin();
  signedIn();
}

function signedIn() {
  $("#who").textContent = state.session.operator || "";
  $("#sign-out").hidden = state.session.mode !== "token";
  $("#nav").hidden = false;
  listen();
  route();
}

function showLogin() {
  $("#nav").hidden = true;
  if (state.events) state.events.close();
  const input = h("input", { id: "token", type: "password", autocomplete: "current-password", required: true, "aria-label": "Token" });
  const form = h("form", { id: "login", class: "panel login" },
    h("h1", {}, "Sign in to nova"),
    h("p", { class: "muted" }, "This server asks for its token (the file given to --token-file)."),
    h("label", {}, "Token", input),
    h("p", {}, h("button", { id: "sign-in", class: "primary", type: "submit" }, "Sign in")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      state.session = await api("/session", { method: "POST", body: { token: input.value } });
      signedIn();
    } catch (err) {
      toast(err.message);
      input.select();
    }
  });
  $("#main").replaceChildren(form);
  input.focus();
}

function listen() {
  if (state.events) state.events.close();
  const es = new EventSource("/api/v1/events");
  state.events = es;
  es.onopen = () => { $("#live").textContent = "live"; $("#live").classList.add("on"); };
  es.onerror = () => { $("#live").textContent = "reconnecting"; $("#live").classList.remove("on"); };
  for (const topic of ["runs", "run", "queue", "host", "audit", "resync"]) {
    es.addEventListener(topic, (e) => {
      const data = e.data ? JSON.parse(e.data) : {};
      if (state.view && state.view.on) state.view.on(topic, data);
    });
  }
}

// A refresh that runs at most every `ms`, with the last call always honoured.
function throttle(fn, ms) {
  let last = 0, pending = null;
  return () => {
    const wait = last + ms - Date.now();
    if (wait <= 0) { last = Date.now(); fn(); return; }
    if (!pending) pending = setTimeout(() => { pending = null; last = Date.now(); fn(); }, wait);
  };
}

// ---- routing ----

const routes = [
  [/^#\/runs\/([^/]+)$/, runView, "runs"],
  [/^#\/queues\/([^/]+)$/, queueView, "queues"],
  [/^#\/tasks\/([^/]+)$/, taskView, "queues"],
  [/^#\/queues$/, queuesView, "queues"],
  [/^#\/host$/, hostView, "host"],
  [/^#\/governance$/, governanceView, "governance"],
  [/^#\/runs$/, runsView, "runs"],
];

function route() {
  if (!state.session || !state.session.signed_in) return;
  const hash = location.hash || "#/runs";
  for (const [re, view, section] of routes) {
    const m = hash.match(re);
    if (!m) continue;
    for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.section === section);
    const main = $("#main");
    main.replaceChildren();
    state.view = view(main, ...m.slice(1).map(decodeURIComponent)) || null;
    return;
  }
  location.hash = "#/runs";
}

// A view's load: a failure shows above the view (which stays, so the next
// live update can fill it in) and clears on the next success.
function loader(main, fn) {
  return async () => {
    const old = main.querySelector(":scope > .load-error");
    try {
      await fn();
      if (old) old.remove();
    } catch (err) {
      if (err.status === 401) return showLogin();
      const box = h("div", { class: "panel load-error" }, h("strong", {}, "Cannot load: "), err.message);
      if (old) old.replaceWith(box); else main.prepend(box);
    }
  };
}

// ---- runs ----

function runsView(main) {
  const form = h("form", { id: "start-run", class: "inline" });
  const list = h("div", { class: "panel" });
  main.append(h("h1", {}, "Runs"), h("div", { class: "panel" }, h("h2", {}, "Start a run"), form), list);
  api("/plans").then((plans) => buildStartForm(form, plans)).catch((e) => form.append(e.message));
  const load = loader(main, async () => {
    const runs = await api("/runs?limit=200");
    list.replaceChildren(runs.length ? runsTable(runs) : h("p", { class: "muted" }, "No runs yet."));
  });
  load();
  return { on: (topic) => { if (topic === "runs" || topic === "resync") load(); } };
}

function runsTable(runs) {
  return h("table", { id: "runs" },
    h("thead", {}, h("tr", {}, ["Run", "Status", "Plan", "Mode", "Tasks", "Started", "Duration"].map((t) => h("th", {}, t)))),
    h("tbody", {}, runs.map((r) => h("tr", { "data-run": r.id },
      h("td", { class: "mono" }, h("a", { href: `#/runs/${encodeURIComponent(r.id)}` }, r.id)),
      h("td", {}, badge(r.status)),
      h("td", {}, r.plan, r.apply ? h("span", { class: "muted" }, " · apply") : ""),
      h("td", {}, r.mode),
      h("td", {}, taskCounts(r.tasks).map(([k, v]) => h("span", { class: `s-${cls(k)}` }, `${v} ${k} `))),
      h("td", {}, time(r.started_at)),
      h("td", {}, duration(r.duration_ms))))));
}

function buildStartForm(form, plans) {
  const plan = h("select", { id: "plan", name: "plan" }, plans.map((p) => h("option", { value: p.name, selected: p.default }, p.name)));
  const agents = h("input", { id: "agents", name: "agents", placeholder: "all agents", list: "agent-names", size: 24 });
  const names = h("datalist", { id: "agent-names" });
  const phases = h("input", { id: "phases", name: "phases", placeholder: "all phases", size: 16 });
  const mode = h("select", { id: "mode", name: "mode" }, h("option", { value: "" }, "workspace default"), h("option", { value: "sequential" }, "sequential"), h("option", { value: "parallel" }, "parallel"));
  const jobs = h("input", { id: "jobs", name: "jobs", type: "number", min: 1, max: 1024, placeholder: "cores", size: 5 });
  const apply = h("input", { id: "apply", type: "checkbox" });
  const keep = h("input", { id: "keep-going", type: "checkbox" });
  const fill = () => {
    const p = plans.find((x) => x.name === plan.value);
    names.replaceChildren(...(p ? p.agents : []).map((a) => h("option", { value: a })));
    phases.placeholder = p ? p.phases.join(", ") : "";
  };
  plan.addEventListener("change", fill);
  fill();
  const words = (v) => v.split(/[\s,]+/).filter(Boolean);
  form.append(h("label", {}, "Plan", plan), h("label", {}, "Agents", agents, names), h("label", {}, "Phases", phases),
    h("label", {}, "Mode", mode), h("label", {}, "Jobs", jobs),
    h("label", { class: "check" }, apply, "apply fixes"), h("label", { class: "check" }, keep, "keep going"),
    h("button", { id: "start", class: "primary", type: "submit" }, "Start run"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = { plan: plan.value, agents: words(agents.value), phases: words(phases.value), apply: apply.checked, keep_going: keep.checked };
    if (mode.value) body.mode = mode.value;
    if (jobs.value) body.jobs = Number(jobs.value);
    const started = await act("Run started", "/runs", body);
    if (started) location.hash = `#/runs/${encodeURIComponent(started.id)}`;
  });
}

function runView(main, id) {
  const head = h("div", {});
  const timeline = h("div", { class: "panel" });
  const graph = h("div", { class: "panel" });
  const tasks = h("div", { class: "panel" });
  const logBox = h("div", { class: "panel", id: "log-panel", hidden: true });
  const messages = h("div", { class: "panel" });
  const report = h("div", { class: "panel report", id: "report", hidden: true });
  main.append(head, h("h2", {}, "Timeline"), timeline, logBox, h("h2", {}, "Tasks"), tasks,
    h("h2", {}, "Agents and dependencies"), graph, h("h2", {}, "Hub messages"), messages, report);
  let openLog = null;
  const showLog = async (agent, task) => {
    openLog = { agent, task };
    const log = await api(`/runs/${encodeURIComponent(id)}/log?agent=${encodeURIComponent(agent)}&task=${encodeURIComponent(task)}`);
    logBox.hidden = false;
    logBox.replaceChildren(h("div", { class: "row" }, h("strong", {}, `${log.agent} / ${log.task}`), log.running ? h("span", { class: "s-running" }, "live") : "",
      log.truncated ? h("span", { class: "muted" }, "(last part)") : "", h("span", { class: "spacer" }),
      h("button", { onclick: () => { openLog = null; logBox.hidden = true; } }, "Close")),
      h("pre", { id: "log" }, log.text || "(no output)"));
  };
  const load = loader(main, async () => {
    const [view, msgs] = await Promise.all([api(`/runs/${encodeURIComponent(id)}`), api(`/runs/${encodeURIComponent(id)}/messages`)]);
    const r = view.run;
    const controls = [];
    if (r.status === "running" && r.live) controls.push(h("button", { id: "cancel-run", class: "danger", onclick: () => act("Run asked to stop", `/runs/${encodeURIComponent(r.id)}/cancel`) }, "Cancel run"));
    if (r.status === "interrupted" || (r.status === "running" && !r.live)) controls.push(h("button", { id: "resume-run", class: "primary", onclick: () => act("Run resumed", `/runs/${encodeURIComponent(r.id)}/resume`) }, "Resume"));
    head.replaceChildren(h("h1", {}, h("a", { href: "#/runs" }, "Runs"), " / ", h("span", { class: "mono" }, r.id)),
      h("div", { class: "row panel" }, h("span", { id: "run-status" }, badge(r.status)),
        r.abandoned ? h("span", { id: "run-gone", class: "s-failed" }, "its process is gone") : "",
        h("span", {}, `plan ${r.plan}`), h("span", {}, r.mode),
        r.apply ? h("span", {}, "applying fixes") : h("span", { class: "muted" }, "checks only"),
        h("span", {}, `started ${time(r.started_at)}`), h("span", {}, duration(r.duration_ms)),
        h("span", {}, taskCounts(r.tasks).map(([k, v]) => h("span", { class: `s-${cls(k)}` }, `${v} ${k} `))), h("span", { class: "spacer" }), ...controls));
    timeline.replaceChildren(view.tasks.length ? drawTimeline(view.tasks, r, showLog) : h("p", { class: "muted" }, "No task has started yet."));
    tasks.replaceChildren(tasksTable(view.tasks, showLog));
    graph.replaceChildren(view.agents.length ? drawGraph(view.agents, view.tasks) : h("p", { class: "muted" }, "The run's agents no longer resolve in the blueprints."));
    messages.replaceChildren(msgs.length ? h("table", { id: "messages" }, h("tbody", {}, msgs.slice(-300).map((m) => h("tr", {},
      h("td", {}, clock(m.at)), h("td", {}, m.kind), h("td", {}, m.agent), h("td", { class: "wrap mono" }, JSON.stringify(m.body)))))) : h("p", { class: "muted" }, "No messages."));
    if (view.report_html) {
      report.hidden = false;
      // The server renders the report from Markdown with raw HTML turned into text.
      const doc = new DOMParser().parseFromString(view.report_html, "text/html");
      report.replaceChildren(h("h2", {}, "Report"), ...doc.body.childNodes);
    }
    if (openLog) await showLog(openLog.agent, openLog.task);
  });
  load();
  const refresh = throttle(load, 400);
  // A run started from this page may not be recorded yet: it appears with a `runs` event.
  return { on: (topic, data) => { if ((topic === "run" && data.id === id) || topic === "runs" || topic === "resync") refresh(); } };
}

function tasksTable(tasks, showLog) {
  // A GPU column only where a GPU was seen: on other hosts it would be empty.
  const gpu = tasks.some((t) => t.gpu_memory !== null && t.gpu_memory !== undefined);
  const gpuCell = (t) => (t.gpu_memory === null || t.gpu_memory === undefined ? "" :
    bytes(t.gpu_memory) + (Number.isFinite(t.gpu_util) ? `, ${t.gpu_util.toFixed(0)}%` : ""));
  const heads = ["Agent", "Task", "Phase", "Status", "Attempts", "Took", "Peak memory", ...(gpu ? ["GPU memory, use"] : []), "Detail", ""];
  return h("table", { id: "run-tasks" },
    h("thead", {}, h("tr", {}, heads.map((t) => h("th", {}, t)))),
    h("tbody", {}, tasks.map((t) => h("tr", { "data-task": `${t.agent}/${t.task}`, "data-status": t.status },
      h("td", {}, t.agent), h("td", { class: "mono" }, t.task), h("td", {}, t.phase), h("td", {}, badge(t.status)),
      h("td", {}, t.attempts), h("td", {}, t.started_at ? duration((t.finished_at || Date.now()) - t.started_at) : ""),
      h("td", { class: "hide-narrow" }, bytes(t.peak_rss)), gpu ? h("td", { class: "hide-narrow gpu" }, gpuCell(t)) : null,
      h("td", { class: "wrap" }, t.detail),
      h("td", {}, t.attempts > 0 ? h("button", { class: "link log-button", onclick: () => showLog(t.agent, t.task) }, "log") : "")))));
}

// Each task a bar from its start to its end, one row per agent, so what ran side by side shows.
function drawTimeline(tasks, run, showLog) {
  const started = tasks.filter((t) => t.started_at);
  const t0 = Math.min(run.started_at, ...started.map((t) => t.started_at));
  const t1 = Math.max(run.finished_at || Date.now(), ...started.map((t) => t.finished_at || Date.now()));
  const agents = [...new Set(tasks.map((t) => t.agent))];
  const rowH = 18, left = 150, width = 1000, top = 18;
  const x = (ms) => left + ((ms - t0) / Math.max(1, t1 - t0)) * (width - left - 10);
  const svg = s("svg", { id: "timeline", viewBox: `0 0 ${width} ${top + agents.length * rowH + 6}`, width: "100%", role: "img", "aria-label": "Task timeline" });
  for (let i = 0; i <= 4; i++) {
    const ms = t0 + ((t1 - t0) * i) / 4;
    svg.append(s("line", { class: "axis", x1: x(ms), x2: x(ms), y1: 12, y2: top + agents.length * rowH }), s("text", { x: x(ms) + 2, y: 10 }, `+${duration(Math.round(ms - t0))}`));
  }
  agents.forEach((a, i) => svg.append(s("text", { x: 4, y: top + i * rowH + 12 }, a.length > 22 ? a.slice(0, 21) + "…" : a)));
  for (const t of tasks) {
    if (!t.started_at) continue;
    const row = agents.indexOf(t.agent);
    const bar = s("rect", { class: `bar bar-${cls(t.status)}`, "data-task": `${t.agent}/${t.task}`, "data-status": t.status,
      x: x(t.started_at), y: top + row * rowH + 3, width: Math.max(2, x(t.finished_at || Date.now()) - x(t.started_at)), height: rowH - 6, rx: 2, tabindex: 0 },
      s("title", {}, `${t.agent} / ${t.task}: ${t.status}, ${duration((t.finished_at || Date.now()) - t.started_at)}`));
    bar.addEventListener("click", () => showLog(t.agent, t.task));
    bar.addEventListener("keydown", (e) => { if (e.key === "Enter") showLog(t.agent, t.task); });
    svg.append(bar);
  }
  return svg;
}

// Agents in columns by dependency depth, edges from each dependency.
function drawGraph(agents, tasks) {
  const byName = new Map(agents.map((a) => [a.name.toLowerCase(), a]));
  // A dependency names an agent, or one task of it (`nova/python`).
  const agentOf = (dep) => dep.split("/")[0].toLowerCase();
  const depth = new Map();
  const depthOf = (a, seen = new Set()) => {
    const key = a.name.toLowerCase();
    if (depth.has(key)) return depth.get(key);
    if (seen.has(key)) return 0;
    seen.add(key);
    const d = Math.max(-1, ...a.depends_on.map((n) => byName.get(agentOf(n))).filter(Boolean).map((b) => depthOf(b, seen))) + 1;
    depth.set(key, d);
    return d;
  };
  agents.forEach((a) => depthOf(a));
  const columns = [];
  for (const a of agents) (columns[depth.get(a.name.toLowerCase())] ||= []).push(a);
  const boxW = 170, boxH = 26, gapX = 50, gapY = 10;
  const pos = new Map();
  columns.forEach((col, c) => col.forEach((a, r) => pos.set(a.name.toLowerCase(), { x: 8 + c * (boxW + gapX), y: 8 + r * (boxH + gapY) })));
  const height = 16 + Math.max(...columns.map((c) => c.length)) * (boxH + gapY);
  const width = 16 + columns.length * (boxW + gapX);
  const svg = s("svg", { id: "graph", viewBox: `0 0 ${width} ${height}`, width: Math.min(width, 1360), role: "img", "aria-label": "Agent dependencies" });
  const status = (a) => {
    const mine = tasks.filter((t) => t.agent.toLowerCase() === a.name.toLowerCase()).map((t) => t.status);
    if (mine.includes("failed") || mine.includes("denied")) return "failed";
    if (mine.includes("running")) return "running";
    if (mine.length && mine.every((st) => st === "done" || st === "skipped")) return "done";
    return "pending";
  };
  for (const a of agents) {
    const to = pos.get(a.name.toLowerCase());
    for (const d of a.depends_on) {
      const from = pos.get(agentOf(d));
      if (!from) continue;
      const x1 = from.x + boxW, y1 = from.y + boxH / 2, x2 = to.x, y2 = to.y + boxH / 2;
      svg.append(s("path", { class: "edge", d: `M${x1},${y1} C${x1 + gapX / 2},${y1} ${x2 - gapX / 2},${y2} ${x2},${y2}` }));
    }
  }
  for (const a of agents) {
    const p = pos.get(a.name.toLowerCase());
    const st = status(a);
    svg.append(s("g", { class: "node", "data-agent": a.name, "data-status": st },
      s("rect", { x: p.x, y: p.y, width: boxW, height: boxH, rx: 5 }),
      s("rect", { class: `bar-${st}`, x: p.x, y: p.y, width: 5, height: boxH, rx: 2 }),
      s("text", { x: p.x + 11, y: p.y + 17 }, a.name.length > 22 ? a.name.slice(0, 21) + "…" : a.name),
      s("title", {}, `${a.name} (${a.role}, phase ${a.phase}): ${st}`)));
  }
  return svg;
}

// ---- queues ----

function sparkline(values, cls = "spark", w = 220, hgt = 40) {
  const max = Math.max(1e-9, ...values);
  const pts = values.map((v, i) => `${(i / Math.max(1, values.length - 1)) * w},${hgt - 2 - (v / max) * (hgt - 4)}`);
  return s("svg", { viewBox: `0 0 ${w} ${hgt}`, width: w, height: hgt, role: "img" },
    values.length > 1 ? s("polyline", { class: cls, points: pts.join(" ") }) : s("text", { x: 4, y: hgt / 2 }, "collecting…"));
}

const STATUSES = ["PENDING", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED"];

// A worker's process: its host and pid, or, for a polling worker, whose
// pid is not known (0), the worker itself.
const procKey = (w) => (w.pid ? `${w.host}/${w.pid}` : `${w.host}/poller/${w.id}`);

// One row per worker process, its slots' tasks together.
function workersTable(workers) {
  if (!workers.length) return h("p", { class: "muted" }, "No workers connected.");
  const procs = new Map();
  for (const w of workers) {
    const key = procKey(w);
    if (!procs.has(key)) procs.set(key, { ...w, tasks: [], since: w.connected_at });
    const p = procs.get(key);
    p.tasks.push(...w.tasks);
    p.since = Math.min(p.since, w.connected_at);
  }
  const now = Date.now();
  return h("table", { id: "workers" },
    h("thead", {}, h("tr", {}, ["Host", "PID", "Version", "Busy", "Queues", "Connected", "Tasks"].map((c) => h("th", {}, c)))),
    h("tbody", {}, [...procs.values()].map((p) => h("tr", { "data-pid": p.pid },
      h("td", {}, p.host), h("td", {}, p.pid || "–"), h("td", {}, p.version || "–"),
      h("td", { "data-busy": p.tasks.length }, `${p.tasks.length} / ${p.concurrency || "?"}`),
      h("td", {}, p.queues.length ? p.queues.join(", ") : "all"),
      h("td", { title: time(p.since) }, `${duration(now - p.since)} ago`),
      h("td", { class: "mono" }, p.tasks.map((id) => h("a", { href: `#/tasks/${encodeURIComponent(id)}` }, id.slice(0, 13) + "… ")))))));
}

function queuesView(main) {
  const stats = h("div", { class: "grid" });
  const table = h("div", { class: "panel" });
  const fleet = h("div", { class: "panel" });
  main.append(h("h1", {}, "Queues"), stats, table, h("h2", {}, "Workers"), fleet);
  let workers = null, overview = null;
  const loadWorkers = throttle(async () => {
    workers = await api("/workers");
    fleet.replaceChildren(workersTable(workers));
    if (overview) render(overview);
  }, 2000);
  // Worker processes whose streams take `queue` (one that names no queue takes all).
  const takers = (queue) => new Set(workers.filter((w) => !w.queues.length || w.queues.includes(queue)).map(procKey)).size;
  const takersCell = (q) => {
    if (!workers) return h("td", {});
    const n = takers(q.name);
    const tip = "worker processes on Work streams (nova worker) that take this queue; clients that poll with Dequeue are not listed";
    return n || !q.counts.PENDING
      ? h("td", { "data-takers": n, title: tip }, n)
      : h("td", { "data-takers": 0, title: tip }, h("span", { class: "badge s-unfinished" }, "none listed"));
  };
  const render = (o) => {
    overview = o;
    const series = o.series || state.lastSeries || [];
    state.lastSeries = series;
    const last = series[series.length - 1] || {};
    stats.replaceChildren(
      h("div", { class: "panel" }, h("div", { class: "label" }, "Enqueued / finished per second (all processes on this store)"), h("div", { class: "stat" }, `${(last.enqueued_per_s || 0).toFixed(1)} / ${(last.acked_per_s || 0).toFixed(1)}`),
        sparkline(series.map((p) => p.enqueued_per_s)), sparkline(series.map((p) => p.acked_per_s), "spark2")),
      h("div", { class: "panel" }, h("div", { class: "label" }, "Mean Dequeue / Ack time of this server's calls (µs)"), h("div", { class: "stat" }, `${(last.dequeue_us || 0).toFixed(0)} / ${(last.ack_us || 0).toFixed(0)}`),
        sparkline(series.map((p) => p.dequeue_us)), sparkline(series.map((p) => p.ack_us), "spark2")),
      h("div", { class: "panel" }, h("div", { class: "label" }, "Leases in flight · oldest pending"), h("div", { class: "stat" }, `${o.in_flight_leases} · ${duration(o.oldest_pending_age_ms)}`),
        h("div", { class: "label" }, o.store || "")));
    table.replaceChildren(o.queues.length ? h("table", { id: "queues" },
      h("thead", {}, h("tr", {}, h("th", {}, "Queue"), STATUSES.map((st) => h("th", {}, st)), h("th", {}, "Workers"), h("th", {}, "State"), h("th", {}, ""))),
      h("tbody", {}, o.queues.map((q) => h("tr", { "data-queue": q.name, "data-paused": q.paused ? "yes" : "no" },
        h("td", {}, h("a", { href: `#/queues/${encodeURIComponent(q.name)}` }, q.name)),
        STATUSES.map((st) => h("td", { class: `s-${st}`, "data-count": st }, q.counts[st] || 0)),
        takersCell(q),
        h("td", {}, q.paused ? badge("paused") : h("span", { class: "muted" }, "active")),
        h("td", {}, q.paused
          ? h("button", { class: "resume", "data-queue": q.name, onclick: () => act(`Queue ${q.name} resumed`, `/queues/${encodeURIComponent(q.name)}/resume`).then(load) }, "Resume")
          : h("button", { class: "pause", "data-queue": q.name, onclick: () => act(`Queue ${q.name} paused`, `/queues/${encodeURIComponent(q.name)}/pause`).then(load) }, "Pause")))))) : h("p", { class: "muted" }, "No queues yet."));
  };
  const load = loader(main, async () => { render(await api("/queues")); await loadWorkers(); });
  load();
  return { on: (topic, data) => { if (topic === "queue") { render({ ...data, store: null }); loadWorkers(); } if (topic === "resync") load(); } };
}

function queueView(main, name) {
  const status = h("select", { id: "status-filter", "aria-label": "Status" }, h("option", { value: "" }, "any status"), STATUSES.map((st) => h("option", { value: st }, st)));
  const type = h("input", { id: "type-filter", placeholder: "any type", "aria-label": "Type", size: 14 });
  const list = h("div", { class: "panel" });
  let after = [];
  main.append(h("h1", {}, h("a", { href: "#/queues" }, "Queues"), " / ", name),
    h("div", { class: "panel row" }, h("label", {}, "Status ", status), h("label", {}, "Type ", type)), list);
  const load = loader(main, async () => {
    const q = new URLSearchParams({ limit: "100" });
    if (status.value) q.set("status", status.value);
    if (type.value) q.set("type", type.value);
    if (after.length) q.set("after", after[after.length - 1]);
    const page = await api(`/queues/${encodeURIComponent(name)}/tasks?${q}`);
    list.replaceChildren(page.tasks.length ? taskTable(page.tasks, load) : h("p", { class: "muted" }, "No tasks match."),
      h("div", { class: "row" }, after.length ? h("button", { onclick: () => { after.pop(); load(); } }, "Previous") : "",
        page.next ? h("button", { onclick: () => { after.push(page.next); load(); } }, "Next") : ""));
  });
  status.addEventListener("change", () => { after = []; load(); });
  type.addEventListener("change", () => { after = []; load(); });
  load();
  const refresh = throttle(load, 1000);
  return { on: (topic) => { if (topic === "queue" || topic === "resync") refresh(); } };
}

function taskButtons(t, done) {
  const out = [];
  if (t.status === "FAILED" || t.status === "CANCELLED") out.push(h("button", { class: "retry", "data-task": t.id, onclick: () => act("Task re-queued", `/tasks/${t.id}/retry`).then(done) }, "Retry"));
  if (t.status === "PENDING" || t.status === "IN_PROGRESS") out.push(h("button", { class: "cancel danger", "data-task": t.id, onclick: () => act("Task cancelled", `/tasks/${t.id}/cancel`).then(done) }, "Cancel"));
  return out;
}

function taskTable(tasks, done) {
  return h("table", { id: "tasks" },
    h("thead", {}, h("tr", {}, ["Task", "Type", "Status", "Attempts", "Priority", "Created", "Last error", ""].map((t) => h("th", {}, t)))),
    h("tbody", {}, tasks.map((t) => h("tr", { "data-task": t.id, "data-status": t.status },
      h("td", { class: "mono" }, h("a", { href: `#/tasks/${t.id}` }, t.id.slice(0, 13) + "…")), h("td", {}, t.type), h("td", {}, badge(t.status)),
      h("td", {}, `${t.attempts}/${t.max_attempts}`), h("td", {}, t.priority), h("td", {}, time(t.created_at)),
      h("td", { class: "wrap" }, t.last_error), h("td", {}, taskButtons(t, done))))));
}

function taskView(main, id) {
  const box = h("div", {});
  main.append(box);
  const load = loader(main, async () => {
    const t = await api(`/tasks/${encodeURIComponent(id)}`);
    const row = (k, v) => h("tr", {}, h("th", {}, k), h("td", { class: "wrap" }, v));
    box.replaceChildren(h("h1", {}, h("a", { href: "#/queues" }, "Queues"), " / ", h("a", { href: `#/queues/${encodeURIComponent(t.queue)}` }, t.queue), " / ", h("span", { class: "mono" }, t.id)),
      h("div", { class: "panel row" }, h("span", { id: "task-status" }, badge(t.status)), ...taskButtons(t, load)),
      h("div", { class: "panel" }, h("table", {}, h("tbody", {},
        row("Type", t.type), row("Attempts", `${t.attempts} of ${t.max_attempts}`), row("Priority", t.priority),
        row("Created", time(t.created_at)), row("Updated", time(t.updated_at)), row("Due", time(t.run_at)),
        row("Lease", t.status === "IN_PROGRESS" ? `${t.worker_id} until ${time(t.lease_expires_at)}` : "none"),
        row("Idempotency key", t.idempotency_key), row("Metadata", h("code", {}, JSON.stringify(t.metadata))),
        row("Last error", t.last_error)))),
      h("h2", {}, "Payload"), h("pre", { id: "payload" }, pretty(t.payload)),
      h("h2", {}, "Result"), h("pre", {}, pretty(t.result) || "(none)"));
  });
  load();
  return { on: (topic) => { if (topic === "queue" || topic === "resync") load(); } };
}

function pretty(text) {
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch { return text; }
}

// ---- host ----

function lineChart(title, points, series, unit, note) {
  const w = 420, hgt = 110, left = 36;
  const all = points.flatMap((p) => series.map((sr) => sr.get(p))).filter((v) => Number.isFinite(v));
  const max = unit === "%" ? 100 : Math.max(1e-9, ...all);
  const t0 = points.length ? points[0].at : 0, t1 = points.length ? points[points.length - 1].at : 1;
  const x = (at) => left + ((at - t0) / Math.max(1, t1 - t0)) * (w - left - 4);
  const y = (v) => hgt - 14 - (v / max) * (hgt - 24);
  const svg = s("svg", { viewBox: `0 0 ${w} ${hgt}`, width: "100%", role: "img", "aria-label": title },
    s("line", { class: "axis", x1: left, x2: w, y1: y(0), y2: y(0) }), s("line", { class: "axis", x1: left, x2: w, y1: y(max), y2: y(max) }),
    s("text", { x: 0, y: y(max) + 4 }, unit === "%" ? "100%" : fmtUnit(max, unit)), s("text", { x: 0, y: y(0) + 4 }, "0"),
    points.length ? s("text", { x: left, y: hgt - 2 }, clock(t0)) : null, points.length ? s("text", { x: w - 60, y: hgt - 2 }, clock(t1)) : null);
  series.forEach((sr, i) => {
    const pts = points.map((p) => [p.at, sr.get(p)]).filter(([, v]) => Number.isFinite(v));
    if (pts.length > 1) svg.append(s("polyline", { class: i ? "spark2" : "spark", points: pts.map(([at, v]) => `${x(at)},${y(v)}`).join(" ") }));
  });
  const now = points.length ? series.map((sr) => `${sr.name} ${fmtUnit(sr.get(points[points.length - 1]), unit)}`).join(" · ") : "no samples";
  return h("div", { class: "panel" }, h("div", { class: "label" }, title), h("div", { class: "stat" }, now),
    note ? h("div", { class: "muted note" }, note) : null, svg);
}

// One GPU's card: busy time and memory share over time; its memory, temperature and power now.
function gpuChart(points, g) {
  const mine = (p) => (p.gpus || []).find((x) => x.index === g.index) || {};
  const note = [g.memory_total ? `${bytes(g.memory_used)} of ${bytes(g.memory_total)}` : "",
    Number.isFinite(g.temperature) ? `${g.temperature} °C` : "", Number.isFinite(g.power) ? `${g.power.toFixed(0)} W` : ""]
    .filter(Boolean).join(" · ");
  return lineChart(`GPU ${g.index} ${g.name || ""}`, points, [
    { name: "util", get: (p) => mine(p).utilization },
    { name: "memory", get: (p) => { const x = mine(p); return x.memory_total ? (100 * x.memory_used) / x.memory_total : NaN; } },
  ], "%", note);
}

function fmtUnit(v, unit) {
  if (!Number.isFinite(v)) return "";
  if (unit === "%") return `${v.toFixed(0)}%`;
  if (unit === "B/s") return `${bytes(v)}/s`;
  return v.toFixed(2);
}

function hostView(main) {
  const tabs = h("div", { class: "tabs", role: "tablist" });
  const charts = h("div", { class: "grid", id: "host-charts" });
  const alerts = h("div", { class: "panel" });
  let which = "live", data = null;
  main.append(h("h1", {}, "Host"), tabs, charts, h("h2", {}, "Alerts"), alerts);
  const draw = () => {
    tabs.replaceChildren(...[["live", "Live (this server)"], ["history", "Stored history (nova monitor)"]].map(([k, label]) =>
      h("button", { role: "tab", "aria-selected": String(which === k), onclick: () => { which = k; draw(); } }, label)));
    const pts = (which === "live" ? data.live : data.history) || [];
    const last = pts[pts.length - 1];
    const gpuCount = last && last.gpus ? last.gpus.length : 0;
    charts.replaceChildren(
      lineChart("CPU", pts, [{ name: "cpu", get: (p) => p.cpu_percent }], "%"),
      lineChart("Memory", pts, [{ name: "used", get: (p) => p.memory_percent }], "%"),
      lineChart("Load", pts, [{ name: "1 min", get: (p) => p.load[0] }, { name: "15 min", get: (p) => p.load[2] }], ""),
      lineChart("Network", pts, [{ name: "rx", get: (p) => p.net_rx_bytes_per_second }, { name: "tx", get: (p) => p.net_tx_bytes_per_second }], "B/s"),
      lineChart("Disk used", pts, (last ? last.disks : []).slice(0, 2).map((d) => ({ name: d.mount, get: (p) => { const x = p.disks.find((e) => e.mount === d.mount); return x ? 100 - x.free_percent : NaN; } })), "%"),
      ...(gpuCount ? last.gpus.map((g) => gpuChart(pts, g))
        : [h("div", { class: "panel" }, h("div", { class: "label" }, "GPUs"), h("p", {}, (last && last.gpu_note) || "no GPU figures"))]));
    alerts.replaceChildren(data.alerts.length ? h("table", { id: "alerts" }, h("tbody", {}, data.alerts.map((a) => h("tr", {},
      h("td", {}, time(a.at)), h("td", {}, badge(a.outcome)), h("td", {}, a.target), h("td", { class: "wrap" }, a.details.message || ""))))) : h("p", { class: "muted" }, "No alerts recorded."));
  };
  const load = loader(main, async () => { data = await api("/host?limit=720"); draw(); });
  load();
  return { on: (topic, sample) => {
    if (topic === "host" && data) { data.live.push(sample); if (data.live.length > 300) data.live.shift(); if (which === "live") draw(); }
    if (topic === "resync") load();
  } };
}

// ---- governance ----

function governanceView(main) {
  const chain = h("div", { class: "panel row", id: "chain" });
  const filters = h("form", { class: "inline", id: "audit-filter" });
  const records = h("div", { class: "panel" });
  const decisions = h("div", { class: "panel" });
  const controls = h("div", { class: "panel" });
  const action = h("input", { name: "action", placeholder: "queue.* or run.start", size: 16 });
  const actor = h("input", { name: "actor", placeholder: "actor", size: 12 });
  const run = h("input", { name: "run", placeholder: "run id", size: 16 });
  filters.append(h("label", {}, "Action", action), h("label", {}, "Actor", actor), h("label", {}, "Run", run), h("button", { type: "submit" }, "Filter"));
  main.append(h("h1", {}, "Governance"), chain, h("h2", {}, "Policy decisions"), decisions, h("h2", {}, "Audit log"), filters, records, h("h2", {}, "ISO/IEC 27001 controls"), controls);
  const load = loader(main, async () => {
    const q = new URLSearchParams({ limit: "300" });
    if (action.value) q.set("action", action.value);
    if (actor.value) q.set("actor", actor.value);
    if (run.value) q.set("run", run.value);
    const [audit, dec, ctl] = await Promise.all([api(`/audit?${q}`), api("/policy/decisions?limit=100"), api("/controls")]);
    const c = audit.chain;
    chain.replaceChildren(h("strong", {}, "Audit chain: "), c.ok ? h("span", { class: "s-ok", "data-chain": "ok" }, `verified, ${c.records} records`) : h("span", { class: "s-failed", "data-chain": "broken" }, `broken at record ${c.broken_at}: ${c.reason}`),
      c.head ? h("span", { class: "mono muted" }, `head ${c.head.slice(0, 16)}…`) : "",
      c.ok && c.whole_walk_at ? h("span", { class: "muted", title: "Between whole walks (at least every 5 minutes) only the records appended since are checked, from the last verified one; nova audit verify walks it all." }, `whole chain walked ${clock(c.whole_walk_at)}`) : "");
    decisions.replaceChildren(dec.length ? h("table", { id: "decisions" }, h("thead", {}, h("tr", {}, ["When", "Decision", "Subject", "Request", "Reasons"].map((t) => h("th", {}, t)))),
      h("tbody", {}, dec.map((d) => h("tr", { "data-allowed": String(d.allowed) }, h("td", {}, time(d.at)), h("td", {}, badge(d.allowed ? "allowed" : "denied")),
        h("td", {}, d.subject), h("td", {}, d.request), h("td", { class: "wrap" }, d.reasons.join("; ")))))) : h("p", { class: "muted" }, "No decisions recorded."));
    records.replaceChildren(audit.records.length ? h("table", { id: "audit" }, h("thead", {}, h("tr", {}, ["#", "When", "Actor", "Action", "Target", "Outcome", "Controls"].map((t) => h("th", {}, t)))),
      h("tbody", {}, audit.records.map((r) => h("tr", {}, h("td", {}, r.seq), h("td", {}, time(r.at)), h("td", {}, r.actor), h("td", {}, r.action),
        h("td", { class: "wrap" }, r.target), h("td", {}, badge(r.outcome)), h("td", {}, r.controls.join(" ")))))) : h("p", { class: "muted" }, "No records match."));
    controls.replaceChildren(h("table", { id: "controls" }, h("thead", {}, h("tr", {}, ["Control", "Title", "Evidence", "From actions"].map((t) => h("th", {}, t)))),
      h("tbody", {}, ctl.map((x) => h("tr", {}, h("td", {}, x.id), h("td", {}, x.title), h("td", { class: x.evidence ? "s-ok" : "muted" }, x.evidence), h("td", { class: "wrap muted" }, x.actions.join(", ")))))));
  });
  filters.addEventListener("submit", (e) => { e.preventDefault(); load(); });
  load();
  const refresh = throttle(load, 1500);
  return { on: (topic) => { if (topic === "audit" || topic === "resync") refresh(); } };
}

document.addEventListener("DOMContentLoaded", () => {
  start().catch((err) => toast(`Cannot reach nova: ${err.message}`));
});
