// The ansible-worker dashboard: a live task table fed by /api/events (SSE),
// a detail panel with output and log tail, a submit form, cancel buttons,
// worker facts and the rejected requests. Plain JS, no build step; every
// piece of data reaches the page through textContent, never as markup.
//
// URLs are relative so the page also works behind a proxy under a prefix.
"use strict";

const TOKEN_KEY = "ansible-worker.token";
const FINAL_STATES = new Set(["success", "failed", "cancelled", "timeout"]);
const CANCELLABLE = new Set(["queued", "running"]);
const CUSTOM_INVENTORY = "\u0000custom";
const MAX_LOG_LINES = 2000;
const POLL_MS = 5000;
const RECONNECT_MS = 3000;
const CONFIRM_MS = 4000;

/** Tasks by id: { view, seq, receivedAt } (receivedAt: performance.now()). */
const tasks = new Map();
let nextSeq = 0;
let selectedId = null;
/** Lines that arrived for the selected task while its log was fetched. */
let logPending = null;

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- helpers

/** Builds an element; children are nodes or strings (as text). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const timeFormat = new Intl.DateTimeFormat(undefined, {
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  hour12: false,
});
const dateTimeFormat = new Intl.DateTimeFormat(undefined, {
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  hour12: false,
});

/** A time of today as HH:MM:SS, another day with its date. */
function formatTime(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  const today = new Date().toDateString() === date.toDateString();
  return (today ? timeFormat : dateTimeFormat).format(date);
}

function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const s = Math.floor(seconds);
  const pad = (n) => String(n).padStart(2, "0");
  if (s < 3600) return `${Math.floor(s / 60)} m ${pad(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${pad(Math.floor((s % 3600) / 60))} m`;
}

/** Seconds to show for a task: a running one's time ticks on locally. */
function durationOf(entry) {
  const view = entry.view;
  const base = view.duration_seconds;
  if (view.state !== "running") return base;
  if (base === null || base === undefined) return null;
  return base + (performance.now() - entry.receivedAt) / 1000;
}

function stateBadge(state) {
  return el("span", { class: "state", "data-state": state, text: state });
}

// ------------------------------------------------------------ API and auth

let tokenPrompt = null;
/** Set when the user dismissed the token dialog: background polls stop
 * asking; only the user's own actions (submit, cancel) ask again. */
let tokenDeclined = false;

function authHeaders() {
  const token = localStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** Asks for the token once (concurrent 401s share one dialog); true when given. */
function askToken() {
  if (tokenPrompt) return tokenPrompt;
  tokenPrompt = new Promise((resolve) => {
    const dialog = $("token-dialog");
    const input = $("token-input");
    input.value = "";
    dialog.addEventListener(
      "close",
      () => {
        const token = input.value.trim();
        const given = dialog.returnValue === "save" && token !== "";
        if (given) localStorage.setItem(TOKEN_KEY, token);
        tokenDeclined = !given;
        tokenPrompt = null;
        resolve(given);
      },
      { once: true },
    );
    dialog.showModal();
  });
  return tokenPrompt;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** fetch + JSON, with the bearer token; on 401 asks for a token and retries
 * (`options.interactive`: ask even after the user dismissed the dialog). */
async function api(path, options = {}) {
  for (let attempt = 0; ; attempt++) {
    const headers = { Accept: "application/json", ...authHeaders(), ...(options.headers || {}) };
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method: options.method || "GET",
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
      cache: "no-store",
    });
    if (response.status === 401 && attempt === 0 && (!tokenDeclined || options.interactive)) {
      localStorage.removeItem(TOKEN_KEY);
      if (await askToken()) continue;
    }
    let body = null;
    const text = await response.text();
    if (text) {
      try {
        body = JSON.parse(text);
      } catch {
        body = { error: text };
      }
    }
    if (!response.ok) {
      const message = body && typeof body.error === "string" ? body.error : response.statusText;
      throw new ApiError(response.status, message || `HTTP ${response.status}`);
    }
    return body;
  }
}

