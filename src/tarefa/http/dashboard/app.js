// The tarefa dashboard: plain JavaScript, no dependencies, every asset from the server.
// The list waits on GET <api>/changes (one long poll per page) and reads the jobs after each change;
// a job's page long-polls that job (poll_timeout + last_modified) and reads its new events.
"use strict";
const JOBS = document.body.dataset.jobs;
const CHANGES = JOBS.replace(/\/jobs$/, "/changes");
// The list reads only what it shows (no input or result); add "owner" once the wire carries it.
const LIST_FIELDS = "operation,state,progress,message,create_time,start_time,end_time";
const STATES = ["", "queued", "running", "success", "failure", "queued|running"];
const main = document.getElementById("main");
const live = document.getElementById("live");
const filters = { state: "", operation: "" };
const operations = new Set();
let view = 0; // bumped on every navigation: older loops see it and stop

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child ?? "");
  return node;
}

async function api(url, options = {}) {
  const response = await fetch(url, { headers: { Accept: "application/json" }, ...options });
  const body = response.status === 204 ? null : await response.json();
  live.classList.remove("off");
  if (!response.ok) throw Object.assign(new Error(body?.error?.message ?? response.statusText), { status: response.status });
  return body;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const time = (value) => (value ? new Date(value).toLocaleString() : "");
const badge = (state) => el("span", { class: `state ${state}`, "data-state": state }, state);

function bar(progress) {
  const inner = el("div");
  inner.style.width = `${progress ?? 0}%`;
  return el("div", { class: "bar", title: progress == null ? "" : `${progress}%`, "data-progress": progress ?? "" }, inner);
}

// -- the list -------------------------------------------------------------------------------------

function listUrl() {
  const query = new URLSearchParams({ max_records: "100", order_by: "create_time desc", fields: LIST_FIELDS });
  if (filters.state) query.set("state", filters.state);
  if (filters.operation) query.set("operation", filters.operation);
  return `${JOBS}?${query}`;
}

function filterBar() {
  const state = el("select", { id: "filter-state", onchange: (e) => { filters.state = e.target.value; route(); } },
    ...STATES.map((s) => el("option", { value: s }, s || "any state")));
  state.value = filters.state;
  const operation = el("select", { id: "filter-operation", onchange: (e) => { filters.operation = e.target.value; route(); } },
    el("option", { value: "" }, "any operation"), ...[...operations].sort().map((o) => el("option", { value: o }, o)));
  operation.value = filters.operation;
  return el("div", { class: "filters" }, el("label", {}, "State ", state), el("label", {}, "Operation ", operation));
}

function jobRow(job, withOwner) {
  return el("tr", { "data-job": job.id },
    el("td", { class: "id" }, el("a", { href: `#/jobs/${job.id}` }, job.id.slice(0, 10))),
    el("td", {}, job.operation), el("td", {}, badge(job.state)), el("td", {}, bar(job.progress)),
    el("td", { class: "message" }, job.message), el("td", { class: "time" }, time(job.create_time)),
    el("td", { class: "time" }, time(job.start_time)), el("td", { class: "time" }, time(job.end_time)),
    withOwner ? el("td", {}, job.owner) : "");
}

function renderList(records) {
  records.forEach((job) => operations.add(job.operation));
  const withOwner = records.some((job) => "owner" in job);
  const heads = ["Job", "Operation", "State", "Progress", "Message", "Created", "Started", "Ended"];
  if (withOwner) heads.push("Owner");
  const table = el("table", { id: "jobs" }, el("thead", {}, el("tr", {}, ...heads.map((h) => el("th", {}, h)))),
    el("tbody", {}, ...records.map((job) => jobRow(job, withOwner))));
  const empty = records.length ? "" : el("p", { class: "muted" }, "No jobs yet.");
  main.replaceChildren(el("h1", {}, "Jobs"), filterBar(), table, empty);
}

async function listLoop(mine) {
  let token = (await api(CHANGES)).token; // taken before the read: a change after it wakes the next wait
  while (mine === view) {
    renderList((await api(listUrl())).records);
    token = (await api(`${CHANGES}?after=${encodeURIComponent(token)}&poll_timeout=30`)).token;
    await sleep(300); // a burst of changes costs one read (and the list is still shown within a second)
  }
}

// -- one job --------------------------------------------------------------------------------------

function details(job, events) {
  const rows = [["Id", job.id], ["Operation", job.operation], ["State", badge(job.state)], ["Progress", bar(job.progress)],
    ["Message", job.message], ["Created", time(job.create_time)], ["Started", time(job.start_time)],
    ["Ended", time(job.end_time)], ["Last change", time(job.last_modified)]];
  if ("owner" in job) rows.push(["Owner", job.owner]);
  const outcome = job.state === "success" ? el("pre", { id: "result" }, JSON.stringify(job.result ?? null, null, 2))
    : job.error ? el("p", { class: "error", id: "error" }, `${job.error.code}: ${job.error.message}`) : "";
  const actions = job.state === "queued" || job.state === "running"
    ? el("button", { id: "cancel", onclick: () => act(job, "cancel") }, "Cancel")
    : el("button", { id: "delete", onclick: () => act(job, "delete") }, "Delete");
  const history = el("table", { id: "events" },
    el("thead", {}, el("tr", {}, ...["#", "Time", "State", "Progress", "Message"].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...events.map((e) => el("tr", {}, el("td", {}, e.seq), el("td", {}, time(e.time)),
      el("td", {}, badge(e.state)), el("td", {}, e.progress ?? ""), el("td", {}, e.message)))));
  main.replaceChildren(el("p", {}, el("a", { href: "#/" }, "← all jobs")), el("h1", {}, job.operation),
    el("dl", {}, ...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])), outcome,
    el("p", {}, actions), el("h2", {}, "History"), history);
}

