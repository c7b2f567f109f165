// Prism's web page: a live branch tree and event feed over the /api/v1/events WebSocket,
// with controls that call the REST API. Plain browser JavaScript, no framework, no build step.
"use strict";

const API = "/api/v1";
const MAX_EVENTS = 200;
const branches = new Map(); // name -> branch view, as the REST API shapes it
const collapsed = new Set(); // branches whose children are hidden
let activity = {}; // name -> {sessions: [60], bytes: [60]}
const logged = new Set(); // seq of events in the feed: the ring and the stream overlap
let token = localStorage.getItem("prism-token") || "";

// Event types that are a branch's new status; the rest change counts or remove the branch.
const STATUS_EVENTS = new Set([
  "backing_up", "provisioning", "starting", "running", "recovering", "unhealthy", "stopping",
  "stopped", "resetting", "deleting",
]);
// Statuses of a server that was up and serves nobody: they come with why and the log's end.
const UNWELL = new Set(["recovering", "unhealthy"]);

const $ = (selector) => document.querySelector(selector);

function headers() {
  const h = { "Content-Type": "application/json" };
  if (token) h.Authorization = `Bearer ${token}`;
  return h;
}

function askForToken() {
  $("#token-form").hidden = false;
  $("#token").focus();
}

function say(text, isError = false) {
  const message = $("#message");
  message.textContent = text;
  message.className = isError ? "error" : "";
}

// One REST call; failures are shown in the status line with the API's own message.
async function call(method, path, body) {
  const response = await fetch(API + path, {
    method, headers: headers(), body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) askForToken();
  const data = response.status === 204 ? null : await response.json();
  if (!response.ok) {
    const error = new Error(data.message);
    error.code = data.code;
    throw error;
  }
  return data;
}

function ago(isoTime) {
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(isoTime)) / 1000));
  if (seconds < 60) return `${seconds}s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h ago`;
  return `${Math.floor(seconds / 86400)}d ago`;
}

function button(label, action, name) {
  const b = document.createElement("button");
  b.textContent = label;
  b.dataset.action = action;
  b.addEventListener("click", () => act(action, name));
  return b;
}

const FIELDS = [
  "name", "status", "parent", "connections", "activity", "disk", "protected", "expires",
  "connection", "last_active", "actions",
];

function actionsOf(b) {
  if (b.status === "backing_up") return []; // nothing can use main until its backup is done
  const actions = b.status === "stopped" ? ["start"] : ["stop"];
  return b.parent === null ? actions : ["reset", ...actions, "delete"];
}

