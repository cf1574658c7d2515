// The service map page: keeps the server's graph (snapshot + deltas over server-sent events), applies the
// filters, and draws the visible part with cytoscape. Text from flows is only ever set as textContent.
"use strict";

const VERDICTS = ["forwarded", "dropped", "audit", "other"];
const TABLE_ROWS = 200;

const state = {
  nodes: new Map(),   // id -> {id, label, namespace, kind, last_seen}
  edges: new Map(),   // id -> {id, source, target, port, protocol, counts, buckets: {t: [4]}, policies, last_seen}
  rows: [],           // newest first
  status: null,
  flowsSeen: 0,
  hidden: new Set(),
  namespacesSeen: new Set(),
  namespacesOff: new Set(),
  panelEdge: null,
  lastLayout: 0,
  renderMs: [],  // how long the last draws took (the page's own measure of its load)
  firstShown: new Map(),  // edge id -> when it first appeared on the map (how fast news shows is read from it)
};

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

// --- filters -----------------------------------------------------------------------------------------

function windowSeconds() { return Number(document.getElementById("window").value); }

function verdictsOn() {
  return new Set(VERDICTS.filter((v) => document.getElementById("verdict-" + v).checked));
}

function nodeShown(id) {
  const node = state.nodes.get(id);
  if (!node || state.hidden.has(id)) return false;
  return node.namespace === "" || !state.namespacesOff.has(node.namespace);
}

function windowCounts(edge, win, now) {
  if (!win) return edge.counts;
  const out = {forwarded: 0, dropped: 0, audit: 0, other: 0};
  const from = now - win;
  for (const [t, counts] of Object.entries(edge.buckets)) {
    if (Number(t) + 10 <= from) continue;  // a bucket covers [t, t + 10 s)
    VERDICTS.forEach((v, i) => { out[v] += counts[i]; });
  }
  return out;
}

// The edges to draw now: both ends shown, and some flows of a chosen verdict within the window.
function visibleEdges() {
  const win = windowSeconds();
  const now = Date.now() / 1000;
  const on = verdictsOn();
  const out = [];
  for (const edge of state.edges.values()) {
    if (!nodeShown(edge.source) || !nodeShown(edge.target)) continue;
    const counts = windowCounts(edge, win, now);
    const total = VERDICTS.reduce((s, v) => s + (on.has(v) ? counts[v] : 0), 0);
    if (total > 0) out.push({edge, counts});
  }
  return out;
}

function rowShown(row, on, win, now) {
  if (!on.has(row.verdict)) return false;
  if (win && row.time < now - win) return false;
  return nodeShown(row.source) && nodeShown(row.target);
}

// --- drawing -----------------------------------------------------------------------------------------

const cy = cytoscape({
  container: document.getElementById("map"),
  // Large maps: a canvas without a GPU redraws every edge label each frame; labels too small to read
  // are not drawn (below), and panning or zooming moves a bitmap instead of redrawing.
  textureOnViewport: true,
  pixelRatio: 1,
  style: [
    {selector: "node", style: {
      "label": "data(label)", "font-size": 10, "text-valign": "bottom", "text-margin-y": 3,
      "min-zoomed-font-size": 6,
      "background-color": "#4a78b5", "width": 22, "height": 22}},
    {selector: "node.ns", style: {
      "label": "data(label)", "text-valign": "top", "font-size": 11, "font-weight": "bold",
      "background-color": "#eef2f8", "background-opacity": 0.6, "border-color": "#9fb1cc", "border-width": 1,
      "shape": "round-rectangle", "padding": 14}},
    {selector: "node.world", style: {"shape": "diamond", "background-color": "#7f8c8d"}},
    {selector: "node.host, node.remote-node, node.node", style: {"shape": "round-rectangle", "background-color": "#5d4e8c"}},
    {selector: "node.has-drops", style: {"border-color": "#c0392b", "border-width": 3}},
    {selector: "edge", style: {
      "curve-style": "bezier", "target-arrow-shape": "triangle", "width": 2, "label": "data(label)",
      "font-size": 9, "min-zoomed-font-size": 7, "text-rotation": "autorotate", "text-margin-y": -8,
      "text-outline-color": "#fff", "text-outline-width": 2, "arrow-scale": 1.2,
      "line-color": "#2e8540", "target-arrow-color": "#2e8540"}},
    {selector: "edge.audit", style: {"line-color": "#e67e22", "target-arrow-color": "#e67e22",
      "line-style": "dotted", "width": 3}},
    {selector: "edge.dropped", style: {"line-color": "#c0392b", "target-arrow-color": "#c0392b",
      "line-style": "dashed", "width": 4}},
    {selector: "edge.other", style: {"line-color": "#7f8c8d", "target-arrow-color": "#7f8c8d"}},
    {selector: ":selected", style: {"overlay-color": "#1d6fd8", "overlay-opacity": 0.2}},
  ],
});

