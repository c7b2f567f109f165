// Prism's web page: a live branch table and event feed over the /api/v1/events WebSocket,
// with buttons that call the REST API. Plain browser JavaScript, no framework, no build step.
"use strict";

const API = "/api/v1";
const MAX_EVENTS = 200;
const branches = new Map(); // name -> branch view, as the REST API shapes it
let token = localStorage.getItem("prism-token") || "";

// Event types that are a branch's new status; the rest change counts or remove the branch.
const STATUS_EVENTS = new Set([
  "provisioning", "starting", "running", "stopping", "stopped", "resetting", "deleting",
]);

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

const FIELDS = ["name", "status", "parent", "connections", "last_active", "actions"];

function actionsOf(b) {
  const actions = b.status === "stopped" ? ["start"] : ["stop"];
  return b.parent === null ? actions : ["reset", ...actions, "delete"];
}

// One row, created once per branch and then updated in place: replacing rows on every event
// would swap a button for a new one between a person's mouse-down and mouse-up, and on a busy
// Prism (events all the time) their click would be lost.
function rowOf(body, name, index) {
  let row = [...body.rows].find((r) => r.dataset.branch === name);
  if (row === undefined) {
    row = document.createElement("tr");
    row.dataset.branch = name;
    for (const field of FIELDS) row.insertCell().dataset.field = field;
    row.cells[FIELDS.indexOf("actions")].className = "actions";
  }
  if (body.rows[index] !== row) body.insertBefore(row, body.rows[index] ?? null);
  return row;
}

function show(row, field, text) {
  const td = row.cells[FIELDS.indexOf(field)];
  if (td.textContent !== text) td.textContent = text;
  return td;
}

function render() {
  const body = $("#branches tbody");
  for (const row of [...body.rows]) if (!branches.has(row.dataset.branch)) row.remove();
  const names = [...branches.keys()].sort();
  names.forEach((name, index) => {
    const b = branches.get(name);
    const row = rowOf(body, name, index);
    row.dataset.status = b.status;
    show(row, "name", name);
    show(row, "status", b.status);
    show(row, "parent", b.parent ?? "—");
    show(row, "connections", String(b.connections));
    show(row, "last_active", ago(b.last_active)).title = b.last_active;
    const actions = row.cells[FIELDS.indexOf("actions")];
    const wanted = actionsOf(b);
    if (actions.dataset.actions !== wanted.join()) {
      actions.replaceChildren(...wanted.map((action) => button(action, action, name)));
      actions.dataset.actions = wanted.join();
    }
  });
  const parent = $("#create-parent");
  if (parent.dataset.names !== names.join()) { // rebuilding would close an open list
    const chosen = parent.value || "main";
    parent.replaceChildren(...names.map((n) => new Option(n, n, false, n === chosen)));
    parent.dataset.names = names.join();
  }
}

function logEvent(event) {
  const li = document.createElement("li");
  const extra = Object.entries(event)
    .filter(([key]) => !["type", "branch", "at", "seq", "branches"].includes(key))
    .map(([key, value]) => `${key}=${value}`)
    .join(" ");
  li.textContent = `${event.at.slice(11, 23)} ${event.type} ${event.branch ?? ""} ${extra}`;
  if (event.type === "failed" || event.type === "overflow" || event.error) li.className = "error";
  const list = $("#events");
  list.prepend(li);
  while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
}

// Keep the table true to the stream: each event changes one branch the way the server did.
function apply(event) {
  if (event.type === "snapshot") {
    branches.clear();
    for (const b of event.branches) branches.set(b.name, b);
    return render();
  }
  logEvent(event);
  const name = event.branch;
  if (event.type === "provisioning") {
    branches.set(name, {
      name, parent: event.parent, status: "provisioning", connections: 0,
      last_active: event.at, created_at: event.at,
    });
  }
  const b = branches.get(name);
  if (b === undefined) return render();
  if (STATUS_EVENTS.has(event.type)) b.status = event.type;
  // A reset leaves the branch as it was: a running one announces "running" before "reset",
  // a stopped one announces nothing more, so still "resetting" here means stopped.
  if (event.type === "reset" && b.status === "resetting") b.status = "stopped";
  if (event.type === "connected") b.connections += 1;
  if (event.type === "disconnected") b.connections = Math.max(0, b.connections - 1);
  if (["connected", "disconnected", "running"].includes(event.type)) b.last_active = event.at;
  if (event.type === "deleted" || (event.type === "failed" && b.status !== "running")) {
    branches.delete(name);
  }
  render();
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
      if (!confirm(`Delete branch ${name} and its data?`)) return;
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

$("#create-form").addEventListener("submit", async (submit) => {
  submit.preventDefault();
  const name = $("#create-name").value;
  say(`creating ${name}…`);
  try {
    await call("POST", "/branches", { name, parent: $("#create-parent").value || "main" });
    $("#create-name").value = "";
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

setInterval(render, 5000); // keep "last active" fresh
subscribe();
