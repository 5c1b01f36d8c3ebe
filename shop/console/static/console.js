// The console page: one EventSource for events and notifications, polls for the board and the dead letters, and the
// admin actions with a Bearer token kept in this tab's sessionStorage. Every list is capped: the page holds at most
// MAX_EVENTS events and MAX_NOTIFICATIONS notifications, whatever the traffic.
"use strict";

const MAX_EVENTS = 500;
const MAX_NOTIFICATIONS = 200;
const $ = (selector) => document.querySelector(selector);

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

function short(id) { return id ? String(id).slice(0, 8) : ""; }
function age(iso) {
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  return seconds < 60 ? `${seconds.toFixed(1)} s` : `${Math.floor(seconds / 60)} min`;
}

// ---- admin session ------------------------------------------------------------------------------------------------
function token() { return sessionStorage.getItem("shop-console-token"); }
function showSession() {
  $("#login").hidden = Boolean(token());
  $("#signed-in").hidden = !token();
}
$("#login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const response = await fetch("/api/token", { method: "POST", body: new URLSearchParams(new FormData(event.target)) });
  const answer = await response.json();
  if (response.ok) sessionStorage.setItem("shop-console-token", answer.access_token);
  say(response.ok ? "signed in as admin" : `sign-in refused: ${answer.detail}`, !response.ok);
  showSession();
});
$("#logout").addEventListener("click", () => { sessionStorage.removeItem("shop-console-token"); showSession(); });

function say(text, isError) {
  $("#action-result").textContent = text;
  $("#action-result").className = isError ? "error" : "";
}

