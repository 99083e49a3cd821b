// kairo-sidecar web console: plain JS, no framework, no build step. Every value that comes
// from an event or a dead letter is written with textContent (never innerHTML): payloads
// are anyone's input. The server's Content-Security-Policy allows only this file's script.
"use strict";

const $ = (id) => document.getElementById(id);
const TAIL_MS = 2000;      // live tail poll interval
const TAIL_ROWS = 200;     // rows the tail keeps
const HEALTH_MS = 10000;   // health figures refresh
const PREVIEW = 160;       // characters of payload shown in a list
// around the matched words of a search snippet (sidecar.http.console.MARKS): the page splits
// on them and builds <mark> elements itself; the text between stays text
const MARK_OPEN = "\ue000", MARK_CLOSE = "\ue001";
const COLORS = ["#2f6db3", "#d9822b", "#3a9a5b", "#c23b3b", "#7e57c2", "#1b998b", "#b5651d",
                "#d4a017", "#888888"];

// page size: ?limit=N in the console's address (a slow device may want fewer rows)
const PAGE = new URLSearchParams(window.location.search).get("limit") || "";

const state = { tab: "events", before: null, next: null, tailCursor: null, tailTimer: null,
                tailPaused: false, lettersNext: null };

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function api(path, params) {
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== null && v !== undefined && String(v).trim() !== "") query.set(k, v);
  }
  const url = path + (query.toString() ? "?" + query.toString() : "");
  const answer = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  if (answer.status === 401) { window.location.assign("/"); throw new Error("log in again"); }
  const body = await answer.json();
  if (!answer.ok) throw new Error(body.message || ("HTTP " + answer.status));
  return body;
}

function when(ms) {
  if (ms === null || ms === undefined) return "";
  const d = new Date(ms);
  const pad = (n, w) => String(n).padStart(w || 2, "0");
  return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
    pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + "." +
    pad(d.getMilliseconds(), 3);
}

function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function filters() {
  const form = new FormData($("filters"));
  const out = {};
  for (const [k, v] of form.entries()) out[k] = v;
  return out;
}

function preview(value) {
  const text = JSON.stringify(value);
  return text.length > PREVIEW ? text.slice(0, PREVIEW) + "…" : text;
}

function eventRow(e, last) {
  const tr = el("tr");
  tr.className = "event";
  tr.dataset.id = e.id;
  tr.dataset.seq = e.seq;
  for (const v of [e.seq, when(e.created_at), e.type, e.source, e.topic]) tr.append(el("td", v));
  tr.append(last || el("td", preview(e.payload), "payload"));
  tr.addEventListener("click", () => openEvent(e.id));
  return tr;
}

// a snippet "a \ue000word\ue001 b" -> text, <mark>word</mark>, text: nodes built here
function highlighted(snippet) {
  const td = el("td", undefined, "payload snippet");
  let rest = snippet, inside = false;
  while (rest.length) {
    const at = rest.indexOf(inside ? MARK_CLOSE : MARK_OPEN);
    const part = at < 0 ? rest : rest.slice(0, at);
    if (part) td.append(inside ? el("mark", part) : document.createTextNode(part));
    if (at < 0) break;
    rest = rest.slice(at + 1);
    inside = !inside;
  }
  return td;
}

function searchRow(hit) {
  return eventRow(hit.event, highlighted(hit.snippet));
}

// ---------------------------------------------------------------- events
async function loadEvents(before) {
  showError("");
  try {
    const params = Object.assign(filters(), { before: before, limit: PAGE });
    const searching = Boolean(params.q && params.q.trim());
    const page = await api(searching ? "/api/search" : "/api/events", params);
    const rows = $("events-rows");
    const listed = searching ? page.hits.map(searchRow) : page.events.map((e) => eventRow(e));
    rows.replaceChildren(...listed);
    state.before = before;
    state.next = page.next;
    $("events-last").textContent = searching ? "match" : "payload";
    $("events-older").disabled = page.next === null;
    $("events-count").textContent = listed.length + (searching ? " matching events" : " events") +
      (before ? " before seq " + before : ", newest first") +
      (searching && !page.complete ? "; still indexing: events between seq " +
        page.indexed_through + " and " + page.live_from + " are not searched yet" : "");
  } catch (err) { showError(err.message); }
}

