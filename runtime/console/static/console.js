// edgecore console: one page, live over server-sent events. Every value from the server
// reaches the page as text (textContent), never as markup.
"use strict";

const $ = (id) => document.getElementById(id);
const WINDOW_S = 300;
const FEED_SHOWN = 200;
const state = { points: [], feed: [], topic: "", chosen: false, kinds: "", frame: null };

// "edgecore_ingest_latency_seconds{stage="alerts"}" -> "ingest → alerts ·": what is timed
function stageOf(name) {
  const m = /stage="([^"]+)"/.exec(name || "");
  return m ? `ingest → ${m[1]} ·` : "";
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function fmt(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return "—";
  if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(1) + "M";
  if (Math.abs(n) >= 1e4) return (n / 1e3).toFixed(1) + "k";
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits });
}

function age(s) {
  if (s === null || s === undefined) return "never";
  if (s < 90) return s.toFixed(0) + " s ago";
  if (s < 5400) return (s / 60).toFixed(0) + " min ago";
  return (s / 3600).toFixed(1) + " h ago";
}

function ms(s) { return s === null || s === undefined ? "—" : (s * 1000).toFixed(s < 0.01 ? 2 : 0) + " ms"; }

// -- charts: lines on a canvas, x = the last five minutes, gaps where a value is missing ----
function chart(canvas, series, unit) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== w * dpr) { canvas.width = w * dpr; canvas.height = h * dpr; }
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const left = 52, bottom = 18, top = 8, right = 8;
  const now = Date.now() / 1000;
  let max = 0;
  for (const s of series) for (const p of state.points) {
    const v = p[s.key];
    if (v !== null && v !== undefined && v > max) max = v;
  }
  max = max > 0 ? niceCeil(max) : 1;
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#8a96a6"; g.strokeStyle = "#2a323d"; g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = top + ((h - top - bottom) * i) / 4;
    g.beginPath(); g.moveTo(left, y); g.lineTo(w - right, y); g.stroke();
    const v = max * (1 - i / 4);
    g.fillText(unit === "s" ? ms(v) : fmt(v, 1), 2, y + 4);
  }
  for (const m of [5, 4, 3, 2, 1, 0]) {
    const x = left + (w - left - right) * (1 - (m * 60) / WINDOW_S);
    g.fillText(m ? `-${m}m` : "now", Math.min(x - 8, w - 26), h - 4);
  }
  const xOf = (t) => left + (w - left - right) * (1 - (now - t) / WINDOW_S);
  const yOf = (v) => top + (h - top - bottom) * (1 - v / max);
  for (const s of series) {
    g.strokeStyle = s.color; g.lineWidth = 2; g.beginPath();
    let pen = false;
    for (const p of state.points) {
      const v = p[s.key];
      if (v === null || v === undefined || now - p.t > WINDOW_S) { pen = false; continue; }
      if (pen) g.lineTo(xOf(p.t), yOf(v)); else g.moveTo(xOf(p.t), yOf(v));
      pen = true;
    }
    g.stroke();
  }
  if (!series.some((s) => state.points.some((p) => p[s.key] !== null && p[s.key] !== undefined))) {
    g.fillStyle = "#8a96a6"; g.fillText("no data yet", (w - left) / 2, h / 2);
  }
  let x = left + 6;
  for (const s of series) {
    g.fillStyle = s.color; g.fillText(s.label, x, top + 12); x += g.measureText(s.label).width + 14;
  }
}