function size(bytes) {
  if (bytes === null || bytes === undefined) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

function until(isoTime) {
  if (!isoTime) return "never";
  const seconds = Math.round((Date.parse(isoTime) - Date.now()) / 1000);
  if (seconds <= 0) return "expired";
  if (seconds < 3600) return `in ${Math.ceil(seconds / 60)}m`;
  // Rounded: a TTL of 72h set a moment ago reads "in 3d", as it was asked.
  if (seconds < 86400) return `in ${Math.round(seconds / 3600)}h`;
  return `in ${Math.round(seconds / 86400)}d`;
}

// The tree, depth first: roots (no parent, or a parent not listed) by name, children by name.
function treeOrder() {
  const children = new Map();
  const roots = [];
  for (const name of [...branches.keys()].sort()) {
    const parent = branches.get(name).parent;
    if (parent !== null && branches.has(parent)) {
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(name);
    } else {
      roots.push(name);
    }
  }
  const order = [];
  const visit = (name, depth, hidden) => {
    order.push({ name, depth, hidden, parentOf: children.get(name) ?? [] });
    for (const child of children.get(name) ?? []) {
      visit(child, depth + 1, hidden || collapsed.has(name));
    }
  };
  for (const root of roots) visit(root, 0, false);
  return order;
}

// A sparkline of sessions (orange) and bytes (blue) per minute: an inline SVG, redrawn only
// when its numbers change.
const SVG = "http://www.w3.org/2000/svg";
function sparkline(td, series) {
  const key = series ? `${series.sessions}|${series.bytes}` : "";
  if (td.dataset.key === key) return;
  td.dataset.key = key;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 60 16");
  svg.setAttribute("class", "spark");
  if (series) {
    for (const [values, kind] of [[series.bytes, "bytes"], [series.sessions, "sessions"]]) {
      const top = Math.max(1, ...values);
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("class", kind);
      line.setAttribute("points", values.map((v, i) => `${i},${15 - (14 * v) / top}`).join(" "));
      svg.append(line);
    }
    const sessions = series.sessions.reduce((a, b) => a + b, 0);
    const moved = series.bytes.reduce((a, b) => a + b, 0);
    td.title = `last hour: ${sessions} sessions, ${size(moved)} moved`;
  }
  td.replaceChildren(svg);
}

function control(tag, { dataset = {}, ...properties }, onEvent) {
  const element = document.createElement(tag);
  Object.assign(element, properties);
  Object.assign(element.dataset, dataset);
  if (onEvent) element.addEventListener(onEvent[0], onEvent[1]);
  return element;
}

// Cells that hold controls are built once per row; later renders only update their state, so a
// control never changes under a person's pointer (see rowOf).
function buildControls(row, name) {
  const cell = (field) => row.cells[FIELDS.indexOf(field)];
  cell("status").append(control("span", { className: "state" }));
  const toggle = control("button", { className: "toggle", textContent: "", dataset: { action: "toggle" } },
    ["click", () => { collapsed.has(name) ? collapsed.delete(name) : collapsed.add(name); render(); }]);
  cell("name").append(toggle,
    control("button", { type: "button", className: "label", dataset: { action: "detail" } },
      ["click", () => openDetail(name)]),
    control("span", { className: "generation" }), control("span", { className: "at" }));
  // Controls repeated on every row are named for their branch, for screen readers.
  cell("protected").append(control("input", { type: "checkbox", dataset: { action: "protect" },
    ariaLabel: `protect ${name}` },
    ["change", (change) => protect(name, change.target)]));
  cell("expires").append(
    control("span", { className: "when" }),
    control("input", { size: 5, placeholder: "72h", dataset: { input: "ttl" },
      ariaLabel: `expiry of ${name}: a TTL such as 72h, or never` }),
    control("button", { textContent: "set", dataset: { action: "expire" },
      ariaLabel: `set the expiry of ${name}` },
      ["click", () => expire(name, row)]),
  );
  cell("connection").append(
    control("code", { className: "dsn" }),
    control("button", { textContent: "copy", dataset: { action: "copy" },
      ariaLabel: `copy the connection URI of ${name}` }, ["click", () => copy(name)]),
    control("button", { textContent: "connect", dataset: { action: "connect" },
      ariaLabel: `connect to ${name}: formats and password` },
      ["click", () => openConnect(name)]),
  );
}

// One row, created once per branch and then updated in place: replacing rows on every event
// would swap a button for a new one between a person's mouse-down and mouse-up, and on a busy
// Prism (events all the time) their click would be lost.
const rows = new Map(); // name -> its row, so finding one never scans the table
function rowOf(body, name, index) {
  let row = rows.get(name);
  if (row === undefined) {
    row = document.createElement("tr");
    row.dataset.branch = name;
    for (const field of FIELDS) row.insertCell().dataset.field = field;
    row.cells[FIELDS.indexOf("actions")].className = "actions";
    buildControls(row, name);
    rows.set(name, row);
  }
  if (body.rows[index] !== row) body.insertBefore(row, body.rows[index] ?? null);
  return row;
}

// Why a recovering or unhealthy server does not serve: its reason and log, one click away
// (made while there is trouble, kept across renders so an open one stays open).
function showTrouble(td, b) {
  let details = td.querySelector("details.trouble");
  if (!b.trouble) {
    if (details) details.remove();
    return;
  }
  if (!details) {
    details = control("details", { className: "trouble" });
    details.append(control("summary", { textContent: "why" }), control("pre", {}));
    td.append(details);
  }
  const text = [b.trouble.reason, `since ${b.trouble.since}`, "", ...b.trouble.log].join("\n");
  setText(details.querySelector("pre"), text);
  put(details, "title", b.trouble.reason);
}

function show(row, field, text) {
  const td = row.cells[FIELDS.indexOf(field)];
  if (td.textContent !== text) td.textContent = text;
  return td;
}

// Main being made from a base backup of its source: the percent and time left in the status,
// a bar beside it, the bytes and rate on hover (kept current by "backup_progress" events).
function statusText(b) {
  if (b.status !== "backing_up" || !b.backup) return b.status;
  const eta = b.backup.eta_s === null ? "" : `, ${Math.round(b.backup.eta_s)} s left`;
  return `${b.status} ${b.backup.percent}%${eta}`;
}

function backupBar(td, b) {
  let bar = td.querySelector("progress");
  if (b.status !== "backing_up" || !b.backup) {
    if (bar) bar.remove();
    return;
  }
  if (!bar) {
    bar = document.createElement("progress");
    bar.max = 100;
    td.append(bar);
  }
  const { percent, done_bytes: done, total_bytes: total, rate_bytes_s: rate } = b.backup;
  put(bar, "value", percent);
  put(bar, "title", `${size(done)} of ${size(total)} at ${size(rate)}/s`);
}

function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

// Writes only what differs: with 200 rows redrawn, needless writes would each make the
// browser recompute styles.
function put(element, property, value) {
  if (element[property] !== value) element[property] = value;
}

function renderRow(row, b, place) {
  const cell = (field) => row.cells[FIELDS.indexOf(field)];
  put(row.dataset, "status", b.status);
  put(row.dataset, "depth", String(place.depth));
  put(row, "hidden", place.hidden);
  const toggle = cell("name").firstElementChild;
  put(toggle, "hidden", place.parentOf.length === 0);
  setText(toggle, collapsed.has(b.name) ? "▸" : "▾");
  put(toggle, "title", `${collapsed.has(b.name) ? "show" : "hide"} ${place.parentOf.join(", ")}`);
  const [, label, generation, at] = cell("name").children;
  setText(label, b.name);
  put(label, "title", `${b.name}: details`);
  put(cell("name").style, "paddingLeft", `${0.5 + place.depth * 1.2}em`);
  // --source-mode dump: which copy of the source the branch holds, and when it was taken.
  setText(generation, b.generation == null ? "" : `gen ${b.generation}`);
  put(generation, "title", b.generation_taken_at ? `dump taken ${b.generation_taken_at}` : "");
  // A branch made with --at: the time of its parent's data it holds.
  setText(at, b.at ? ` as of ${b.at}` : "");
  const status = cell("status");
  setText(status.querySelector(".state"), statusText(b));
  showTrouble(status, b);
  backupBar(status, b);
  put(show(row, "parent", b.parent ?? "—"), "title", b.parent ?? "");
  show(row, "connections", String(b.connections));
  sparkline(cell("activity"), activity[b.name]);
  const disk = b.disk;
  const diskText = !disk ? "…" : disk.own === null ? `? / ? (${size(disk.total)} in all)`
    : `${size(disk.own)} / ${size(disk.shared)}`;
  put(show(row, "disk", diskText), "title", disk ? disk.basis : "");
  const box = cell("protected").firstElementChild;
  if (document.activeElement !== box) put(box, "checked", Boolean(b.protected));
  setText(cell("expires").firstElementChild, until(b.expires_at));
  put(cell("expires"), "title", b.expires_at ?? "never expires");
  const dsn = cell("connection").firstElementChild;
  setText(dsn, b.connection ? b.connection.uri : "");
  put(dsn.nextElementSibling, "title", dsn.textContent); // the copy button: what it copies
  put(show(row, "last_active", ago(b.last_active)), "title", b.last_active);
  const actions = cell("actions");
  const wanted = actionsOf(b);
  const key = `${wanted.join()}|${Boolean(b.protected)}`;
  if (actions.dataset.actions !== key) {
    actions.replaceChildren(...wanted.map((action) => {
      const made = button(action, action, b.name);
      if (b.protected && (action === "reset" || action === "delete")) {
        made.disabled = true;
        made.title = "protected: unprotect it first";
      }
      return made;
    }));
    actions.dataset.actions = key;
  }
}

function fillSelect(select, names, fallback) {
  if (select.dataset.names === names.join()) return; // rebuilding would close an open list
  const chosen = select.value || fallback;
  select.replaceChildren(...names.map((n) => new Option(n || "all", n, false, n === chosen)));
  select.dataset.names = names.join();
}

// Many events can arrive at once (50 a second on a busy Prism): draw at most once per 16 ms,
// and then only the rows whose branch changed, unless the tree itself did (``render()``).
// (A timer, not requestAnimationFrame, which a hidden tab never runs: its table would go stale.)
let drawing = false;
let whole = true;
const changed = new Set();
let places = new Map(); // name -> its place in the tree, as of the last whole draw
function render(name) {
  if (name === undefined) whole = true;
  else changed.add(name);
  if (drawing) return;
  drawing = true;
  setTimeout(() => { drawing = false; draw(); }, 16);
}

function draw() {
  if (!whole) {
    for (const name of changed) {
      const row = rows.get(name);
      if (row !== undefined && branches.has(name)) renderRow(row, branches.get(name), places.get(name));
    }
    if (changed.has(detailOf)) drawDetail();
    changed.clear();
    return;
  }
  whole = false;
  changed.clear();
  const body = $("#branches tbody");
  body.querySelector("tr.loading")?.remove();
  for (const [name, row] of rows) {
    if (!branches.has(name)) { row.remove(); rows.delete(name); }
  }
  const order = treeOrder();
  places = new Map(order.map((place) => [place.name, place]));
  order.forEach((place, index) => {
    renderRow(rowOf(body, place.name, index), branches.get(place.name), place);
  });
  const names = [...branches.keys()].sort();
  fillSelect($("#create-parent"), names, "main");
  fillSelect($("#diff-a"), names, names.find((n) => n !== "main") ?? "main");
  fillSelect($("#diff-b"), names, "main");
  fillSelect($("#events-branch"), ["", ...names], "");
  if (detailOf !== null) drawDetail();
  const known = [...branches.values()].filter((b) => b.disk && b.disk.total !== null);
  const own = known.reduce((sum, b) => sum + (b.disk.own ?? 0), 0);
  const total = known.reduce((sum, b) => sum + b.disk.total, 0);
  setText($("#totals"), `${branches.size} branches · disk ${size(total)} in all, ${size(own)} own`);
}

// What only REST knows (policy, disk use, connection strings): fetched after the snapshot and
// whenever an event may have changed it, at most once a second.
let detailsDue = null;
const DETAIL_EVENTS = new Set([
  "created", "policy", "reset", "hook", "expired", "refresh_done", "deleted", "snapshot_taken",
  "disk_low", "disk_ok",
]);
function refreshDetails() {
  if (detailsDue !== null) return;
  detailsDue = setTimeout(async () => {
    detailsDue = null;
    try {
      const answer = await call("GET", "/branches");
      const listed = answer.branches;
      showDisk(answer.disk);
      for (const fresh of listed) {
        const b = branches.get(fresh.name);
        if (b === undefined) continue;
        for (const key of ["protected", "expires_at", "on_create", "disk", "connection",
          "generation", "generation_taken_at", "keeps_wal", "on_create_command", "created_at",
          "at"]) {
          b[key] = fresh[key];
        }
        if (fresh.source) b.backup = fresh.source.backup;
      }
      render();
    } catch (error) {
      say(`could not read branch details: ${error.message}`, true);
    }
  }, 0);
}

// The trash: deleted branches kept for undelete, read again whenever one comes or goes.
const TRASH_EVENTS = new Set(["deleted", "undeleted", "purged"]);
async function refreshTrash() {
  try {
    const kept = (await call("GET", "/trash")).trash;
    $("#trash-table tbody").replaceChildren(...kept.map((entry) => {
      const row = document.createElement("tr");
      row.dataset.trashed = entry.name;
      const cells = [entry.name, entry.parent ?? "-", ago(entry.deleted_at),
        until(entry.purge_at).replace("expired", "now"), size(entry.own_bytes)];
      for (const text of cells) row.append(control("td", { textContent: text }));
      const actions = control("td", { className: "actions" });
      actions.append(control("button", { textContent: "undelete", dataset: { action: "undelete" } },
        ["click", () => restore(entry.name)]));
      row.append(actions);
      return row;
    }));
  } catch (error) {
    say(`could not read the trash: ${error.message}`, true);
  }
}

async function restore(name) {
  say(`undelete ${name}…`);
  try {
    const back = (await call("POST", `/branches/${name}/undelete`)).undeleted;
    say(`undeleted ${back.join(", ")}`);
  } catch (error) {
    say(`undelete ${name}: ${error.message}`, true);
  }
}

// Main's file system: free, the reserve Prism keeps, its level; what to do when it is low.
function showDisk(disk) {
  const span = $("#disk");
  const main = disk && disk.filesystems.find((fs) => fs.holds.includes("main"));
  span.hidden = !main;
  if (!main) return;
  span.dataset.state = main.level;
  const level = main.level === "ok" ? "" : ` · ${main.level}`;
  setText(span, `disk ${size(main.free)} free of ${size(main.total)} · reserve ${size(main.reserve)}${level}`);
  const use = Object.entries(disk.use).map(([kind, bytes]) => `${kind.replace("_", " ")} ${size(bytes)}`);
  span.title = [disk.advice, `used by: ${use.join(", ")}`].filter(Boolean).join("\n");
  if (disk.advice) say(disk.advice, true);
}

// Main's source (--source), if it has one: read on load, then kept current by "source" events.
function showSource(source) {
  const span = $("#source");
  span.hidden = !source;
  if (!source) return;
  span.dataset.state = source.state;
  const lag = source.replay_lag_bytes === null ? "" : ` · lag ${size(source.replay_lag_bytes)}`;
  const seconds = source.replay_lag_seconds === null ? "" : ` / ${source.replay_lag_seconds} s`;
  const why = source.error ? ` · ${source.error}` : "";
  const retry = source.state === "disconnected" && source.retry_interval_s !== null
    ? ` · retrying every ${source.retry_interval_s} s` : "";
  span.textContent = `source: ${source.state}${lag}${seconds}${why}${retry}`;
  span.title = source.hint ?? `last replayed commit: ${source.last_replayed ?? "none yet"}`;
}

async function refreshSource() {
  try {
    showSource((await call("GET", "/branches/main")).source);
  } catch (error) {
    say(`could not read main's source: ${error.message}`, true);
  }
}

// The branch servers' sandbox: shown only where this host leaves a guard unenforced.
async function refreshSandbox() {
  try {
    const sandbox = (await (await fetch("/healthz")).json()).sandbox;
    const span = $("#sandbox");
    span.hidden = !sandbox || sandbox.complete;
    if (span.hidden) return;
    span.textContent = `sandbox: not enforced: ${sandbox.missing.join("; ")}`;
    span.title = "a branch's superuser may reach outside its branch here; see docs/security.md";
  } catch (error) {
    say(`could not read the sandbox's state: ${error.message}`, true);
  }
}

async function refreshActivity() {
  try {
    activity = await call("GET", "/activity");
    render();
  } catch (error) {
    say(`could not read activity: ${error.message}`, true);
  }
}

// Sessions come and go in bursts (a test suite, a pool warming up): consecutive connects and
// disconnects of one branch fold into one line with their counts, so a burst cannot push the
// creates and failures out of the feed.
const FOLDED = new Set(["connected", "disconnected"]);
const eventTypes = new Set(); // every type seen, for the filter

function eventText(event, counts) {
  const extra = Object.entries(event)
    .filter(([key]) => !["type", "branch", "at", "seq", "branches", "log"].includes(key))
    .map(([key, value]) => `${key}=${value}`)
    .join(" ");
  const folded = counts.connected + counts.disconnected;
  const times = folded > 1
    ? ` (×${folded}: ${counts.connected} connected, ${counts.disconnected} disconnected)` : "";
  return `${event.at.slice(11, 23)} ${event.type} ${event.branch ?? ""} ${extra}${times}`;
}

// The feed's filter: by branch and by type; a line hidden by it stays in the list.
function shownByFilter(li) {
  const branch = $("#events-branch").value;
  const type = $("#events-type").value;
  const ofType = !type || li.dataset.type === type || Number(li.dataset[type] ?? 0) > 0;
  return (!branch || li.dataset.branch === branch) && ofType;
}

function applyFilter() {
  for (const li of $("#events").children) put(li, "hidden", !shownByFilter(li));
}

function noteType(type) {
  if (eventTypes.has(type)) return;
  eventTypes.add(type);
  fillSelect($("#events-type"), ["", ...[...eventTypes].sort()], "");
}

function sessionCounts(li) {
  return { connected: Number(li.dataset.connected), disconnected: Number(li.dataset.disconnected) };
}

function logEvent(event) {
  if (event.seq !== undefined) {
    if (logged.has(event.seq)) return;
    logged.add(event.seq);
  }
  const list = $("#events");
  list.querySelector("li.loading")?.remove();
  noteType(event.type);
  const newest = list.firstElementChild;
  if (FOLDED.has(event.type) && newest && FOLDED.has(newest.dataset.type)
      && newest.dataset.branch === (event.branch ?? "") && event.seq > Number(newest.dataset.seq)) {
    newest.dataset[event.type] = String(Number(newest.dataset[event.type]) + 1);
    newest.dataset.type = event.type;
    newest.dataset.seq = event.seq;
    newest.textContent = eventText(event, sessionCounts(newest));
    put(newest, "hidden", !shownByFilter(newest));
    if (event.branch === detailOf) drawDetail();
    return;
  }
  const li = document.createElement("li");
  li.dataset.seq = event.seq ?? "";
  li.dataset.type = event.type;
  li.dataset.branch = event.branch ?? "";
  li.dataset.connected = String(Number(event.type === "connected"));
  li.dataset.disconnected = String(Number(event.type === "disconnected"));
  li.textContent = eventText(event, sessionCounts(li));
  if (event.type === "failed" || event.type === "overflow" || event.error) li.className = "error";
  if (event.log) li.title = event.log.join("\n"); // a server's last lines: on hover
  li.hidden = !shownByFilter(li);
  // Newest first, by seq: the ring fetched on load may land after live events.
  const later = [...list.children].find((other) => Number(other.dataset.seq) < event.seq);
  if (event.seq === undefined || later === list.firstElementChild) list.prepend(li);
  else list.insertBefore(li, later ?? null);
  while (list.children.length > MAX_EVENTS) {
    logged.delete(Number(list.lastElementChild.dataset.seq));
    list.lastElementChild.remove();
  }
  if (event.branch !== undefined && event.branch === detailOf) drawDetail();
}

async function loadRecentEvents() {
  try {
    for (const event of (await call("GET", "/events")).events) logEvent(event);
  } catch (error) {
    say(`could not read recent events: ${error.message}`, true);
  }
}

// Keep the table true to the stream: each event changes one branch the way the server did.
function apply(event) {
  if (event.type === "snapshot") {
    branches.clear();
    for (const b of event.branches) branches.set(b.name, b);
    refreshDetails();
    loadRecentEvents();
    refreshActivity();
    refreshSource();
    refreshSandbox();
    refreshTrash();
    return render();
  }
  logEvent(event);
  if (TRASH_EVENTS.has(event.type)) refreshTrash();
  if (event.type === "source") showSource(event);
  if (event.type === "backup_progress" && branches.has(event.branch)) {
    branches.get(event.branch).backup = event;
  }
  const name = event.branch;
  if (event.type === "undeleted") {
    // Back whole, with its own history: read it as the REST API shows it.
    call("GET", `/branches/${name}`).then((b) => { branches.set(name, b); render(); },
      (error) => say(`could not read ${name}: ${error.message}`, true));
    return;
  }
  if (event.type === "provisioning") {
    branches.set(name, {
      name, parent: event.parent, status: "provisioning", connections: 0,
      last_active: event.at, created_at: event.at,
    });
  }
  if (DETAIL_EVENTS.has(event.type)) refreshDetails();
  const b = branches.get(name);
  if (b === undefined) return render();
  if (STATUS_EVENTS.has(event.type)) {
    b.status = event.type;
    // The reason and log come with an unwell status; any other status leaves them behind.
    b.trouble = UNWELL.has(event.type)
      ? { reason: event.error, since: event.at, log: event.log ?? [] } : null;
  }
  // A reset leaves the branch as it was: a running one announces "running" before "reset",
  // a stopped one announces nothing more, so still "resetting" here means stopped.
  if (event.type === "reset" && b.status === "resetting") b.status = "stopped";
  if (event.type === "connected") b.connections += 1;
  if (event.type === "disconnected") b.connections = Math.max(0, b.connections - 1);
  if (["connected", "disconnected", "running"].includes(event.type)) b.last_active = event.at;
  if (event.type === "deleted" || (event.type === "failed" && b.status !== "running")) {
    branches.delete(name);
    return render();
  }
  // A new branch changes the tree; anything else changes only its own row.
  render(event.type === "provisioning" ? undefined : name);
}

function subscribe() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const query = token ? `?token=${encodeURIComponent(token)}` : "";
  const socket = new WebSocket(`${scheme}://${location.host}${API}/events${query}`);
  const link = $("#link");
  socket.onopen = () => { link.textContent = "live"; link.dataset.state = "live"; };
  socket.onmessage = (message) => apply(JSON.parse(message.data));
  socket.onclose = () => {
    link.textContent = "reconnecting…";
    link.dataset.state = "closed";
    // A refused token shows up as a failed handshake; check it over REST to ask for one
    // (call shows the form; the form's submit subscribes). Anything else, e.g. Prism being
    // restarted, is worth another try.
    const retry = () => setTimeout(subscribe, 1000);
    call("GET", "/branches").then(retry, (error) => {
      if (error.code !== "unauthorized") retry();
    });
  };
}

