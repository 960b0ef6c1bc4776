// Dragoman's dashboard: one EventSource (/dashboard/events), a few updates a second; no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const COLORS = { completed: "#1a7f37", empty: "#8c959f", failed: "#c62828", timed_out: "#e36209",
                 result_p50_s: "#0b57d0", result_p95_s: "#7b1fa2", dispatch_p95_s: "#e36209" };
let page = 0;
let pages = 1;
let filter = "";
let source = null;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function plural(n, one, many) { return `${n} ${n === 1 ? one : (many || one + "s")}`; }

function ago(ms, now) {
  const s = Math.max(0, Math.round((now - ms) / 1000));
  return s < 60 ? `${s} s ago` : s < 3600 ? `${Math.floor(s / 60)} min ago` : `${Math.floor(s / 3600)} h ago`;
}

function uptime(s) {
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function fillTable(id, rows) {
  const body = $(id).querySelector("tbody");
  body.replaceChildren(...rows.map((cells) => {
    const tr = el("tr");
    for (const cell of cells) tr.append(cell instanceof Node ? cell : el("td", cell));
    return tr;
  }));
}

function chart(id, legendId, series, step, end) {
  const canvas = $(id);
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 600;
  const height = canvas.clientHeight || 160;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, width, height);
  const names = Object.keys(series);
  const n = names.length ? series[names[0]].length : 0;
  let top = 0;
  for (const name of names) for (const v of series[name]) if (v !== null && v > top) top = v;
  top = top > 0 ? top * 1.15 : 1;
  const left = 36;
  const bottom = height - 16;
  ctx.strokeStyle = "#dde1e6";
  ctx.fillStyle = "#6b7580";
  ctx.font = "10px system-ui, sans-serif";
  for (let i = 0; i <= 2; i++) {
    const y = bottom - (bottom - 6) * i / 2;
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(width, y); ctx.stroke();
    ctx.fillText((top * i / 2).toPrecision(2), 2, y + 3);
  }
  ctx.fillText(`-${Math.round(n * step / 60)} min`, left, height - 3);
  ctx.fillText("now", width - 22, height - 3);
  const x = (i) => left + (width - left) * (i + 0.5) / Math.max(n, 1);
  for (const name of names) {
    ctx.strokeStyle = COLORS[name] || "#333";
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let drawing = false;
    series[name].forEach((v, i) => {
      if (v === null) { drawing = false; return; }
      const y = bottom - (bottom - 6) * v / top;
      if (drawing) ctx.lineTo(x(i), y); else ctx.moveTo(x(i), y);
      drawing = true;
    });
    ctx.stroke();
  }
  $(legendId).replaceChildren(...names.map((name) => {
    const span = el("span");
    const swatch = el("i");
    swatch.style.background = COLORS[name] || "#333";
    const last = [...series[name]].reverse().find((v) => v !== null);
    span.append(swatch, `${name.replaceAll("_", " ")}: ${last === undefined ? "–" : last.toPrecision(3)}`);
    return span;
  }));
}

function jobLink(jobId) {
  const a = el("a", jobId, "job");
  a.href = "#";
  a.addEventListener("click", (event) => { event.preventDefault(); showTrace("jobs", jobId); });
  return a;
}

function eventList(id, items, render) {
  $(id).replaceChildren(...items.map((item) => { const li = el("li"); li.append(...render(item)); return li; }));
}