function niceCeil(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function drawCharts() {
  chart($("chart-eps"), [{ key: "eps", color: "#58a6ff", label: "events/s" }]);
  chart($("chart-latency"), [
    { key: "p50", color: "#3fb950", label: "p50" },
    { key: "p99", color: "#d2a8ff", label: "p99" },
  ], "s");
}

// -- the top bar and the panels --------------------------------------------------------------
function showFrame(f) {
  state.frame = f;
  $("app").textContent = Object.keys(f.apps || {}).join(", ") || "no app reporting";
  const st = $("state");
  st.textContent = f.state === "stale" ? `stale (${fmt(f.age_s)} s)` : f.state;
  st.className = "pill " + f.state;
  $("eps").textContent = fmt(f.events_per_s, 1);
  const t = f.totals || {};
  $("totals").textContent =
    `accepted ${fmt(t.accepted)} · dead-lettered ${fmt(t.dead_lettered)} · duplicates ${fmt(t.duplicates)} · alerts ${fmt(t.alerts)}`;
  $("restarts").textContent = fmt(f.restarts);
  $("checkpoint").textContent = f.checkpoint_at ? age(f.checkpoint_age_s) : "none yet";
  $("updated").textContent = (f.updated_at ? `board ${age(f.age_s)}` : "") +
    (f.ray_address ? ` · ray ${f.ray_address}` : "");
  const banner = $("error");
  banner.textContent = f.error ? `runtime unreachable: ${f.error}` : "";
  banner.classList.toggle("hidden", !f.error);
  const lat = f.latency;
  $("latency").textContent = lat
    ? `${stageOf(lat.name)} p50 ${ms(lat.p50)} · p95 ${ms(lat.p95)} · p99 ${ms(lat.p99)} (last 10 s, ${fmt(lat.count)} measured)`
    : "no latency measured";
  showPlacement(f.placement || []);
  showModels(f.models || {});
  showKinds(f.kinds || []);
  showTopics(f.topics || []);
}

function showPlacement(groups) {
  const root = $("placement");
  root.replaceChildren();
  if (!groups.length) root.append(el("p", "no nodes reported", "muted"));
  for (const g of groups) {
    const box = el("div", null, "group");
    box.append(el("div", `${g.role} · ${g.site}`, "head"));
    for (const n of g.nodes) {
      const node = el("div", null, "node" + (n.alive ? "" : " dead"));
      node.append(el("div", `node ${String(n.node_id).slice(0, 12)} ${n.address || ""} ${n.alive ? "" : "DEAD"}`, "muted"));
      for (const a of n.actors) {
        const row = el("div", null, "actor");
        row.dataset.actor = a.actor;
        row.append(el("span", a.actor));
        const bar = el("span", null, "bar"), fill = el("i");
        const q = a.queue_depth || 0;
        fill.style.width = Math.min(100, q * 10) + "%";
        if (q >= 5) fill.className = "high";
        bar.title = `queue depth ${q}`;
        bar.append(fill);
        row.append(bar, el("span", a.queue_depth === null || a.queue_depth === undefined ? "" : `q ${q}`));
        node.append(row);
      }
      box.append(node);
    }
    root.append(box);
  }
}

function showModels(models) {
  const root = $("models");
  const kinds = Object.keys(models);
  if (!kinds.length) return;
  root.replaceChildren();
  for (const k of kinds) {
    const m = models[k] || {};
    const box = el("div", null, "model");
    box.append(el("b", `${k}: version ${m.version ?? "—"}`), el("span", ` · trained on ${fmt(m.training_rows)} rows`, "muted"));
    const table = el("table", null, "kv");
    for (const [name, v] of Object.entries(m.metrics || {})) {
      if (v === null || v === undefined) continue;
      const tr = el("tr");
      tr.append(el("td", name), el("td", typeof v === "number" ? fmt(v, 4) : v));
      table.append(tr);
    }
    box.append(table);
    root.append(box);
  }
}

function showKinds(kinds) {
  if (kinds.join() === state.kinds) return;
  state.kinds = kinds.join();
  const sel = $("entity-kind"), was = sel.value;
  sel.replaceChildren(...kinds.map((k) => { const o = el("option", k); o.value = k; return o; }));
  if (kinds.includes(was)) sel.value = was;
}

function showTopics(topics) {
  const sel = $("feed-topic");
  const have = new Set([...sel.options].map((o) => o.value));
  for (const t of topics) if (!have.has(t)) { const o = el("option", t); o.value = t; sel.append(o); }
  if (!state.chosen) {  // the alerts by default, once they exist, until the operator picks
    const topic = topics.includes("alerts") ? "alerts" : "";
    if (topic !== state.topic) { state.topic = topic; sel.value = topic; renderFeed(); }
  }
}

// -- the feed: newest on top --------------------------------------------------------------
function feedItem(r, fresh) {
  const li = el("li", null, fresh ? "fresh" : "");
  const row = r.row || {};
  const when = row.detected_at || row.ts || new Date(r.at * 1000).toISOString();
  li.append(el("span", String(when).replace("T", " ").slice(0, 19), "when"), el("span", r.topic, "topic"));
  const parts = Object.entries(row)
    .filter(([k]) => !k.startsWith("_") && k !== "detected_at")
    .slice(0, 9)
    .map(([k, v]) => `${k}=${typeof v === "object" && v !== null ? JSON.stringify(v) : v}`);
  li.append(el("span", parts.join("  ")));
  return li;
}

function renderFeed(fresh = 0) {
  const rows = state.feed.filter((r) => !state.topic || r.topic === state.topic);
  const list = $("feed");
  const shown = rows.slice(-FEED_SHOWN).reverse();
  list.replaceChildren(...shown.map((r, i) => feedItem(r, i < fresh)));
  $("feed-empty").classList.toggle("hidden", shown.length > 0);
  $("feed-count").textContent = rows.length ? `${fmt(rows.length)} since the console opened` : "";
}

function addFeed(rows) {
  const before = state.feed.filter((r) => !state.topic || r.topic === state.topic).length;
  state.feed.push(...rows);
  if (state.feed.length > 1000) state.feed.splice(0, state.feed.length - 1000);
  const after = state.feed.filter((r) => !state.topic || r.topic === state.topic).length;
  renderFeed(Math.max(0, after - before));
}

// -- requests -----------------------------------------------------------------------------
async function call(url, options) {
  const resp = await fetch(url, { credentials: "same-origin", ...options });
  let body;
  try { body = await resp.json(); } catch { body = { error: `HTTP ${resp.status}` }; }
  if (!resp.ok) throw new Error(body.error || `HTTP ${resp.status}`);
  return body;
}

async function lookup(ev) {
  ev.preventDefault();
  const kind = $("entity-kind").value, key = $("entity-key").value.trim();
  const out = $("entity-result");
  $("entity-error").textContent = "";
  out.replaceChildren();
  if (!key) { $("entity-error").textContent = "type a key"; return; }
  try {
    const got = await call(`/api/entity?kind=${encodeURIComponent(kind)}&key=${encodeURIComponent(key)}`);
    for (const [name, v] of Object.entries(got.profile)) {
      const tr = el("tr");
      tr.append(el("td", name), el("td", typeof v === "object" && v !== null ? JSON.stringify(v) : v));
      out.append(tr);
    }
  } catch (err) { $("entity-error").textContent = err.message; }
}

async function runSql(ev) {
  ev.preventDefault();
  const out = $("sql-result");
  $("sql-error").textContent = ""; $("sql-info").textContent = "running…";
  out.replaceChildren();
  try {
    const got = await call("/api/sql", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sql: $("sql-text").value }),
    });
    const head = el("tr");
    head.append(...got.columns.map((c) => el("th", c)));
    out.append(head);
    for (const r of got.rows) {
      const tr = el("tr");
      tr.append(...r.map((v) => el("td", typeof v === "object" && v !== null ? JSON.stringify(v) : v)));
      out.append(tr);
    }
    $("sql-info").textContent = `${fmt(got.row_count)} rows${got.truncated ? " (first 500 shown)" : ""} in ${got.seconds} s`;
  } catch (err) { $("sql-error").textContent = err.message; $("sql-info").textContent = ""; }
}

// -- the live stream ----------------------------------------------------------------------
function connect() {
  const es = new EventSource("/api/stream");
  es.addEventListener("hello", (e) => {
    const h = JSON.parse(e.data);
    state.points = h.points; state.feed = h.feed;
    showFrame(h.frame); renderFeed(); drawCharts();
  });
  es.addEventListener("status", (e) => {
    const f = JSON.parse(e.data);
    state.points.push({ t: f.time, eps: f.events_per_s, p50: f.latency && f.latency.p50, p99: f.latency && f.latency.p99 });
    while (state.points.length && f.time - state.points[0].t > WINDOW_S) state.points.shift();
    showFrame(f); drawCharts();
  });
  es.addEventListener("feed", (e) => addFeed(JSON.parse(e.data)));
  es.onerror = () => {
    const st = $("state");
    st.textContent = "console disconnected"; st.className = "pill down";
  };
}

document.addEventListener("DOMContentLoaded", () => {
  $("entity-form").addEventListener("submit", lookup);
  $("sql-form").addEventListener("submit", runSql);
  $("feed-topic").addEventListener("change", (e) => {
    state.topic = e.target.value; state.chosen = true; renderFeed();
  });
  window.addEventListener("resize", drawCharts);
  connect();
});