async function act(action, name) {
  try {
    if (action === "delete") {
      if (!confirm(`Delete branch ${name}? It is kept in the trash for the undelete window.`)) return;
      try {
        await call("DELETE", `/branches/${name}`);
      } catch (error) {
        if (error.code !== "branch_has_children") throw error;
        if (!confirm(`${error.message}. Delete them too?`)) return;
        await call("DELETE", `/branches/${name}?with_children=true`);
      }
    } else {
      if (action === "reset" && !confirm(`Reset ${name}? Its changes will be thrown away.`)) return;
      say(`${action} ${name}…`);
      await call("POST", `/branches/${name}/${action}`);
    }
    say(`${action} ${name}: done`);
  } catch (error) {
    say(`${action} ${name}: ${error.message}`, true);
  }
}

async function protect(name, box) {
  const wanted = box.checked;
  try {
    await call("PATCH", `/branches/${name}`, { protected: wanted });
    branches.get(name).protected = wanted;
    say(`${wanted ? "protected" : "unprotected"} ${name}`);
    render();
  } catch (error) {
    box.checked = !wanted;
    say(`protect ${name}: ${error.message}`, true);
  }
}

async function expire(name, row) {
  const input = row.querySelector('[data-input="ttl"]');
  const ttl = input.value.trim();
  const body = ["", "never", "none"].includes(ttl) ? { expires_at: null } : { ttl };
  try {
    const updated = await call("PATCH", `/branches/${name}`, body);
    branches.get(name).expires_at = updated.expires_at;
    input.value = "";
    say(updated.expires_at ? `${name} expires ${updated.expires_at}` : `${name} never expires`);
    render();
  } catch (error) {
    say(`expire ${name}: ${error.message}`, true);
  }
}