// An edge's class: the verdict that must stand out most among its flows in the window.
function edgeClass(counts, on) {
  if (on.has("dropped") && counts.dropped) return "dropped";
  if (on.has("audit") && counts.audit) return "audit";
  if (on.has("forwarded") && counts.forwarded) return "forwarded";
  return "other";
}

function edgeLabel(edge, counts) {
  const parts = VERDICTS.filter((v) => counts[v]).map((v) => `${counts[v]} ${v}`);
  const port = edge.port ? `:${edge.port}` : "";
  return `${edge.protocol}${port}  ${parts.join(", ")}`;
}

function render() {
  const on = verdictsOn();
  const shown = visibleEdges();
  const wantNodes = new Map();
  const wantEdges = new Map();
  const dropsAt = new Set();
  for (const {edge, counts} of shown) {
    const cls = edgeClass(counts, on);
    wantEdges.set(edge.id, {data: {id: edge.id, source: edge.source, target: edge.target,
      label: edgeLabel(edge, counts)}, classes: cls});
    if (cls === "dropped") { dropsAt.add(edge.source); dropsAt.add(edge.target); }
    for (const id of [edge.source, edge.target]) {
      const node = state.nodes.get(id);
      const data = {id, label: node.label, kind: node.kind, namespace: node.namespace};
      if (node.namespace) {
        data.parent = "ns:" + node.namespace;
        wantNodes.set(data.parent, {data: {id: data.parent, label: node.namespace}, classes: "ns"});
      }
      wantNodes.set(id, {data, classes: node.kind});
    }
  }
  for (const id of dropsAt) { if (wantNodes.has(id)) wantNodes.get(id).classes += " has-drops"; }
  let added = false;
  cy.batch(() => {
    cy.elements().forEach((ele) => {
      const want = ele.isNode() ? wantNodes.get(ele.id()) : wantEdges.get(ele.id());
      if (!want) { cy.remove(ele); return; }
      // Touch only what changed: each change restyles the element.
      if (ele.data("label") !== want.data.label) ele.data("label", want.data.label);
      if (ele.classes().join(" ") !== want.classes) ele.classes(want.classes);
    });
    const newNodes = [...wantNodes.values()].filter((n) => cy.getElementById(n.data.id).empty());
    // Parents first: a child names its parent when it is added.
    newNodes.sort((a, b) => (a.classes === "ns" ? 0 : 1) - (b.classes === "ns" ? 0 : 1));
    for (const n of newNodes) { cy.add({group: "nodes", ...n}); added = true; }
    const now = Date.now() / 1000;
    for (const e of wantEdges.values()) {
      if (cy.getElementById(e.data.id).empty()) cy.add({group: "edges", ...e});
      if (!state.firstShown.has(e.data.id)) state.firstShown.set(e.data.id, now);
    }
  });
  if (added) layout();
  renderTable(on);
  renderNamespaces();
  document.getElementById("totals").textContent =
    `${state.nodes.size} nodes, ${state.edges.size} edges, ${state.flowsSeen} flows seen`;
}

let layoutTimer = null;
function layout() {
  // At most one layout a second: a burst of new workloads is laid out once.
  const wait = Math.max(0, state.lastLayout + 1000 - Date.now());
  if (layoutTimer) return;
  layoutTimer = setTimeout(() => {
    layoutTimer = null;
    state.lastLayout = Date.now();
    cy.layout({name: "cose", animate: false, nodeDimensionsIncludeLabels: true, randomize: false,
      numIter: 600, padding: 20}).run();
  }, wait);
}

// Draw at most every 500 ms, and every second once the map is large: under thousands of flows a second
// every delta changes most edges, and each draw repaints the whole canvas; news still shows within 2 s.
const LARGE_MAP_EDGES = 150;
let renderPending = false;
let lastRender = 0;
function scheduleRender() {
  if (renderPending) return;
  renderPending = true;
  const gap = cy.edges().length > LARGE_MAP_EDGES ? 1000 : 500;
  const wait = Math.max(0, lastRender + gap - Date.now());
  setTimeout(() => requestAnimationFrame(() => {
    renderPending = false;
    const started = performance.now();
    lastRender = Date.now();
    render();
    state.renderMs.push(performance.now() - started);
    if (state.renderMs.length > 200) state.renderMs.shift();
  }), wait);
}

