// The Trellis mesh page: reads GET /v1/mesh of this control plane every 2 s and renders it.
// Data goes into the DOM as text only (textContent), never as markup.
"use strict";

const KEY = "trellis-token";
const REFRESH_MS = 2000;
const $ = (id) => document.getElementById(id);
let timer = null;

// A token in the URL fragment (`/ui#token=…`, never sent to the server) is taken and removed.
function tokenFromFragment() {
  const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
}

function status(text, state) {
  const s = $("status");
  s.textContent = text;
  s.dataset.state = state;
}

function login(reason) {
  $("mesh").hidden = true;
  $("login").hidden = false;
  $("forget").hidden = true;
  $("login-reason").textContent = reason;
  status("not signed in", "unauthorized");
}

async function refresh() {
  clearTimeout(timer);
  const token = sessionStorage.getItem(KEY);
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = "Bearer " + token;
  let resp;
  try {
    resp = await fetch("/v1/mesh", { headers, cache: "no-store", credentials: "omit" });
  } catch (e) {
    status("control plane unreachable: " + e.message, "error");
    timer = setTimeout(refresh, REFRESH_MS);
    return;
  }
  if (resp.status === 401) {
    sessionStorage.removeItem(KEY);
    login(token ? "The token was refused (401): enter this control plane's bearer token."
                : "This control plane needs its bearer token (the contents of --token-file).");
    return;
  }
  if (!resp.ok) {
    status("GET /v1/mesh: " + resp.status, "error");
    timer = setTimeout(refresh, REFRESH_MS);
    return;
  }
  render(await resp.json());
  $("login").hidden = true;
  $("mesh").hidden = false;
  $("forget").hidden = !token;
  status("updated " + new Date().toLocaleTimeString(), "ok");
  timer = setTimeout(refresh, REFRESH_MS);
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(tbody, cells, attrs) {
  const tr = document.createElement("tr");
  for (const [k, v] of Object.entries(attrs || {})) tr.setAttribute(k, v);
  for (const c of cells) tr.appendChild(c instanceof Node ? c : el("td", c));
  tbody.appendChild(tr);
}

function fill(table, rows, empty, columns) {
  const tbody = $(table).tBodies[0];
  tbody.replaceChildren();
  if (rows.length === 0) {
    const td = el("td", empty, "muted");
    td.colSpan = columns;
    row(tbody, [td]);
  }
  return tbody;
}

function duration(secs) {
  const s = Math.abs(secs);
  const out = s >= 86400 ? (s / 86400).toFixed(1) + " d" : s >= 3600 ? (s / 3600).toFixed(1) + " h"
    : s >= 60 ? Math.round(s / 60) + " min" : Math.round(s) + " s";
  return secs < 0 ? "expired " + out + " ago" : out;
}

const num = (v, digits) => (v === null || v === undefined ? "—" : Number(v).toFixed(digits));

function render(mesh) {
  const proxies = fill("proxies", mesh.proxies, "No proxy has connected yet.", 7);
  for (const p of mesh.proxies) {
    const conn = p.connected ? el("td", "connected", "ok") : el("td", "disconnected " + (p.disconnected_at || ""), "bad");
    const nack = p.last_nack ? el("td", "v" + p.last_nack.version + ": " + p.last_nack.error + " (" + p.last_nack.at + ")", "bad")
      : el("td", "none", "muted");
    const acked = el("td", p.acked_version ?? "—", "num acked");
    const behind = p.sent_version !== null && p.acked_version !== p.sent_version;
    const sent = el("td", (p.sent_version ?? "—") + (behind ? " (not acked)" : ""), behind ? "num warn" : "num");
    const reported = p.reported_seconds_ago === null ? "never" : duration(p.reported_seconds_ago) + " ago";
    row(proxies, [el("td", p.id, "proxy-id"), p.service || "—", conn, acked, sent, nack, reported],
      { "data-proxy": p.id, "data-acked": p.acked_version ?? "", "data-nack": p.last_nack ? p.last_nack.error : "" });
  }

  const edges = fill("edges", mesh.edges, "No traffic reported yet.", 7);
  for (const e of mesh.edges) {
    const ratio = e.error_ratio;
    const ratioCell = el("td", ratio === null ? "—" : (100 * ratio).toFixed(1) + " %",
      ratio > 0.05 ? "num bad" : ratio > 0 ? "num warn" : "num");
    row(edges, [e.from, e.to + (e.known_service ? "" : " (cluster)"),
      el("td", e.mtls ? "mTLS" : "plaintext", e.mtls ? "ok" : "warn"),
      el("td", num(e.requests_per_second, 2), "num rate"), ratioCell,
      el("td", e.requests_total, "num"), el("td", e.errors_total, "num")],
      { "data-edge": e.from + "|" + e.to, "data-rate": e.requests_per_second ?? "", "data-error-ratio": ratio ?? "" });
  }
  $("edges-note").textContent = "Rates are over the proxies' last report interval (" +
    mesh.report_interval_seconds + " s); totals since each proxy started.";
  graph(mesh);

  const certs = fill("certificates", mesh.certificates, "No certificates reported.", 4);
  for (const c of mesh.certificates) {
    const cls = c.expires_in_seconds < 0 ? "bad" : c.near_expiry ? "warn" : "";
    row(certs, [c.holder + (c.service ? " (" + c.service + ")" : ""), c.name,
      new Date(c.not_after * 1000).toISOString(), el("td", duration(c.expires_in_seconds), cls)],
      { "data-near-expiry": c.near_expiry });
  }
  $("footer").textContent = "Store revision " + mesh.revision + ". Certificates with less than " +
    duration(mesh.near_expiry_seconds) + " left are marked.";
}

// Services on a circle, an arrow per edge (green: mTLS, red: errors in the last interval).
function graph(mesh) {
  const svg = $("graph");
  const NS = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  const names = [...new Set(mesh.services.map((s) => s.name)
    .concat(mesh.edges.flatMap((e) => [e.from, e.to])))];
  if (names.length === 0) { svg.setAttribute("height", "0"); return; }
  const W = 720, H = 300, r = Math.min(W, H) / 2 - 40;
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  svg.setAttribute("height", String(H));
  const at = new Map(names.map((n, i) => {
    const a = (2 * Math.PI * i) / names.length - Math.PI / 2;
    return [n, [W / 2 + r * 1.6 * Math.cos(a), H / 2 + r * Math.sin(a)]];
  }));
  const defs = document.createElementNS(NS, "defs");
  const marker = document.createElementNS(NS, "marker");
  for (const [k, v] of Object.entries({ id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5",
    markerWidth: "6", markerHeight: "6", orient: "auto-start-reverse" })) marker.setAttribute(k, v);
  const tip = document.createElementNS(NS, "path");
  tip.setAttribute("d", "M 0 0 L 10 5 L 0 10 z");
  marker.appendChild(tip);
  defs.appendChild(marker);
  svg.appendChild(defs);
  for (const e of mesh.edges) {
    const [x1, y1] = at.get(e.from), [x2, y2] = at.get(e.to);
    const len = Math.hypot(x2 - x1, y2 - y1) || 1, pad = 28;
    const line = document.createElementNS(NS, "line");
    line.setAttribute("x1", x1 + ((x2 - x1) * pad) / len);
    line.setAttribute("y1", y1 + ((y2 - y1) * pad) / len);
    line.setAttribute("x2", x2 - ((x2 - x1) * pad) / len);
    line.setAttribute("y2", y2 - ((y2 - y1) * pad) / len);
    line.setAttribute("class", "edge" + (e.mtls ? " mtls" : "") + (e.error_ratio > 0 ? " errors" : ""));
    line.setAttribute("marker-end", "url(#arrow)");
    svg.appendChild(line);
    const label = document.createElementNS(NS, "text");
    label.setAttribute("x", (x1 + x2) / 2);
    label.setAttribute("y", (y1 + y2) / 2 - 6);
    label.setAttribute("text-anchor", "middle");
    label.textContent = num(e.requests_per_second, 1) + " req/s" + (e.mtls ? " · mTLS" : "");
    svg.appendChild(label);
  }
  for (const [n, [x, y]] of at) {
    const c = document.createElementNS(NS, "ellipse");
    c.setAttribute("cx", x); c.setAttribute("cy", y);
    c.setAttribute("rx", Math.max(30, n.length * 4 + 12)); c.setAttribute("ry", 20);
    c.setAttribute("class", "node");
    svg.appendChild(c);
    const t = document.createElementNS(NS, "text");
    t.setAttribute("x", x); t.setAttribute("y", y + 4);
    t.setAttribute("text-anchor", "middle");
    t.textContent = n;
    svg.appendChild(t);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  tokenFromFragment();
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, $("token").value.trim());
    $("token").value = "";
    refresh();
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    login("Token forgotten. Enter it again to see the mesh.");
  });
  refresh();
});