// The clipboard API needs a secure context (localhost is one); elsewhere fall back to the
// selection, which every browser still copies.
async function copy(name) {
  const text = branches.get(name).connection?.uri;
  if (!text) return say(`no connection string for ${name} yet`, true);
  await toClipboard(text);
  say(`copied connection string of ${name}`);
}

async function toClipboard(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const scratch = control("textarea", { value: text });
    document.body.append(scratch);
    scratch.select();
    document.execCommand("copy");
    scratch.remove();
  }
}

// The detail panel: one branch's status, place in the tree, sizes, policies, point in time,
// its recent events and its actions. Opened from the branch's name (a button, so the keyboard
// reaches it); redrawn when that branch changes.
let detailOf = null;
const DETAIL_RECENT = 10;

function openDetail(name) {
  detailOf = name;
  $("#detail").hidden = false;
  drawDetail();
  $("#detail-close").focus();
}

function closeDetail() {
  const name = detailOf;
  detailOf = null;
  $("#detail").hidden = true;
  rows.get(name)?.querySelector("button.label")?.focus();
}

function drawDetail() {
  const b = branches.get(detailOf);
  if (b === undefined) return closeDetail();
  setText($("#detail-name"), b.name);
  const children = [...branches.values()].filter((c) => c.parent === b.name).map((c) => c.name);
  const disk = b.disk;
  const facts = [
    ["status", statusText(b) + (b.trouble ? ` — ${b.trouble.reason}` : "")],
    ["parent", b.parent ?? "— (the root)"],
    ["children", children.length ? children.sort().join(", ") : "none"],
    ["created", b.created_at ?? "?"],
    ["connections", String(b.connections)],
    ["disk own / shared", disk && disk.own !== null ? `${size(disk.own)} / ${size(disk.shared)}` : "?"],
    ["disk in all", disk ? size(disk.total) : "?"],
    ["protected", b.protected ? "yes" : "no"],
    ["expires", b.expires_at ? `${until(b.expires_at)} (${b.expires_at})` : "never"],
    ["hooks on create", [b.on_create && "SQL", b.on_create_command && "command"]
      .filter(Boolean).join(", ") || "none"],
    ["point in time", b.keeps_wal ? "its WAL is kept: branch from it as of a past time"
      : "no WAL kept: branch from it as of now only"],
    ...(b.at ? [["data as of", b.at]] : []),
  ];
  const key = JSON.stringify(facts);
  const list = $("#detail-facts");
  if (list.dataset.key !== key) {
    list.dataset.key = key;
    list.replaceChildren(...facts.flatMap(([term, value]) => [
      control("dt", { textContent: term }), control("dd", { textContent: value, title: value }),
    ]));
  }
  const actions = $("#detail-actions");
  const wanted = [...actionsOf(b), "connect"];
  const actionKey = `${b.name}|${wanted.join()}|${Boolean(b.protected)}`;
  if (actions.dataset.actions !== actionKey) {
    actions.dataset.actions = actionKey;
    // A keyboard user on a button that is replaced stays in the panel, not at the page's top.
    const focused = actions.contains(document.activeElement);
    actions.replaceChildren(...wanted.map((action) => {
      if (action === "connect") {
        return control("button", { type: "button", textContent: "connect…", dataset: { action } },
          ["click", () => openConnect(b.name)]);
      }
      const made = button(action, action, b.name);
      made.disabled = Boolean(b.protected) && (action === "reset" || action === "delete");
      return made;
    }));
    if (focused) $("#detail-close").focus();
  }
  const recent = [...$("#events").children]
    .filter((li) => li.dataset.branch === b.name).slice(0, DETAIL_RECENT);
  $("#detail-events").replaceChildren(
    ...recent.map((li) => control("li", { textContent: li.textContent })));
}