function renderTable(on) {
  const win = windowSeconds();
  const now = Date.now() / 1000;
  const body = document.querySelector("#flows tbody");
  const rows = state.rows.filter((r) => rowShown(r, on, win, now)).slice(0, TABLE_ROWS);
  body.replaceChildren(...rows.map((r) => el("tr", {class: "verdict-" + r.verdict, "data-edge": r.source + ">" + r.target},
    el("td", {}, new Date(r.time * 1000).toLocaleTimeString()),
    el("td", {}, r.from), el("td", {}, r.to), el("td", {}, r.protocol),
    el("td", {class: "verdict"}, r.verdict + (r.reply ? " (reply)" : "")),
    el("td", {}, r.policies.join("; ")),
    el("td", {}, r.drop_reason || r.summary))));
  document.getElementById("flows-count").textContent = `(${rows.length} shown)`;
}

function renderNamespaces() {
  const list = document.getElementById("ns-list");
  const have = new Set([...list.querySelectorAll("input")].map((i) => i.dataset.ns));
  for (const ns of [...state.namespacesSeen].sort()) {
    if (have.has(ns)) continue;
    const box = el("input", {type: "checkbox", "data-ns": ns, id: "ns-" + ns});
    box.checked = !state.namespacesOff.has(ns);
    box.addEventListener("change", () => {
      if (box.checked) state.namespacesOff.delete(ns); else state.namespacesOff.add(ns);
      document.getElementById("ns-all").checked = state.namespacesOff.size === 0;
      scheduleRender();
    });
    list.append(el("label", {}, box, " " + ns));
  }
}

// --- the edge panel ----------------------------------------------------------------------------------

let panelTimer = null;
async function showEdge(id) {
  state.panelEdge = id;
  let detail;
  try {
    const answer = await fetch("/api/edge?id=" + encodeURIComponent(id));
    if (!answer.ok) throw new Error(await answer.text());
    detail = await answer.json();
  } catch (err) {
    fillPanel([el("p", {}, "cannot load the edge: " + err.message)]);
    return;
  }
  if (state.panelEdge !== id) return;
  detail.counts = countsByVerdict(detail.counts);
  const parts = [el("h3", {}, `${detail.source} → ${detail.target} ${detail.protocol}:${detail.port}`)];
  parts.push(el("p", {}, VERDICTS.map((v) => `${detail.counts[v]} ${v}`).join(", ")));
  parts.push(el("h3", {}, "policies"));
  const policies = el("ul", {class: "policies"});
  for (const u of detail.policy_uses) {
    policies.append(el("li", {class: "policy " + u.role},
      `${u.role} by ${u.policy} at ${u.direction} (${u.flows} flows)`));
  }
  if (!detail.policy_uses.length) policies.append(el("li", {}, "no policy named by these flows"));
  parts.push(policies);
  parts.push(el("h3", {}, "why (from the flows)"));
  parts.push(el("ul", {class: "why"}, ...detail.why.map((w) => el("li", {}, w))));
  if (detail.trace) parts.push(...traceParts(detail.trace));
  parts.push(el("h3", {}, "recent flows"));
  parts.push(el("ul", {class: "recent"}, ...detail.recent.map((r) => el("li", {class: "verdict-" + r.verdict},
    `${new Date(r.time * 1000).toLocaleTimeString()} ${r.from} → ${r.to} ${r.verdict}` +
    `${r.reply ? " (reply)" : ""} ${r.drop_reason || r.summary}`))));
  fillPanel(parts);
}

function traceParts(trace) {
  const parts = [el("h3", {}, "why (policy trace of the manifests)")];
  if (trace.error) { parts.push(el("p", {}, trace.error)); return parts; }
  parts.push(el("p", {class: "trace-verdict"}, `${trace.from} → ${trace.to}: ${trace.verdict}`));
  for (const d of trace.directions) {
    const box = el("div", {class: "trace-dir"},
      el("div", {}, `${d.direction} ${d.endpoint}: ${d.verdict} — ${d.reason}` +
        (d.deciding_rule ? ` (${d.deciding_rule})` : "")));
    if (d.isolated_by.length) box.append(el("div", {}, "isolated by: " + d.isolated_by.join(", ")));
    box.append(el("ul", {}, ...d.rules.map((r) =>
      el("li", {}, `${r.rule} (${r.action}${r.audit ? ", audit" : ""}): ${r.matched ? "match" : "no match"}: ${r.why}`))));
    parts.push(box);
  }
  return parts;
}

function showNode(id) {
  const node = state.nodes.get(id);
  if (!node) return;
  state.panelEdge = null;
  const hide = el("button", {id: "hide-node"}, "hide this workload");
  hide.addEventListener("click", () => { addHidden(id); closePanel(); });
  fillPanel([el("h3", {}, id), el("p", {}, `kind: ${node.kind}` + (node.namespace ? `, namespace ${node.namespace}` : "")), hide]);
}