async function openEvent(id) {
  try {
    const event = await api("/api/event", { id: id });
    showDetail("event " + event.id, JSON.stringify(event, null, 2));
  } catch (err) { showError(err.message); }
}

function showDetail(title, text) {
  $("detail-title").textContent = title;
  $("detail-body").textContent = text;
  $("detail").hidden = false;
  $("detail").scrollIntoView({ block: "nearest" });
}

// ---------------------------------------------------------------- live tail
async function pollTail() {
  state.tailTimer = null;
  if (state.tab !== "tail" || state.tailPaused) return;
  let again = TAIL_MS;
  try {
    const params = filters();
    delete params.since; delete params.until; delete params.q;
    if (state.tailCursor !== null) params.after = state.tailCursor;
    const page = await api("/api/tail", params);
    const rows = $("tail-rows");
    for (const e of page.events) rows.prepend(eventRow(e));
    while (rows.children.length > TAIL_ROWS) rows.lastChild.remove();
    state.tailCursor = page.cursor;
    $("tail-status").textContent = "following after seq " + page.cursor;
    if (page.more) again = 0;
    showError("");
  } catch (err) { showError(err.message); }
  if (state.tab === "tail" && !state.tailPaused && state.tailTimer === null) {
    state.tailTimer = window.setTimeout(pollTail, again);
  }
}

function restartTail() {
  if (state.tailTimer !== null) { window.clearTimeout(state.tailTimer); state.tailTimer = null; }
  state.tailCursor = null;
  $("tail-rows").replaceChildren();
  pollTail();
}

// ---------------------------------------------------------------- chart
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

async function loadChart() {
  showError("");
  try {
    drawChart(await api("/api/chart", { range: $("chart-range").value }));
  } catch (err) { showError(err.message); }
}

function drawChart(chart) {
  const buckets = Math.round((chart.until - chart.since) / chart.bucket_ms);
  const perMinute = 60000 / chart.bucket_ms;
  const totals = new Array(buckets).fill(0);
  for (const s of chart.series) s.counts.forEach((n, i) => { totals[i] += n; });
  const peak = Math.max(1, ...totals) * perMinute;
  const W = 720, H = 240, left = 48, bottom = 20, top = 8;
  const plotH = H - bottom - top, barW = (W - left) / buckets;
  const root = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", id: "chart-svg" });
  root.append(svg("line", { x1: left, y1: top + plotH, x2: W, y2: top + plotH, class: "axis" }));
  for (const frac of [0, 0.5, 1]) {
    const label = svg("text", { x: left - 4, y: top + plotH * (1 - frac) + 4, class: "tick" });
    label.textContent = frac === 0 ? "0" : (peak * frac).toFixed(peak * frac >= 10 ? 0 : 1);
    root.append(label);
  }
  const base = new Array(buckets).fill(0);
  chart.series.forEach((s, k) => {
    const color = COLORS[s.type === "" ? COLORS.length - 1 : k % (COLORS.length - 1)];
    s.counts.forEach((n, i) => {
      if (!n) return;
      const h = (n * perMinute / peak) * plotH;
      const y = top + plotH - base[i] - h;
      base[i] += h;
      const bar = svg("rect", { x: left + i * barW, y: y, width: Math.max(1, barW - 1),
                                height: Math.max(0.5, h), fill: color, class: "bar" });
      const tip = svg("title");
      tip.textContent = (s.type || "other types") + ": " + n + " events from " +
        when(chart.since + i * chart.bucket_ms);
      bar.append(tip);
      root.append(bar);
    });
  });
  for (const [i, anchor] of [[0, "start"], [Math.floor(buckets / 2), "middle"], [buckets, "end"]]) {
    const t = svg("text", { x: left + i * barW, y: H - 4, class: "tick " + anchor });
    t.textContent = when(chart.since + i * chart.bucket_ms).slice(5, 16);
    root.append(t);
  }
  $("chart-plot").replaceChildren(root);
  const legend = $("chart-legend");
  legend.replaceChildren(...chart.series.map((s, k) => {
    const li = el("li");
    const swatch = el("span", "", "swatch");
    swatch.style.background = COLORS[s.type === "" ? COLORS.length - 1 : k % (COLORS.length - 1)];
    li.append(swatch, el("span", (s.type || "other types") + " (" + s.total + ")"));
    return li;
  }));
  const total = totals.reduce((a, b) => a + b, 0);
  $("chart-caption").textContent = total + " events; bars: events per minute, one bar per " +
    (chart.bucket_ms / 60000) + " min";
}