$("#detail-close").addEventListener("click", closeDetail);
// Escape closes the panel from anywhere (its buttons are redrawn as the branch changes, so the
// focus may have left it), except while the Connect dialog, which Escape closes first, is open.
document.addEventListener("keydown", (key) => {
  if (key.key === "Escape" && detailOf !== null && !$("#connect").open) closeDetail();
});

// The Connect dialog: one branch's connection string in the format a tool wants, for the
// role Prism reaches it as; the password only on request (strings get pasted into chats),
// fetched then from the API, which gives it only when it logs in.
let connecting = null; // {name, connection}: what the dialog shows

async function openConnect(name) {
  const b = branches.get(name);
  connecting = { name, connection: b.connection ?? null };
  setText($("#connect-branch"), name);
  $("#connect-password").checked = false;
  drawConnect();
  $("#connect").showModal();
  $("#connect-format").focus();
  if (connecting.connection === null) await loadConnection(false);
}

async function loadConnection(withPassword) {
  const name = connecting.name;
  try {
    const fresh = await call("GET", `/branches/${name}${withPassword ? "?password=true" : ""}`);
    if (connecting?.name === name) connecting.connection = fresh.connection;
  } catch (error) {
    say(`connection of ${name}: ${error.message}`, true);
  }
  drawConnect();
}