function fillPanel(parts) {
  const panel = document.getElementById("panel");
  document.getElementById("panel-body").replaceChildren(...parts);
  panel.hidden = false;
}

function closePanel() {
  state.panelEdge = null;
  document.getElementById("panel").hidden = true;
}

cy.on("tap", "edge", (evt) => showEdge(evt.target.id()));
cy.on("tap", "node", (evt) => { if (!evt.target.hasClass("ns")) showNode(evt.target.id()); });
document.getElementById("panel-close").addEventListener("click", closePanel);

// --- filter controls ---------------------------------------------------------------------------------

function addHidden(id) {
  const input = document.getElementById("hide");
  const names = input.value.split(",").map((s) => s.trim()).filter(Boolean);
  if (!names.includes(id)) names.push(id);
  input.value = names.join(", ");
  readHidden();
}

function readHidden() {
  state.hidden = new Set(document.getElementById("hide").value.split(",").map((s) => s.trim()).filter(Boolean));
  scheduleRender();
}

document.getElementById("hide").addEventListener("input", readHidden);
document.getElementById("window").addEventListener("change", scheduleRender);
for (const v of VERDICTS) document.getElementById("verdict-" + v).addEventListener("change", scheduleRender);
document.getElementById("ns-all").addEventListener("change", (evt) => {
  state.namespacesOff = evt.target.checked ? new Set() : new Set(state.namespacesSeen);
  for (const box of document.querySelectorAll("#ns-list input")) box.checked = evt.target.checked;
  scheduleRender();
});
setInterval(scheduleRender, 5000);  // the time window moves on even when nothing new arrives

// --- the live stream ---------------------------------------------------------------------------------

function setStatus(status) {
  state.status = status;
  const badge = document.getElementById("status");
  badge.className = "status " + status.state;
  let text = `${status.state}: ${status.server}`;
  if (status.state === "unreachable") text += ` — ${status.message} (retrying in ${status.retry_in_s} s)`;
  if (status.lost_events) text += ` — ${status.lost_events} flows lost`;
  const missing = status.unavailable_nodes || [];
  if (status.state === "connected" && missing.length) {
    // Through a relay: the map lacks these nodes' flows until the relay reaches them again.
    badge.className = "status partial";
    text += " — flows missing from " + missing.map((n) => `${n.node} (${n.message})`).join(", ");
  }
  badge.textContent = text;
}

function countsByVerdict(list) {
  return {forwarded: list[0], dropped: list[1], audit: list[2], other: list[3]};
}

function apply(message, reset) {
  if (reset) { state.nodes.clear(); state.edges.clear(); state.rows = []; }
  for (const n of message.nodes) {
    state.nodes.set(n.id, n);
    if (n.namespace) state.namespacesSeen.add(n.namespace);
  }
  for (const e of message.edges) {
    e.counts = countsByVerdict(e.counts);
    const old = reset ? undefined : state.edges.get(e.id);
    if (old) {
      // A delta carries the changed buckets only, and the policies only when one was added.
      Object.assign(old.buckets, e.buckets);
      Object.assign(old, {...e, buckets: old.buckets, policies: e.policies || old.policies});
    } else {
      state.edges.set(e.id, e);
    }
  }
  for (const id of message.removed_edges || []) state.edges.delete(id);
  for (const id of message.removed_nodes || []) state.nodes.delete(id);
  state.rows = message.flows.slice().reverse().concat(state.rows).slice(0, 4 * TABLE_ROWS);
  state.flowsSeen = message.flows_seen;
  if (message.status) setStatus(message.status);
  if (state.panelEdge && message.edges.some((e) => e.id === state.panelEdge)) refreshPanelSoon();
  scheduleRender();
}

function refreshPanelSoon() {
  if (panelTimer) return;
  panelTimer = setTimeout(() => { panelTimer = null; if (state.panelEdge) showEdge(state.panelEdge); }, 1000);
}

function connect() {
  const events = new EventSource("/api/events");
  events.addEventListener("snapshot", (e) => apply(JSON.parse(e.data), true));
  events.addEventListener("delta", (e) => apply(JSON.parse(e.data), false));
  events.addEventListener("status", (e) => setStatus(JSON.parse(e.data)));
  events.onerror = () => {
    // EventSource reconnects by itself (and gets a fresh snapshot); say so meanwhile.
    setStatus({state: "unreachable", server: "the map server", message: "connection lost", retry_in_s: 1});
  };
}

window.meshmap = {cy, state, visibleEdges, render};
connect();