// ---------------------------------------------------------------- worker

const scheduled = new Set();

/** Runs `refresh` shortly, once for a burst of calls. */
function soon(refresh) {
  if (scheduled.has(refresh)) return;
  scheduled.add(refresh);
  setTimeout(() => {
    scheduled.delete(refresh);
    refresh();
  }, 300);
}

async function refreshWorker() {
  try {
    const info = await api("api/worker");
    $("worker-id").textContent = info.worker_id;
    $("worker-group").textContent = info.group;
    $("worker-source").textContent = info.transport === "http" ? "Controller" : "Broker";
    $("worker-broker").textContent = info.broker;
    const connected = $("worker-connected");
    connected.textContent = info.connected ? "connected" : "disconnected";
    connected.dataset.connected = String(Boolean(info.connected));
    $("worker-queued").textContent = String(info.queued);
    $("worker-running").textContent = String(info.running);
    $("worker-concurrency").textContent = ` / ${info.concurrency}`;
    $("worker-version").textContent =
      `version ${info.version} · playbooks in ${info.playbook_directory}`;
    document.title = `${info.worker_id} · ansible-worker`;
  } catch (error) {
    const connected = $("worker-connected");
    // After a dismissed token dialog, reloading the page asks again.
    connected.textContent = error.status === 401 ? "token needed: reload" : "unreachable";
    connected.dataset.connected = "false";
  }
}

async function refreshRejected() {
  let list;
  try {
    list = await api("api/rejected");
  } catch {
    return;
  }
  const items = list.map((item) =>
    el(
      "li",
      { "data-task-id": item.task_id || null },
      el("time", { datetime: item.at, text: formatTime(item.at) }),
      " ",
      el("code", { text: item.task_id || "(no task id)" }),
      el("span", { class: "reason", text: item.reason }),
    ),
  );
  $("rejected").replaceChildren(...items);
  $("rejected-empty").hidden = items.length > 0;
}

// ------------------------------------------------------------ task table

function upsert(view, seq) {
  const known = tasks.get(view.task_id);
  const entry = {
    // A status document without `request` (never from the stream, but be
    // lenient) keeps the summary we had.
    view: { ...view, request: view.request ?? known?.view.request ?? null },
    seq: known ? known.seq : seq ?? nextSeq++,
    receivedAt: performance.now(),
  };
  tasks.set(view.task_id, entry);
  return entry;
}

const COUNTERS = ["tasks_ok", "tasks_changed", "tasks_failed", "tasks_skipped", "tasks_unreachable"];

function buildRow(id) {
  const cancel = el("button", {
    type: "button",
    class: "row-cancel danger small",
    "data-action": "cancel",
    text: "Cancel",
  });
  const row = el(
    "tr",
    { "data-task-id": id, tabindex: "0" },
    el("td", { "data-col": "state" }),
    el("td", { "data-col": "task_id", class: "task-id col-task" }),
    el(
      "td",
      { "data-col": "playbook" },
      el("span", { class: "playbook" }),
      el("span", { class: "check-tag", text: "check", title: "check mode", hidden: true }),
      el("small", { class: "task-id row-id" }),
    ),
    el("td", { "data-col": "inventory", class: "col-inventory" }),
    el("td", { "data-col": "tasks_ok", class: "num" }),
    el("td", { "data-col": "tasks_changed", class: "num" }),
    el("td", { "data-col": "tasks_failed", class: "num" }),
    el("td", { "data-col": "tasks_skipped", class: "num col-minor" }),
    el("td", { "data-col": "tasks_unreachable", class: "num col-minor" }),
    el("td", { "data-col": "started", class: "col-started" }),
    el("td", { "data-col": "duration", class: "num" }),
    el("td", { "data-col": "actions", class: "col-actions" }, cancel),
  );
  return row;
}