function render(state) {
  const now = state.taken_ms;
  $("updated").textContent = `updated ${new Date(now).toLocaleTimeString()} · ${state.instance_id || ""} · v${state.version || ""}`;
  if (!state.store_ok) {
    $("status").textContent = "store unavailable";
    $("status").className = "badge bad";
    return;
  }
  $("status").textContent = "live";
  $("status").className = "badge ok";
  const t = state.totals;
  $("t-instances").textContent = state.instances.length;
  $("t-nodes").textContent = `${t.online_nodes} / ${t.nodes}`;
  $("t-load").textContent = `${t.inflight} / ${t.capacity}`;
  $("t-free").textContent = t.free;
  $("t-waiting").textContent = t.waiting;
  $("t-sessions").textContent = t.sessions;
  $("t-rooms").textContent = `${t.rooms} / ${t.room_members}`;
  fillTable("instances", state.instances.map((i) => [
    i.instance_id, i.version, uptime(i.uptime_s), i.online ? "yes" : "no", i.sessions, i.nodes_owned, i.inbox_length,
  ]));
  fillTable("pairs", state.pairs.map((p) => [p.pair, p.eligible_nodes, p.free_capacity, p.waiting_jobs]));
  $("pairs-note").textContent = `${plural(t.pairs, "pair")}` + (state.pairs_hidden ? `, ${state.pairs_hidden} not shown` : "");
  const nodes = state.nodes;
  pages = nodes.pages;
  page = nodes.page;
  $("page").textContent = `page ${nodes.page + 1} of ${nodes.pages}`;
  $("nodes-note").textContent = `${plural(nodes.matching, "node")}` +
    Object.entries(t.by_status).map(([s, n]) => ` · ${n} ${s}`).join("");
  fillTable("nodes", nodes.rows.map((n) => [
    n.node_id,
    el("td", n.status, n.online ? "ready" : "offline"),
    `${n.languages.asr.join(" ") || "–"} → ${n.languages.semantic.join(" ") || "–"}`,
    `${n.inflight} / ${n.capacity}`,
    n.last_heartbeat_ms ? ago(n.last_heartbeat_ms, now) : "never",
    n.instance,
  ]));
  const c = state.charts;
  chart("chart-throughput", "legend-throughput", c.per_second, c.step_s, c.end_ms);
  chart("chart-latency", "legend-latency",
        { result_p50_s: c.result_p50_s, result_p95_s: c.result_p95_s, dispatch_p95_s: c.dispatch_p95_s }, c.step_s, c.end_ms);
  eventList("jobs", state.jobs, (j) => [jobLink(j.job_id), ` ${j.state} in ${j.seconds} s, ${ago(j.t, now)}`]);
  eventList("failovers", state.failovers, (f) => [jobLink(f.job_id), ` attempt ${f.attempt} → ${f.node_id}, ${ago(f.t, now)}`]);
  eventList("errors", state.errors, (e) => [`${ago(e.t, now)} ${e.level} ${e.logger}: ${e.message}`]);
}

// With authentication on, the page is opened as /dashboard?key=<admin key>; its feed and traces pass it on.
const adminKey = new URLSearchParams(location.search).get("key");
const withKey = (path) => (adminKey ? `${path}${path.includes("?") ? "&" : "?"}key=${encodeURIComponent(adminKey)}` : path);

function connect() {
  if (source) source.close();
  const query = new URLSearchParams({ page: String(page), node: filter });
  if (adminKey) query.set("key", adminKey);
  source = new EventSource(`/dashboard/events?${query}`);
  source.onmessage = (event) => render(JSON.parse(event.data));
  source.onerror = () => { $("status").textContent = "reconnecting…"; $("status").className = "badge bad"; };
}

function traceRows(steps) {
  const first = Math.min(...steps.map((s) => s.t));  // the cut is stamped by the instance, to the millisecond
  const table = el("table");
  const head = el("tr");
  for (const h of ["+ms", "step", "details"]) head.append(el("th", h));
  table.append(head);
  for (const step of steps) {
    const { t, e, ...rest } = step;
    const tr = el("tr");
    const details = Object.entries(rest).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
    tr.append(el("td", t - first), el("td", e), el("td", details));
    table.append(tr);
  }
  return table;
}

function jobSummary(job) {
  const outcome = job.outcome ? `${job.outcome.state}${job.outcome.why ? " (" + job.outcome.why + ")" : ""}` : "unresolved";
  const tries = plural(job.attempts.length, "attempt");
  return el("p", `job ${job.job_id} · ${job.pair || ""} · ${tries} · outcome ${outcome}` +
            (job.delivered_ms ? " · delivered" : ""), "summary");
}

async function showTrace(kind, id) {
  $("trace-kind").value = kind;
  $("trace-id").value = id;
  const box = $("trace");
  box.replaceChildren(el("p", "loading…", "muted"));
  let response;
  try {
    const path = kind === "traces" ? `/api/v1/traces/${encodeURIComponent(id)}` : `/api/v1/${kind}/${encodeURIComponent(id)}/trace`;
    response = await fetch(withKey(path));
  } catch (err) {
    box.replaceChildren(el("p", `cannot fetch the trace: ${err}`));
    return;
  }
  const body = await response.json();
  if (!response.ok) {
    box.replaceChildren(el("p", body.message || `HTTP ${response.status}`));
    return;
  }
  const jobs = kind === "jobs" ? [body] : body.utterances;
  const parts = [];
  if (kind !== "jobs") parts.push(el("p", `session ${body.session_id}: ${plural(jobs.length, "utterance")}`, "summary"));
  for (const job of jobs) parts.push(jobSummary(job), traceRows(job.steps));
  box.replaceChildren(...parts);
}

$("trace-form").addEventListener("submit", (event) => {
  event.preventDefault();
  showTrace($("trace-kind").value, $("trace-id").value.trim());
});
$("prev").addEventListener("click", () => { if (page > 0) { page -= 1; connect(); } });
$("next").addEventListener("click", () => { if (page + 1 < pages) { page += 1; connect(); } });
let typing = null;
$("node-filter").addEventListener("input", (event) => {
  clearTimeout(typing);
  typing = setTimeout(() => { filter = event.target.value.trim(); page = 0; connect(); }, 300);
});
connect();
