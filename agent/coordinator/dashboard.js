// The coordinator dashboard: fetch /api/summary, render it with textContent only (no HTML
// from data), and fetch it again every refresh_s seconds (body data-loads counts the renders).
// Every number carries its raw value in data-value (a rate as a fraction, "" when there is
// none) so a test can read it exactly.
"use strict";

const DEFAULT_REFRESH_S = 5;

function byId(id) {
  return document.getElementById(id);
}

function percent(rate) {
  return rate === null || rate === undefined ? "–" : (rate * 100).toFixed(1) + " %";
}

function rawValue(value) {
  return value === null || value === undefined ? "" : String(value);
}

function setNumber(id, value, text) {
  const node = byId(id);
  node.dataset.value = rawValue(value);
  node.textContent = text !== undefined ? text : rawValue(value);
}

function cell(row, field, value, text, className) {
  const td = document.createElement("td");
  td.dataset.field = field;
  td.dataset.value = rawValue(value);
  td.textContent = text !== undefined ? text : rawValue(value);
  if (className) {
    td.className = className;
  }
  row.appendChild(td);
  return td;
}

function isoTime(ms) {
  return new Date(ms).toISOString().replace(".000Z", "Z");
}

function renderDevices(devices) {
  const body = document.querySelector("#devices tbody");
  body.replaceChildren();
  for (const d of devices) {
    const tr = document.createElement("tr");
    tr.dataset.dev = d.dev;
    const name = cell(tr, "dev", d.dev, d.dev, "dev");
    name.title = "owner " + d.owner;
    cell(tr, "profile", d.profile);
    cell(tr, "online", d.online ? 1 : 0, d.online ? "online" : "offline", d.online ? "yes" : "no");
    const up = cell(tr, "uptime", d.uptime, percent(d.uptime));
    if (d.uptime !== null) {
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = Math.round(d.uptime * 60) + "px";
      up.appendChild(bar);
    }
    cell(tr, "slots", d.up_slots + "/" + d.counted_slots);
    cell(tr, "heartbeats_accepted", d.heartbeats_accepted);
    cell(tr, "proofs_accepted", d.proofs_accepted);
    cell(tr, "rejections", d.rejections);
    cell(tr, "challenges", d.challenges_passed + "/" + d.challenges_scored);
    cell(tr, "pass_rate", d.pass_rate, percent(d.pass_rate));
    body.appendChild(tr);
  }
  byId("devices-empty").hidden = devices.length > 0;
}

function renderRejections(rejections) {
  const body = document.querySelector("#rejections tbody");
  body.replaceChildren();
  for (const r of rejections) {
    const tr = document.createElement("tr");
    tr.dataset.reason = r.reason;
    cell(tr, "reason", r.reason);
    cell(tr, "epoch", r.epoch);
    cell(tr, "total", r.total);
    body.appendChild(tr);
  }
  byId("rejections-empty").hidden = rejections.length > 0;
}

function renderRollouts(rollouts) {
  const note = byId("rollouts-note");
  const table = byId("rollouts");
  const items = rollouts.items || [];
  note.hidden = items.length > 0;
  note.textContent = rollouts.note || "";
  table.hidden = items.length === 0;
  const head = table.querySelector("thead tr");
  const body = table.querySelector("tbody");
  head.replaceChildren();
  body.replaceChildren();
  if (items.length === 0) {
    return;
  }
  const keys = Object.keys(items[0]);
  for (const key of keys) {
    const th = document.createElement("th");
    th.textContent = key;
    head.appendChild(th);
  }
  for (const item of items) {
    const tr = document.createElement("tr");
    tr.dataset.rollout = item.channel;
    for (const key of keys) {
      cell(tr, key, item[key]);
    }
    body.appendChild(tr);
  }
}

function renderPayouts(payouts) {
  const breaker = byId("breaker");
  const b = payouts.breaker;
  breaker.dataset.open = b.open ? "1" : "0";
  breaker.className = b.open ? "no" : "yes";
  breaker.textContent = b.open
    ? "payout breaker OPEN until " + isoTime(b.until_ms) + ": claims are refused (payout_paused). " + b.detail
    : "payout breaker closed: claims are answered";
  const body = document.querySelector("#rewards tbody");
  body.replaceChildren();
  for (const d of payouts.devices) {
    const tr = document.createElement("tr");
    tr.dataset.payee = d.dev;
    cell(tr, "dev", d.dev, d.dev, "dev");
    cell(tr, "epoch", d.epoch);
    cell(tr, "earned", d.earned);
    cell(tr, "paid", d.paid);
    cell(tr, "outstanding", d.outstanding);
    cell(tr, "claimable", d.claimable);
    const text = d.receipts
      .map((r) => r.status + (r.reason ? " (" + r.reason + ")" : "") + " " + r.amount + " @ " + isoTime(r.ms))
      .join("; ");
    cell(tr, "receipts", d.receipts.length, text || "–");
    body.appendChild(tr);
  }
  byId("rewards-empty").hidden = payouts.devices.length > 0;
}

function render(s) {
  byId("mode").textContent = s.mode === "read-only" ? "read-only view" : "live coordinator";
  setNumber("epoch", s.epoch.epoch);
  byId("epoch-range").textContent = isoTime(s.epoch.start_ms) + " – " + isoTime(s.epoch.end_ms);
  setNumber("generated", s.generated_ms, isoTime(s.generated_ms));
  setNumber("devices-online", s.devices_online);
  setNumber("devices-registered", s.devices_registered);
  setNumber("pass-rate", s.challenges.pass_rate, percent(s.challenges.pass_rate));
  setNumber("challenges-passed", s.challenges.passed);
  setNumber("challenges-scored", s.challenges.scored);
  setNumber("messages-accepted", s.messages.accepted);
  setNumber("messages-rejected", s.messages.rejected);
  setNumber("coordinator-up-slots", s.epoch.coordinator_up_slots);
  setNumber("coordinator-down-slots", s.epoch.coordinator_down_slots);
  setNumber("slots-elapsed", s.epoch.slots_elapsed);
  renderDevices(s.devices);
  renderRejections(s.rejections);
  renderRollouts(s.rollouts);
  renderPayouts(s.payouts);
}

async function refresh() {
  let wait = DEFAULT_REFRESH_S;
  try {
    const response = await fetch("/api/summary", { cache: "no-store" });
    if (!response.ok) {
      throw new Error("HTTP " + response.status);
    }
    const summary = await response.json();
    render(summary);
    wait = summary.refresh_s || DEFAULT_REFRESH_S;
    byId("status").textContent = "";
    document.body.dataset.state = "ready";
    document.body.dataset.loads = String(Number(document.body.dataset.loads || "0") + 1);
    document.body.dataset.generatedMs = String(summary.generated_ms);
  } catch (err) {
    byId("status").textContent = "cannot load the summary: " + err.message;
    document.body.dataset.state = "error";
  }
  window.setTimeout(refresh, wait * 1000);
}

document.addEventListener("DOMContentLoaded", refresh);