async function act(job, action) {
  if (!confirm(`${action === "cancel" ? "Cancel" : "Delete"} job ${job.id}?`)) return;
  try {
    if (action === "cancel") await api(`${JOBS}/${job.id}?action=cancel`, { method: "PATCH" });
    else { await api(`${JOBS}/${job.id}`, { method: "DELETE" }); location.hash = "#/"; }
  } catch (error) { alert(error.message); }
}

async function readEvents(id, events) {
  for (;;) {
    const after = events.length ? events[events.length - 1].seq : 0;
    const page = await api(`${JOBS}/${id}/events?after=${after}&max_records=1000`);
    events.push(...page.records);
    if (!page._links?.next) return events;
  }
}

async function jobLoop(mine, id) {
  let job = (await api(`${JOBS}/${id}`)).record;
  const events = [];
  while (mine === view) {
    details(job, await readEvents(id, events));
    const since = encodeURIComponent(job.last_modified);
    const next = (await api(`${JOBS}/${id}?poll_timeout=30&last_modified=${since}`)).record;
    if (next.last_modified === job.last_modified && (job.state === "success" || job.state === "failure")) {
      const token = (await api(CHANGES)).token; // ended: wait quietly for the next change (a delete, say)
      await api(`${CHANGES}?after=${encodeURIComponent(token)}&poll_timeout=120`);
    }
    job = next;
  }
}

// -- navigation -----------------------------------------------------------------------------------

async function route() {
  const mine = ++view;
  const match = location.hash.match(/^#\/jobs\/([\w-]+)/);
  for (;;) {
    try {
      await (match ? jobLoop(mine, match[1]) : listLoop(mine));
      return;
    } catch (error) {
      if (mine !== view) return;
      if (error.status === 404) { main.replaceChildren(el("p", {}, "There is no such job (it may have been deleted). ", el("a", { href: "#/" }, "All jobs"))); return; }
      live.classList.add("off");
      await sleep(1000);
    }
  }
}

window.addEventListener("hashchange", route);
route();