// ---------------------------------------------------------------- dead letters
async function loadLetters(before) {
  showError("");
  try {
    const page = await api("/api/dead-letters", { before: before, limit: PAGE });
    $("letters-rows").replaceChildren(...page.letters.map((d) => {
      const tr = el("tr");
      tr.className = "letter";
      tr.dataset.id = d.id;
      for (const v of [d.id, when(d.received_at), d.topic, bytes(d.size) + (d.truncated ? " (cut)" : "")]) {
        tr.append(el("td", v));
      }
      tr.append(el("td", d.reason, "reason"));
      tr.addEventListener("click", () => openLetter(d.id));
      return tr;
    }));
    state.lettersNext = page.next;
    $("letters-older").disabled = page.next === null;
  } catch (err) { showError(err.message); }
}

async function openLetter(id) {
  try {
    const letter = await api("/api/dead-letter", { id: id });
    showDetail("dead letter " + letter.id, JSON.stringify(letter, null, 2));
  } catch (err) { showError(err.message); }
}

// ---------------------------------------------------------------- health
async function loadHealth() {
  try {
    const f = await api("/api/health");
    const pairs = [
      ["status", f.health.healthy ? "healthy" : "unhealthy: " + f.health.problems.join("; ")],
      ["events", f.events_total], ["dead letters", f.dead_letters_total],
      ["stored since start", f.events_stored], ["queue", f.health.queue_depth],
      ["last commit", f.health.last_commit_age_s === null ? "none yet" :
        f.health.last_commit_age_s.toFixed(1) + " s ago"],
      ["database", bytes(f.database_bytes)], ["WAL", bytes(f.wal_bytes)],
      ["broker", f.health.broker_connected ? "connected" : "disconnected"],
    ];
    const box = $("health");
    box.replaceChildren();
    for (const [k, v] of pairs) box.append(el("dt", k), el("dd", v));
    box.className = f.health.healthy ? "ok" : "bad";
  } catch (err) { /* the next refresh tries again */ }
}

// ---------------------------------------------------------------- features
async function loadFeatures() {
  try {
    const f = await api("/api/features");
    const input = $("filters").elements.namedItem("q");
    $("search-box").hidden = !f.search;  // search off or not on this engine: no box
    input.disabled = !f.search;
    $("logout").hidden = !f.logout;
  } catch (err) { /* no search box, no logout button: the rest works */ }
}

// ---------------------------------------------------------------- wiring
function switchTab(tab) {
  state.tab = tab;
  for (const b of document.querySelectorAll("button.tab")) {
    b.classList.toggle("active", b.dataset.tab === tab);
  }
  for (const id of ["events", "tail", "chart", "letters"]) $(id).hidden = id !== tab;
  $("filters").hidden = !(tab === "events" || tab === "tail");
  $("detail").hidden = true;
  showError("");
  if (tab === "events") loadEvents(null);
  if (tab === "tail") restartTail();
  if (tab === "chart") loadChart();
  if (tab === "letters") loadLetters(null);
}

document.addEventListener("DOMContentLoaded", () => {
  for (const b of document.querySelectorAll("button.tab")) {
    b.addEventListener("click", () => switchTab(b.dataset.tab));
  }
  $("filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (state.tab === "tail") restartTail(); else loadEvents(null);
  });
  $("filters").addEventListener("reset", () => window.setTimeout(() => {
    if (state.tab === "tail") restartTail(); else loadEvents(null);
  }, 0));
  $("events-older").addEventListener("click", () => loadEvents(state.next));
  $("events-newest").addEventListener("click", () => loadEvents(null));
  $("letters-older").addEventListener("click", () => loadLetters(state.lettersNext));
  $("letters-newest").addEventListener("click", () => loadLetters(null));
  $("chart-range").addEventListener("change", loadChart);
  $("detail-close").addEventListener("click", () => { $("detail").hidden = true; });
  $("tail-toggle").addEventListener("click", () => {
    state.tailPaused = !state.tailPaused;
    $("tail-toggle").textContent = state.tailPaused ? "Resume" : "Pause";
    if (!state.tailPaused) pollTail();
  });
  loadFeatures();
  loadHealth();
  window.setInterval(loadHealth, HEALTH_MS);
  switchTab("events");
});
