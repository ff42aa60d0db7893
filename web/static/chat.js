// ErGo's chat page. Every text from the bot or the user goes in with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const log = $("log"), input = $("message"), sendButton = $("send"), notice = $("notice");
const SETTINGS_KEY = "ergo.settings";
let catalogue = [];   // [{name, type, default, description, choices?}] from /api/settings
let busy = false;

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const response = await fetch(path, options);
  let data = {};
  try { data = await response.json(); } catch (e) { /* not JSON: keep the status */ }
  if (!response.ok) throw new Error(data.error || `the server answered ${response.status}`);
  return data;
}

const STREAMS = typeof ReadableStream !== "undefined" && typeof TextDecoderStream !== "undefined"
  && "body" in Response.prototype;

// A reply from /api/chat/stream, its pieces of text given to onPiece as they come (server-sent events:
// token..., then done with what /api/chat answers); from /api/chat where the browser cannot read a stream
// or the server has no such route.
async function chatStreamed(body, onPiece) {
  if (!STREAMS) return api("/api/chat", body);
  const response = await fetch("/api/chat/stream", {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  if (response.status === 404 || response.status === 405) return api("/api/chat", body);
  if (!response.ok) {
    let data = {};
    try { data = await response.json(); } catch (e) { /* not JSON: keep the status */ }
    throw new Error(data.error || `the server answered ${response.status}`);
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "", done = null;
  for (;;) {
    const {value, done: end} = await reader.read();
    if (end) break;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const event = /^event: (.*)$/m.exec(block), data = /^data: (.*)$/m.exec(block);
      if (!event || !data) continue;
      const payload = JSON.parse(data[1]);
      if (event[1] === "token") onPiece(payload.text);
      else if (event[1] === "done") done = payload;
    }
  }
  if (!done) throw new Error("the reply was cut off; try again");
  return done;
}

function say(text) {
  notice.textContent = text;
  notice.hidden = !text;
}

function scrollDown() {
  log.scrollTop = log.scrollHeight;
}

// Icons as SVG paths (Material Icons, Apache-2.0): no emoji font needed, nothing fetched.
const ICONS = {
  up: "M1 21h4V9H1v12zm22-11c0-1.1-.9-2-2-2h-6.31l.95-4.57.03-.32c0-.41-.17-.79-.44-1.06L14.17 1 7.59 7.59C7.22 7.95 7 8.45 7 9v10c0 1.1.9 2 2 2h9c.83 0 1.54-.5 1.84-1.22l3.02-7.05c.09-.23.14-.47.14-.73v-2z",
  down: "M15 3H6c-.83 0-1.54.5-1.84 1.22l-3.02 7.05c-.09.23-.14.47-.14.73v2c0 1.1.9 2 2 2h6.31l-.95 4.57-.03.32c0 .41.17.79.44 1.06L9.83 23l6.59-6.59c.36-.36.58-.86.58-1.41V5c0-1.1-.9-2-2-2zm4 0v12h4V3h-4z",
  again: "M17.65 6.35A7.958 7.958 0 0 0 12 4c-4.42 0-7.99 3.58-7.99 8s3.57 8 7.99 8c3.73 0 6.84-2.55 7.73-6h-2.08A5.99 5.99 0 0 1 12 18c-3.31 0-6-2.69-6-6s2.69-6 6-6c1.66 0 3.14.69 4.22 1.78L13 11h7V4l-2.35 2.35z",
};

function icon(name) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", ICONS[name]);
  svg.append(path);
  return svg;
}

function button(iconName, title, onClick, label) {
  const b = document.createElement("button");
  b.type = "button";
  b.append(icon(iconName));
  if (label) b.append(label);
  b.title = title;
  b.setAttribute("aria-label", title);
  b.addEventListener("click", onClick);
  return b;
}

// One message bubble; a bot bubble carries its turn number, thumbs and (when last) regenerate.
function addMessage(role, text, turn, vote) {
  $("empty").hidden = true;
  const row = document.createElement("div");
  row.className = `msg ${role}`;
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  bubble.textContent = text;
  row.append(bubble);
  if (role === "bot" && turn) {
    row.dataset.turn = turn;
    const tools = document.createElement("div");
    tools.className = "tools";
    const up = button("up", "Good reply", () => sendVote(row, "up"));
    const down = button("down", "Bad reply", () => sendVote(row, "down"));
    up.dataset.vote = "up";
    down.dataset.vote = "down";
    tools.append(up, down, button("again", "Regenerate this reply", regenerate, "Regenerate"));
    row.append(tools);
    showVote(row, vote);
  }
  log.append(row);
  markLast();
  scrollDown();
  return row;
}

function markLast() {
  const bots = log.querySelectorAll(".msg.bot");
  bots.forEach((row, i) => row.classList.toggle("last", i === bots.length - 1 && row === log.lastElementChild));
}

function showVote(row, vote) {
  row.querySelectorAll("[data-vote]").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.vote === vote)));
}

function typing(on) {
  const existing = $("typing");
  if (existing) existing.remove();
  if (!on) return;
  const row = document.createElement("div");
  row.id = "typing";
  row.className = "msg bot";
  const bubble = document.createElement("div");
  bubble.className = "bubble typing";
  bubble.setAttribute("aria-label", "ErGo is typing");
  for (let i = 0; i < 3; i++) bubble.append(document.createElement("span"));
  row.append(bubble);
  log.append(row);
  scrollDown();
}