async function act(path, body) {
  if (!token()) { say("sign in as the admin first", true); return null; }
  const response = await fetch(path, {
    method: "POST", headers: { "Authorization": `Bearer ${token()}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = await response.json();
  if (!response.ok) {
    if (response.status === 401) { sessionStorage.removeItem("shop-console-token"); showSession(); }
    say(`${path}: ${answer.detail || response.status}`, true);
    return null;
  }
  return answer;
}

$("#place").addEventListener("submit", async (event) => {
  event.preventDefault();
  const outcome = $("#outcome").value, count = Number($("#count").value);
  say(`placing ${count} ${outcome} order(s)…`);
  const answer = await act("/api/orders", { outcome, count });
  if (answer) {
    say(`placed ${answer.orders.length} ${outcome} order(s): ${answer.orders.map(short).join(", ")}`);
    $("#action-result").dataset.orders = answer.orders.join(" ");
  }
});

// ---- live stream: events and notifications ------------------------------------------------------------------------
const filters = { order: $("#filter-order"), type: $("#filter-type"), service: $("#filter-service") };
function matches(row) {
  const order = filters.order.value.trim(), type = filters.type.value.trim().toLowerCase();
  const service = filters.service.value.trim().toLowerCase();
  return (!order || row.dataset.order.startsWith(order))
    && (!type || row.dataset.type.toLowerCase().includes(type))
    && (!service || row.dataset.services.toLowerCase().includes(service));
}
function applyFilters() { for (const row of $("#events tbody").rows) row.hidden = !matches(row); }
for (const input of Object.values(filters)) input.addEventListener("input", applyFilters);

function addEvent(item) {
  const order = el("a", { class: "order", title: item.order_id || "" }, short(item.order_id));
  order.addEventListener("click", () => openJourney(item.order_id));
  const row = el("tr", { class: "event", "data-order": item.order_id || "", "data-type": item.type,
                         "data-event": item.event_id, "data-occurred": item.occurred_at,
                         "data-services": [item.producer, ...item.consumers].join(" ") },
    el("td", { class: "age num" }, age(item.occurred_at)),
    el("td", {}, item.type),
    el("td", {}, `${item.producer} → ${item.consumers.join(", ") || "nobody"}`),
    el("td", {}, order));
  row.hidden = !matches(row);
  const body = $("#events tbody");
  body.prepend(row);
  while (body.rows.length > MAX_EVENTS) body.deleteRow(-1);
  if (journeyOrder && item.order_id === journeyOrder) loadJourney();
}

function addNotification(line) {
  const list = $("#notifications");
  list.prepend(el("li", { class: `notification ${line.type || ""}`, "data-order": line.order_id || "" },
    `${(line.sent_at || "").slice(11, 19)} ${line.type || ""} `, el("b", {}, short(line.order_id)), ` ${line.message || ""}`));
  while (list.children.length > MAX_NOTIFICATIONS) list.lastElementChild.remove();
}

function connect() {
  const source = new EventSource("/api/stream");
  source.addEventListener("open", () => { $("#connection").textContent = "live"; $("#connection").className = "badge live"; });
  source.addEventListener("error", () => { $("#connection").textContent = "reconnecting"; $("#connection").className = "badge"; });
  source.addEventListener("event", (message) => addEvent(JSON.parse(message.data)));
  source.addEventListener("notification", (message) => addNotification(JSON.parse(message.data)));
  source.addEventListener("skipped", () => say("the stream skipped ahead: events came faster than this page reads"));
}
setInterval(() => { for (const row of $("#events tbody").rows) row.cells[0].textContent = age(row.dataset.occurred); }, 1000);

// ---- services board -----------------------------------------------------------------------------------------------
function sparkline(values) {
  const width = 120, height = 24, max = Math.max(1, ...values);
  const points = values.map((v, i) => `${(i * width / Math.max(1, values.length - 1)).toFixed(1)},${(height - v / max * (height - 2) - 1).toFixed(1)}`);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark"); svg.setAttribute("width", width); svg.setAttribute("height", height);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points.join(" ")); line.setAttribute("fill", "none"); line.setAttribute("stroke", "#0b5cad");
  svg.append(line);
  return svg;
}

function count(value) { return value === null || value === undefined ? "?" : value; }

async function refreshBoard() {
  const board = await (await fetch("/api/board")).json();
  $("#mode").textContent = board.mode + (board.broker ? ` on ${board.broker}` : "");
  const body = $("#board tbody");
  body.replaceChildren();
  for (const [name, s] of Object.entries(board.services)) {
    const workers = Array.isArray(s.workers) ? s.workers.length : s.workers;
    const rates = s.handled_per_second || [];
    const toggle = el("button", { type: "button", class: s.stopped ? "start" : "stop" }, s.stopped ? "start workers" : "stop workers");
    toggle.addEventListener("click", async () => {
      const answer = await act(`/api/services/${name}/${s.stopped ? "start" : "stop"}`);
      if (answer) say(`${name}: workers ${answer.workers}`);
      refreshBoard();
    });
    body.append(el("tr", { "data-service": name },
      el("td", {}, name, s.stopped ? el("span", { class: "stopped" }, " (stopped)") : ""),
      el("td", { class: `num workers ${workers ? "" : "zero-workers"}` }, workers),
      el("td", { class: "num waiting" }, count(s.waiting)),
      el("td", { class: "num in_flight" }, count(s.in_flight)),
      el("td", { class: "num retries" }, count(s.retries)),
      el("td", { class: "num dead_letters" }, count(s.dead_letters)),
      el("td", { class: "rate" }, sparkline(rates.length ? rates : [0]), ` ${(rates.at(-1) ?? 0).toFixed(1)}/s`),
      el("td", {}, toggle)));
  }
}

// ---- dead letters -------------------------------------------------------------------------------------------------
async function refreshDeadLetters() {
  const answer = await (await fetch("/api/dead-letters")).json();
  const body = $("#dead-letters tbody");
  body.replaceChildren();
  for (const record of answer.dead_letters) {
    const replay = el("button", { type: "button", class: "replay" }, "replay");
    const purge = el("button", { type: "button", class: "purge" }, "purge");
    replay.addEventListener("click", async () => { const a = await act(`/api/dead-letters/${record.id}/replay`); if (a) say(`replayed into ${a.into}`); refreshDeadLetters(); });
    purge.addEventListener("click", async () => { const a = await act(`/api/dead-letters/${record.id}/purge`); if (a) say(`purged ${short(record.id)}`); refreshDeadLetters(); });
    body.append(el("tr", { class: "dead-letter", "data-id": record.id, "data-reason": record.reason, "data-order": record.order_id || "", title: record.detail || "" },
      el("td", {}, record.service), el("td", {}, record.reason), el("td", {}, short(record.order_id)), el("td", { class: "num" }, record.attempts),
      el("td", {}, (record.dead_at || "").slice(11, 19)), el("td", {}, replay, " ", purge)));
  }
}

// ---- an order's journey: a sequence diagram, services as lanes ----------------------------------------------------
let journeyOrder = null;
function openJourney(orderId) {
  if (!orderId) return;
  journeyOrder = orderId;
  $("#journey-panel").hidden = false;
  $("#journey-order").textContent = orderId;
  loadJourney();
}
$("#journey-close").addEventListener("click", () => { journeyOrder = null; $("#journey-panel").hidden = true; });

async function loadJourney() {
  const orderId = journeyOrder;
  const journey = await (await fetch(`/api/orders/${encodeURIComponent(orderId)}/journey`)).json();
  if (orderId !== journeyOrder) return;
  const traces = journey.trace_ids.length ? `, trace ${journey.trace_ids.join(", ")}` : "";
  $("#journey-summary").textContent = `${journey.events.length} events in ${journey.duration_ms.toFixed(1)} ms${traces}`;
  const lanes = [];
  for (const hop of journey.events) for (const name of [hop.producer, ...hop.handled_by]) if (!lanes.includes(name)) lanes.push(name);
  const NS = "http://www.w3.org/2000/svg", laneWidth = 170, rowHeight = 34, top = 30;
  const width = Math.max(1, lanes.length) * laneWidth, height = top + journey.events.length * rowHeight + 10;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const x = (name) => lanes.indexOf(name) * laneWidth + laneWidth / 2;
  const add = (tag, attributes, text) => {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
  };
  add("defs", {});
  svg.lastChild.innerHTML = '<marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#0b5cad"/></marker>';
  for (const name of lanes) {
    add("text", { x: x(name), y: 16, "text-anchor": "middle", "font-size": 12, "font-weight": "bold" }, name);
    add("line", { x1: x(name), y1: 22, x2: x(name), y2: height, stroke: "#ccc", "stroke-dasharray": "4 3" });
  }
  const hops = $("#journey-hops");
  hops.replaceChildren();
  journey.events.forEach((hop, index) => {
    const y = top + index * rowHeight + 18;
    const label = `${hop.type}${hop.hop_ms === null ? "" : ` (+${hop.hop_ms.toFixed(1)} ms)`}`;
    const targets = hop.handled_by.length ? hop.handled_by : [hop.producer];
    for (const target of targets) {
      if (target === hop.producer) add("circle", { cx: x(target), cy: y, r: 4, fill: "#0b5cad" });
      else add("line", { x1: x(hop.producer), y1: y, x2: x(target) + (x(target) > x(hop.producer) ? -4 : 4), y2: y,
                         stroke: "#0b5cad", "marker-end": "url(#arrow)" });
    }
    const left = Math.min(...targets.map(x), x(hop.producer)), right = Math.max(...targets.map(x), x(hop.producer));
    add("text", { x: (left + right) / 2, y: y - 5, "text-anchor": "middle", "font-size": 11 }, label);
    hops.append(el("li", { class: "hop", "data-type": hop.type, "data-event": hop.event_id, "data-cause": hop.causation_id || "" },
      `+${hop.offset_ms.toFixed(1)} ms ${hop.type} ${hop.producer} → ${hop.handled_by.join(", ") || "nobody"}`
      + (hop.cause_type ? ` (after ${hop.cause_type}, ${hop.hop_ms.toFixed(1)} ms)` : "")));
  });
  $("#journey-diagram").replaceChildren(svg);
}

// ---- start --------------------------------------------------------------------------------------------------------
async function start() {
  showSession();
  const info = await (await fetch("/api/info")).json();
  $("#mode").textContent = info.mode;
  if (!info.poison) {
    const poison = $("#outcome option[value=poison]");
    poison.disabled = true;
    poison.textContent += " — needs SHOP_FAULT_INJECTION=1";
  }
  if (!info.streams_events) $("#events-panel h2 small").textContent = "the monolith keeps no event log: its calls are in process";
  connect();
  refreshBoard(); refreshDeadLetters();
  setInterval(refreshBoard, 1000);
  setInterval(refreshDeadLetters, 2000);
}
start();