function drawConnect() {
  const connection = connecting.connection;
  const text = connection ? connection[$("#connect-format").value] : "no connection string yet";
  setText($("#connect-string"), text);
  $("#connect-role").value = connection?.user ?? "";
  const wanted = $("#connect-password").checked;
  const note = !wanted ? "the password is left out: tick \u201cshow password\u201d to include it"
    : connection?.password_note ?? (connection?.password ? "" : "fetching the password…");
  setText($("#connect-note"), note);
}

$("#connect-format").addEventListener("change", drawConnect);
$("#connect-password").addEventListener("change", (change) => {
  loadConnection(change.target.checked);
});
$("#connect-copy").addEventListener("click", async () => {
  await toClipboard($("#connect-string").textContent);
  say(`copied the ${$("#connect-format").value} connection string of ${connecting.name}`);
});
$("#events-branch").addEventListener("change", applyFilter);
$("#events-type").addEventListener("change", applyFilter);

$("#diff-form").addEventListener("submit", async (submit) => {
  submit.preventDefault();
  const a = $("#diff-a").value;
  const b = $("#diff-b").value;
  const output = $("#diff-output");
  output.textContent = `comparing ${a} with ${b}…`;
  try {
    const response = await fetch(
      `${API}/branches/${a}/diff?against=${encodeURIComponent(b)}&format=text`,
      { headers: headers() },
    );
    if (!response.ok) throw new Error((await response.json()).message);
    const text = await response.text();
    output.replaceChildren(...text.split("\n").map((line) => {
      const span = control("span", { textContent: `${line}\n` });
      span.className = { "+": "added", "-": line.startsWith("--") ? "comment" : "removed", "~": "changed" }[line[0]] ?? "";
      return span;
    }));
  } catch (error) {
    output.textContent = `diff ${a} against ${b}: ${error.message}`;
  }
});

$("#create-form").addEventListener("submit", async (submit) => {
  submit.preventDefault();
  const name = $("#create-name").value;
  const body = { name, parent: $("#create-parent").value || "main" };
  const at = $("#create-at").value.trim();
  if (at) body.at = at; // the parent's data as of then (RFC 3339 or -15m); the API checks the window
  say(`creating ${name}…`);
  try {
    await call("POST", "/branches", body);
    $("#create-name").value = "";
    $("#create-at").value = "";
    say(`created ${name}`);
  } catch (error) {
    say(`create ${name}: ${error.message}`, true);
  }
});

$("#token-form").addEventListener("submit", (submit) => {
  submit.preventDefault();
  token = $("#token").value;
  localStorage.setItem("prism-token", token);
  $("#token-form").hidden = true;
  subscribe();
});

setInterval(render, 5000); // keep "last active" and "expires" fresh
setInterval(refreshActivity, 30000);
subscribe();