function chosenSettings() {
  let saved = {};
  try { saved = JSON.parse(localStorage.getItem(SETTINGS_KEY) || "{}"); } catch (e) { saved = {}; }
  const out = {};
  for (const s of catalogue) {
    if (s.name in saved && saved[s.name] !== s.default) out[s.name] = saved[s.name];
  }
  return out;
}

async function withBusy(work) {
  if (busy) return;
  busy = true;
  sendButton.disabled = true;
  say("");
  typing(true);
  try {
    await work();
  } catch (e) {
    say(e.message);
  } finally {
    typing(false);
    busy = false;
    sendButton.disabled = false;
    input.focus();
  }
}

// The bundle answering this conversation (several may be served side by side), as the server names it.
function showBundle(data) {
  if (data.bundle) $("model").textContent = data.bundle;
}

function degradedNotice(data) {
  if (data.degraded) say("The conversation store is unreachable: this reply did not see the earlier turns.");
}

async function send() {
  const text = input.value.trim();
  if (!text || busy) return;
  input.value = "";
  grow();
  addMessage("user", text);
  await withBusy(async () => {
    let row = null;
    const data = await chatStreamed({message: text, settings: chosenSettings()}, (piece) => {
      if (!row) { typing(false); row = addMessage("bot", ""); }
      row.querySelector(".bubble").textContent += piece;
      scrollDown();
    });
    if (row) row.remove();  // the final reply, with its turn and thumbs (the safety filter may change words)
    addMessage("bot", data.reply, data.turn);
    showBundle(data);
    degradedNotice(data);
  });
}

async function regenerate() {
  const row = log.querySelector(".msg.bot.last");
  if (!row) return;
  await withBusy(async () => {
    const data = await api("/api/regenerate", {settings: chosenSettings()});
    row.querySelector(".bubble").textContent = data.reply;
    showVote(row, null);
  });
}

async function sendVote(row, vote) {
  try {
    await api("/api/feedback", {turn: Number(row.dataset.turn), vote});
    showVote(row, vote);
  } catch (e) {
    say(e.message);
  }
}

async function newConversation() {
  if (busy) return;
  try {
    await api("/api/reset", {});
    log.querySelectorAll(".msg").forEach((m) => m.remove());
    $("empty").hidden = false;
    say("");
    input.focus();
  } catch (e) {
    say(e.message);
  }
}

async function restore() {
  const data = await api("/api/history");
  for (const t of data.turns) addMessage(t.role, t.text, t.turn, t.vote);
  showBundle(data);
  if (data.degraded) say("The conversation store is unreachable: earlier turns cannot be shown right now.");
}

// The settings panel, built from /api/settings; choices are kept in localStorage. The decoder's main
// knobs are in view, the rest folded under "More".
const MAIN_SETTINGS = ["mode", "decoder", "beam_size", "temperature"];

function buildSettings() {
  const fields = $("settings-fields");
  const more = document.createElement("details");
  const summary = document.createElement("summary");
  const moreFields = document.createElement("div");
  summary.textContent = "More settings";
  moreFields.className = "fields";
  more.append(summary, moreFields);
  const saved = chosenSettings();
  fields.replaceChildren();
  for (const s of catalogue) {
    const label = document.createElement("label");
    const name = document.createElement("span");
    name.textContent = s.name.replace(/_/g, " ");
    let control;
    if (s.choices && s.choices.length) {
      control = document.createElement("select");
      for (const c of s.choices) control.append(new Option(c, c));
    } else if (s.type === "bool") {
      control = document.createElement("input");
      control.type = "checkbox";
    } else {
      control = document.createElement("input");
      control.type = s.type === "str" ? "text" : "number";
      if (s.type === "float") control.step = "any";
    }
    const value = s.name in saved ? saved[s.name] : s.default;
    if (control.type === "checkbox") control.checked = Boolean(value); else control.value = String(value);
    control.name = s.name;
    control.title = s.description;
    control.addEventListener("change", saveSettings);
    label.append(name, control);
    (MAIN_SETTINGS.includes(s.name) ? fields : moreFields).append(label);
  }
  if (moreFields.childElementCount) fields.append(more);
}

function saveSettings() {
  const out = {};
  for (const s of catalogue) {
    const control = $("settings-form").elements[s.name];
    if (s.type === "bool") out[s.name] = control.checked;
    else if (s.type === "int") out[s.name] = parseInt(control.value, 10);
    else if (s.type === "float") out[s.name] = parseFloat(control.value);
    else out[s.name] = control.value;
  }
  localStorage.setItem(SETTINGS_KEY, JSON.stringify(out));
}

function grow() {
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
}

$("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
});
input.addEventListener("input", grow);
$("new-chat").addEventListener("click", newConversation);
$("settings-toggle").addEventListener("click", (e) => {
  const panel = $("settings");
  panel.hidden = !panel.hidden;
  e.currentTarget.setAttribute("aria-expanded", String(!panel.hidden));
});
$("settings-defaults").addEventListener("click", () => { localStorage.removeItem(SETTINGS_KEY); buildSettings(); });

(async () => {
  try {
    catalogue = (await api("/api/settings")).settings;
    buildSettings();
    await restore();
  } catch (e) {
    say(e.message);
  }
  document.body.dataset.ready = "true";  // the page has restored the conversation (tests wait for it)
})();