function cell(row, name) {
  return row.querySelector(`td[data-col="${name}"]`);
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function fillRow(row, entry) {
  const view = entry.view;
  if (row.dataset.state !== view.state) {
    row.dataset.state = view.state;
    cell(row, "state").replaceChildren(stateBadge(view.state));
  }
  setText(cell(row, "task_id"), view.task_id);
  const request = view.request;
  const playbook = cell(row, "playbook");
  setText(playbook.querySelector(".playbook"), request ? request.playbook : "—");
  setText(playbook.querySelector(".row-id"), view.task_id);
  setText(cell(row, "inventory"), request ? request.inventory : "—");
  playbook.querySelector(".check-tag").hidden = !(request && request.check_mode);
  for (const counter of COUNTERS) {
    const value = view[counter] ?? 0;
    const td = cell(row, counter);
    setText(td, String(value));
    td.classList.toggle("zero", value === 0);
  }
  setText(cell(row, "started"), formatTime(view.started_at));
  setText(cell(row, "duration"), formatDuration(durationOf(entry)));
  cell(row, "actions").querySelector("button").hidden = !CANCELLABLE.has(view.state);
  row.classList.toggle("selected", view.task_id === selectedId);
  row.setAttribute("aria-selected", String(view.task_id === selectedId));
}

/** The rows on the page by task id (tasks the filter hides have none). */
const rowsById = new Map();
/** Tasks changed or forgotten since the table was last brought in line. */
const dirtyIds = new Set();

function shown(entry) {
  const filter = $("state-filter").value;
  return Boolean(entry) && (!filter || entry.view.state === filter);
}

function updateEmpty() {
  $("tasks-empty").hidden = rowsById.size > 0;
  $("tasks-empty").textContent = tasks.size === 0 ? "No tasks yet." : "No tasks in this state.";
}

/** Brings the whole table in line with `tasks`: rows newest first, filter
 * applied (a new snapshot or another filter; single changes go through
 * `changed`). */
function renderTable() {
  const body = $("task-rows");
  const ordered = [...tasks.values()].filter(shown).sort((a, b) => b.seq - a.seq);
  const stale = new Map(rowsById);
  rowsById.clear();
  let previous = null;
  for (const entry of ordered) {
    const id = entry.view.task_id;
    const row = stale.get(id) || buildRow(id);
    stale.delete(id);
    rowsById.set(id, row);
    fillRow(row, entry);
    const wanted = previous ? previous.nextSibling : body.firstChild;
    if (wanted !== row) body.insertBefore(row, wanted);
    previous = row;
  }
  for (const row of stale.values()) row.remove();
  dirtyIds.clear();
  updateEmpty();
}

/** Marks a task's row for the next frame (however many events arrive
 * before it, the page is updated once). */
function changed(id) {
  dirtyIds.add(id);
  nextFrame();
}

/** The first row older than `seq` (rows are newest first), or null. */
function rowAfter(seq) {
  const rows = $("task-rows").children;
  let low = 0;
  let high = rows.length;
  while (low < high) {
    const middle = (low + high) >> 1;
    const entry = tasks.get(rows[middle].dataset.taskId);
    if (entry && entry.seq > seq) low = middle + 1;
    else high = middle;
  }
  return rows[low] || null;
}

/** Updates, adds or removes the rows of the tasks marked by `changed`; a
 * new row goes to its place, oldest first so that a burst lands on top. */
function renderChanged() {
  if (dirtyIds.size === 0) return;
  const body = $("task-rows");
  const added = [];
  for (const id of dirtyIds) {
    const entry = tasks.get(id);
    const row = rowsById.get(id);
    if (!shown(entry)) {
      if (row) row.remove();
      rowsById.delete(id);
    } else if (row) fillRow(row, entry);
    else added.push(entry);
  }
  dirtyIds.clear();
  added.sort((a, b) => a.seq - b.seq);
  for (const entry of added) {
    const row = buildRow(entry.view.task_id);
    fillRow(row, entry);
    const first = body.firstElementChild;
    const firstEntry = first && tasks.get(first.dataset.taskId);
    body.insertBefore(row, !firstEntry || firstEntry.seq < entry.seq ? first : rowAfter(entry.seq));
    rowsById.set(entry.view.task_id, row);
  }
  updateEmpty();
}

let framePending = false;

/** Runs the pending page updates once, at the next frame (or shortly, where
 * a hidden tab gets no frames). */
function nextFrame() {
  if (framePending) return;
  framePending = true;
  const run = () => {
    if (!framePending) return;
    framePending = false;
    renderChanged();
    flushLog();
  };
  requestAnimationFrame(run);
  setTimeout(run, 250);
}

/** Ticks the duration of running tasks once a second. */
function tick() {
  for (const row of $("task-rows").querySelectorAll('tr[data-state="running"]')) {
    const entry = tasks.get(row.dataset.taskId);
    if (entry) setText(cell(row, "duration"), formatDuration(durationOf(entry)));
  }
  if (selectedId) {
    const entry = tasks.get(selectedId);
    const node = $("detail-fields").querySelector('dd[data-field="duration"]');
    if (entry && node && entry.view.state === "running") {
      setText(node, formatDuration(durationOf(entry)));
    }
  }
}

// ---------------------------------------------------------------- cancel

/** First click arms the button, a second within a few seconds cancels. */
async function cancelClicked(button, id) {
  if (button.dataset.confirm !== "armed") {
    button.dataset.confirm = "armed";
    button.dataset.label = button.textContent;
    button.textContent = "Confirm cancel";
    setTimeout(() => disarm(button), CONFIRM_MS);
    return;
  }
  disarm(button);
  button.disabled = true;
  try {
    await api(`api/tasks/${encodeURIComponent(id)}/cancel`, {
      method: "POST",
      body: { reason: "cancelled from the dashboard" },
      interactive: true,
    });
    flash(`Cancel sent for ${id}.`, "ok");
  } catch (error) {
    flash(`Cannot cancel ${id}: ${error.message}`, "error");
  } finally {
    button.disabled = false;
  }
}

function disarm(button) {
  if (button.dataset.confirm !== "armed") return;
  delete button.dataset.confirm;
  button.textContent = button.dataset.label || "Cancel";
}

function flash(text, kind) {
  const message = $("submit-message");
  message.textContent = text;
  message.dataset.kind = kind;
}

// ---------------------------------------------------------------- detail

function select(id) {
  if (selectedId !== id) {
    selectedId = id;
    showLog([]);
    loadLog(id);
  }
  for (const row of $("task-rows").querySelectorAll("tr.selected")) {
    row.classList.remove("selected");
    row.setAttribute("aria-selected", "false");
  }
  const row = rowsById.get(id);
  if (row) {
    row.classList.add("selected");
    row.setAttribute("aria-selected", "true");
  }
  $("detail").hidden = false;
  renderDetail();
  // Wherever the layout put the panel, bring it into view (no jump when it
  // already is).
  $("detail").scrollIntoView({ block: "nearest" });
}

function closeDetail() {
  selectedId = null;
  logPending = null;
  $("detail").hidden = true;
  for (const row of $("task-rows").querySelectorAll("tr.selected")) {
    row.classList.remove("selected");
    row.setAttribute("aria-selected", "false");
  }
}

function field(name, label, value) {
  return el("div", {}, el("dt", { text: label }), el("dd", { "data-field": name, text: value }));
}

function renderDetail() {
  if (!selectedId) return;
  const id = selectedId;
  const entry = tasks.get(id);
  $("detail-id").textContent = id;
  const detail = $("detail");
  if (!entry) {
    detail.dataset.state = "";
    $("detail-state").replaceChildren();
    $("detail-request").textContent = "Waiting for the first status…";
    $("detail-fields").replaceChildren();
    $("detail-cancel").hidden = true;
    $("detail-error-box").hidden = true;
    $("detail-output").textContent = "";
    $("detail-per-host-box").hidden = true;
    $("detail-raw").textContent = "";
    return;
  }
  const view = entry.view;
  detail.dataset.state = view.state;
  $("detail-state").replaceChildren(stateBadge(view.state));
  const request = view.request;
  $("detail-request").textContent = request
    ? `${request.playbook} on ${request.inventory}${request.check_mode ? " (check mode)" : ""}`
    : "";
  $("detail-fields").replaceChildren(
    field("created_at", "Created", formatTime(view.created_at)),
    field("started_at", "Started", formatTime(view.started_at)),
    field("completed_at", "Completed", formatTime(view.completed_at)),
    field("duration", "Duration", formatDuration(durationOf(entry))),
    field(
      "counters",
      "Tasks",
      `${view.tasks_total ?? 0} total · ok ${view.tasks_ok ?? 0} · changed ${view.tasks_changed ?? 0}` +
        ` · failed ${view.tasks_failed ?? 0} · skipped ${view.tasks_skipped ?? 0}` +
        ` · unreachable ${view.tasks_unreachable ?? 0} · rescued ${view.tasks_rescued ?? 0}` +
        ` · ignored ${view.tasks_ignored ?? 0}`,
    ),
    field("return_code", "Return code", view.return_code ?? "—"),
    field("worker_id", "Worker", view.worker_id || "—"),
  );
  $("detail-cancel").hidden = !CANCELLABLE.has(view.state);
  const hasError = Boolean(view.error_message);
  $("detail-error-box").hidden = !hasError;
  $("detail-error").textContent = hasError ? view.error_message : "";
  const output = view.output || {};
  setText(
    $("detail-output"),
    Object.keys(output).length ? JSON.stringify(output, null, 2) : FINAL_STATES.has(view.state) ? "(none)" : "",
  );
  const perHost = view.output_per_host || {};
  $("detail-per-host-box").hidden = Object.keys(perHost).length === 0;
  setText($("detail-per-host"), JSON.stringify(perHost, null, 2));
  const { request: _request, ...status } = view;
  setText($("detail-raw"), JSON.stringify(status, null, 2));
}

async function loadLog(id) {
  const pending = { id, lines: [] };
  logPending = pending;
  let tail = [];
  try {
    const body = await api(`api/tasks/${encodeURIComponent(id)}/log`);
    tail = Array.isArray(body.lines) ? body.lines : [];
  } catch (error) {
    if (error.status !== 404) tail = [`(cannot load the log: ${error.message})`];
  }
  if (logPending !== pending || selectedId !== id) return;
  logPending = null;
  // Lines that arrived during the fetch may already be in the tail: skip the
  // longest run of them that the tail ends with.
  let overlap = Math.min(tail.length, pending.lines.length);
  while (overlap > 0) {
    const end = tail.slice(tail.length - overlap);
    if (end.every((line, i) => line === pending.lines[i])) break;
    overlap--;
  }
  showLog(tail.concat(pending.lines.slice(overlap)));
}

/** Lines of the selected task's log waiting for the next frame. */
let logQueue = [];

function appendLog(id, line) {
  if (id !== selectedId) return;
  if (logPending && logPending.id === id) {
    logPending.lines.push(line);
    return;
  }
  logQueue.push(line);
  nextFrame();
}

/** Shows `lines` as the whole log (the last MAX_LOG_LINES of them). */
function showLog(lines) {
  $("detail-log").replaceChildren();
  logQueue = lines;
  flushLog();
}

/** Appends the queued lines to the log, one text node each, and drops the
 * oldest beyond MAX_LOG_LINES: the shown text is never rebuilt. */
function flushLog() {
  if (logQueue.length === 0) return;
  const pre = $("detail-log");
  const lines = logQueue.slice(-MAX_LOG_LINES);
  logQueue = [];
  const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
  const nodes = [];
  let first = !pre.firstChild;
  for (const line of lines) {
    // Ansible starts its output with an empty line.
    if (first && line === "") continue;
    nodes.push(document.createTextNode(first ? line : `\n${line}`));
    first = false;
  }
  pre.append(...nodes);
  let excess = pre.childNodes.length - MAX_LOG_LINES;
  if (excess > 0) {
    while (excess-- > 0) pre.firstChild.remove();
    pre.firstChild.data = pre.firstChild.data.replace(/^\n/, "");
  }
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}

// ---------------------------------------------------------------- events

let source = null;

function setLive(state) {
  const live = $("live");
  live.dataset.live = state;
  live.textContent = state;
}

function connectEvents() {
  if (source) source.close();
  const token = localStorage.getItem(TOKEN_KEY);
  const url = token ? `api/events?access_token=${encodeURIComponent(token)}` : "api/events";
  source = new EventSource(url);
  setLive("connecting");
  source.addEventListener("open", () => {
    setLive("live");
    // What the stream does not carry may have changed while it was down.
    soon(refreshWorker);
    soon(refreshRejected);
  });
  source.addEventListener("snapshot", (event) => {
    const list = JSON.parse(event.data);
    tasks.clear();
    // Newest first: the first gets the highest sequence number.
    list.forEach((view, index) => upsert(view, list.length - index));
    nextSeq = list.length + 1;
    renderTable();
    renderDetail();
    if (selectedId) loadLog(selectedId);
  });
  source.addEventListener("status", (event) => {
    const view = JSON.parse(event.data);
    upsert(view);
    changed(view.task_id);
    if (view.task_id === selectedId) renderDetail();
    soon(refreshWorker);
    if (FINAL_STATES.has(view.state) && !view.started_at) soon(refreshRejected);
  });
  source.addEventListener("trimmed", (event) => {
    // The server's history no longer holds them: neither does the page.
    for (const id of JSON.parse(event.data).task_ids) {
      tasks.delete(id);
      changed(id);
    }
  });
  source.addEventListener("log", (event) => {
    const { task_id: id, line } = JSON.parse(event.data);
    appendLog(id, line);
  });
  source.addEventListener("error", () => {
    // CONNECTING: the browser retries by itself (and gets a new snapshot).
    // CLOSED: it gave up (an HTTP error such as 401): check the token through
    // a normal request, which asks for it if needed, then reconnect.
    if (source.readyState !== EventSource.CLOSED) {
      setLive("reconnecting");
      return;
    }
    setLive("offline");
    const closed = source;
    setTimeout(async () => {
      if (source !== closed) return;
      try {
        await api("api/tasks?limit=1");
      } catch {
        // Retried below either way.
      }
      if (source === closed) connectEvents();
    }, tokenDeclined ? RECONNECT_MS * 10 : RECONNECT_MS);
  });
}

// ---------------------------------------------------------------- form

function fillSelect(select, values, emptyLabel) {
  const previous = select.value;
  const options = values.map((value) => el("option", { value, text: value }));
  if (options.length === 0) options.push(el("option", { value: "", text: emptyLabel, disabled: true }));
  select.replaceChildren(...options);
  if (values.includes(previous)) select.value = previous;
}

async function loadPlaybooks() {
  try {
    const lists = await api("api/playbooks");
    fillSelect($("playbook"), lists.playbooks || [], "(no playbooks found)");
    const inventory = $("inventory");
    fillSelect(inventory, lists.inventories || [], "(no inventory files)");
    inventory.append(el("option", { value: CUSTOM_INVENTORY, text: "Other: type a path or host list…" }));
    if (!inventory.value || inventory.selectedOptions[0]?.disabled) inventory.value = CUSTOM_INVENTORY;
    inventoryChanged();
  } catch (error) {
    flash(`Cannot list playbooks: ${error.message}`, "error");
  }
}

function inventoryChanged() {
  const custom = $("inventory").value === CUSTOM_INVENTORY;
  $("inventory-custom").hidden = !custom;
  $("inventory-custom").required = custom;
}

/** The extra vars as an object, or throws with a message for the user. */
function parseExtraVars() {
  const text = $("extra-vars").value.trim();
  if (text === "") return null;
  let value;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new Error(`Extra vars are not valid JSON: ${error.message}`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new Error('Extra vars must be a JSON object, like {"name": "value"}.');
  }
  return value;
}

function checkExtraVars() {
  const box = $("extra-vars-error");
  try {
    parseExtraVars();
    box.hidden = true;
    box.textContent = "";
    $("extra-vars").removeAttribute("aria-invalid");
    return true;
  } catch (error) {
    box.hidden = false;
    box.textContent = error.message;
    $("extra-vars").setAttribute("aria-invalid", "true");
    return false;
  }
}

function buildRequest() {
  const request = { playbook: $("playbook").value };
  if (!request.playbook) throw new Error("Pick a playbook.");
  const inventory =
    $("inventory").value === CUSTOM_INVENTORY ? $("inventory-custom").value.trim() : $("inventory").value;
  if (!inventory) throw new Error("Give an inventory.");
  request.inventory = inventory;
  const extraVars = parseExtraVars();
  if (extraVars) request.extra_vars = extraVars;
  if ($("check-mode").checked) request.check_mode = true;
  if ($("diff-mode").checked) request.diff_mode = true;
  const limit = $("limit").value.trim();
  if (limit) request.limit = limit;
  const tags = $("tags").value.split(",").map((tag) => tag.trim()).filter(Boolean);
  if (tags.length) request.tags = tags;
  const timeout = $("timeout").value.trim();
  if (timeout) {
    const seconds = Number(timeout);
    if (!Number.isInteger(seconds) || seconds < 1) throw new Error("Timeout must be a whole number of seconds.");
    request.timeout = seconds;
  }
  return request;
}

async function submitForm(event) {
  event.preventDefault();
  const message = $("submit-message");
  delete message.dataset.taskId;
  if (!checkExtraVars()) {
    flash("Fix the extra vars first.", "error");
    $("extra-vars").focus();
    return;
  }
  let request;
  try {
    request = buildRequest();
  } catch (error) {
    flash(error.message, "error");
    return;
  }
  const button = $("submit-button");
  button.disabled = true;
  flash("Submitting…", "busy");
  try {
    const accepted = await api("api/tasks", { method: "POST", body: request, interactive: true });
    flash(`Submitted ${accepted.task_id}.`, "ok");
    message.dataset.taskId = accepted.task_id;
    select(accepted.task_id);
  } catch (error) {
    flash(`Refused: ${error.message}`, "error");
    refreshRejected();
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------- start

function start() {
  $("submit-form").addEventListener("submit", submitForm);
  $("inventory").addEventListener("change", inventoryChanged);
  $("extra-vars").addEventListener("input", checkExtraVars);
  $("state-filter").addEventListener("change", renderTable);
  $("detail-close").addEventListener("click", closeDetail);
  $("detail-cancel").addEventListener("click", (event) => {
    if (selectedId) cancelClicked(event.currentTarget, selectedId);
  });
  const rows = $("task-rows");
  rows.addEventListener("click", (event) => {
    const row = event.target.closest("tr[data-task-id]");
    if (!row) return;
    const button = event.target.closest('button[data-action="cancel"]');
    if (button) cancelClicked(button, row.dataset.taskId);
    else select(row.dataset.taskId);
  });
  rows.addEventListener("keydown", (event) => {
    const row = event.target.closest("tr[data-task-id]");
    if (row && event.target === row && (event.key === "Enter" || event.key === " ")) {
      event.preventDefault();
      select(row.dataset.taskId);
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && selectedId && !$("token-dialog").open) closeDetail();
  });

  // The worker's facts and lists first (a 401 asks for the token here),
  // then the live stream.
  refreshWorker()
    .then(() => Promise.all([loadPlaybooks(), refreshRejected()]))
    .finally(connectEvents);
  // The live stream keeps the page current; polls only while it is down.
  setInterval(() => {
    if (source && source.readyState === EventSource.OPEN) return;
    refreshWorker();
    refreshRejected();
  }, POLL_MS);
  setInterval(tick, 1000);
}

start();
