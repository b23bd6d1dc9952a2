// The streamer console: live gift feed with combos, this broadcast's and today's
// earnings, top gifters, PK invite/accept, the overlay URL (copy, revoke), and
// starting a new broadcast session.

import { GiftdClient } from "./giftd.js";
import { $, api, coins, describeHttp, flash, fmt, h, iconFor, renderConn, renderPkBar, setText, signIn, signOut, timeFmt } from "./ui.js";

const FEED_MAX = 80;
const TODAY_REFRESH_MS = 30_000;

const state = {
  session: null, room: null, joined: false, tab: "room", fansDay: null, combos: new Map(),
  roomNames: new Map(), skewMs: 0, today: null,
};

const client = new GiftdClient({ token: () => state.session.token });

function auth() {
  return state.session.token;
}

// --- feed with combos ---------------------------------------------------------------------
function addFeed(ev) {
  const feed = $("feed");
  const count = ev.combo_count || ev.count;
  const existing = ev.combo_id && state.combos.get(ev.combo_id);
  if (existing && existing.isConnected) {
    existing.querySelector(".combo").textContent = `×${fmt.format(count)}`;
    existing.querySelector(".num").textContent = `+${coins(ev.combo_value || ev.value_coins)}`;
    existing.dataset.count = String(count);
    feed.prepend(existing);
    return;
  }
  const when = new Date(ev.ts_ms || Date.now());
  const li = h("li", { class: `feed-item tier-${ev.tier || 1}`, dataset: { gift: ev.gift, count: String(count), comboId: ev.combo_id || "" } },
    h("span", { class: "gift-icon", "aria-hidden": "true" }, iconFor(ev)),
    h("span", { class: "grow" }, h("strong", {}, ev.sender ? ev.sender.name : "someone"), " sent ", ev.gift_name || ev.gift, " ",
      h("span", { class: "combo" }, ev.kind === "tip" && count === 1 ? "" : `×${fmt.format(count)}`), ev.pk ? h("span", { class: "muted" }, ` (+${fmt.format(ev.pk.points)} PK)`) : ""),
    h("span", { class: "num" }, `+${coins(ev.combo_value || ev.value_coins)}`),
    h("time", { class: "muted", datetime: when.toISOString() }, timeFmt.format(when)));
  if (ev.combo_id) state.combos.set(ev.combo_id, li);
  feed.prepend(li);
  note();
}

function addNote(text) {
  $("feed").prepend(h("li", { class: "note" }, text));
  note();
}

function note() {
  const feed = $("feed");
  while (feed.children.length > FEED_MAX) feed.lastElementChild.remove();
  $("feed-empty").hidden = feed.children.length > 0;
}

// --- top gifters ----------------------------------------------------------------------------
function renderTop() {
  const items = state.tab === "room" ? client.board : state.fansDay?.rank || [];
  const ol = $("top");
  ol.replaceChildren();
  for (const e of items) {
    ol.append(h("li", { dataset: { user: String(e.id) } }, h("span", { class: "num" }, `#${e.rank}`),
      h("span", { class: "grow" }, e.name || `user ${e.id}`), h("span", { class: "num" }, coins(e.score))));
  }
  $("top-empty").hidden = items.length > 0;
}

function selectTab(tab) {
  state.tab = tab;
  for (const t of ["room", "day"]) $(`tab-${t}`).setAttribute("aria-selected", String(t === tab));
  renderTop();
}

// --- earnings ------------------------------------------------------------------------------
async function refreshToday() {
  try {
    const b = await api("/api/boards/streamer/day?limit=1", { token: auth() });
    state.today = b.me ? b.me.score : 0;
    setText("earn-today", fmt.format(state.today));
  } catch {
    /* keep the last value */
  }
}

// --- PK -------------------------------------------------------------------------------------
let pkTimer = null;
function renderPk(pk) {
  clearInterval(pkTimer);
  const mine = state.room;
  const incoming = pk && pk.state === "invited" && pk.room_b === mine;
  $("pk-incoming").hidden = !incoming;
  $("pk-invite").disabled = !!pk;
  if (incoming) setText("pk-incoming-text", `${state.roomNames.get(pk.room_a) || pk.room_a} invites you to a PK battle.`);
  if (pk && pk.state === "invited" && pk.room_a === mine) flash($("pk-status"), `Invitation sent to ${state.roomNames.get(pk.room_b) || pk.room_b}; waiting for an answer…`, "pending");
  const box = $("pk");
  if (!pk || (pk.state !== "running" && pk.state !== "punish")) {
    box.hidden = true;
    // a battle that is over leaves no "waiting…" or "on" line behind (declines/expiries keep theirs)
    if (!pk && ["pending", "ok"].includes($("pk-status").dataset.kind)) flash($("pk-status"), "");
    return;
  }
  const rival = state.roomNames.get(pk.room_a === mine ? pk.room_b : pk.room_a) || "";
  const line = pk.state === "running" ? `PK battle against ${rival} is on.` : `The round against ${rival} is over; punishment time.`;
  if ($("pk-status").textContent !== line) flash($("pk-status"), line, "ok"); // announced once
  box.hidden = false;
  pkTimer = renderPkBar(pk, mine, {
    roomNames: state.roomNames, skewMs: state.skewMs,
    words: { battle: "PK battle", won: "You won!", lost: "You lost", multiplier: (m) => `×${m} points now` },
  });
}

async function invitePk(e) {
  e.preventDefault();
  const room = $("pk-room").value;
  flash($("pk-status"), "Inviting…", "pending");
  try {
    await api("/api/pk/invite", { token: auth(), method: "POST", body: { room } });
    flash($("pk-status"), `Invitation sent to ${state.roomNames.get(room) || room}.`, "ok");
  } catch (err) {
    flash($("pk-status"), `Could not invite: ${describeHttp(err)}`, "error");
  }
}

async function answerPk(accept) {
  const pk = client.pk;
  if (!pk) return;
  try {
    await api(`/api/pk/${encodeURIComponent(pk.id)}/${accept ? "accept" : "decline"}`, { token: auth(), method: "POST" });
    flash($("pk-status"), accept ? "Accepted: the battle starts now." : "Declined.", "ok");
  } catch (err) {
    flash($("pk-status"), `Could not answer: ${describeHttp(err)}`, "error");
  }
}

// --- overlay URL -------------------------------------------------------------------------------
async function newOverlayUrl() {
  try {
    const r = await api("/api/overlay/token", { token: auth(), method: "POST" });
    const url = new URL(r.url, location.origin);
    url.searchParams.set("room", r.room);
    $("overlay-url").value = url.toString();
    $("overlay-open").href = url.toString();
    $("overlay-open").hidden = false;
    flash($("overlay-status"), "Overlay URL ready. Copy it into OBS as a browser source.", "ok");
  } catch (err) {
    flash($("overlay-status"), `Could not get an overlay URL: ${describeHttp(err)}`, "error");
  }
}

async function copyOverlayUrl() {
  const input = $("overlay-url");
  if (!input.value) await newOverlayUrl();
  try {
    await navigator.clipboard.writeText(input.value);
    flash($("overlay-status"), "Copied.", "ok");
  } catch {
    input.select(); // no clipboard permission: select it for Ctrl+C
    flash($("overlay-status"), "Press Ctrl+C (⌘C) to copy the selected URL.", "warn");
  }
}

async function revokeOverlay() {
  if (!confirm("Revoke every overlay URL you have given out? Overlays using them stop at once.")) return;
  try {
    await api("/api/overlay/revoke", { token: auth(), method: "POST" });
    $("overlay-url").value = "";
    $("overlay-open").hidden = true;
    flash($("overlay-status"), "All overlay URLs are revoked. Get a new one for OBS.", "ok");
  } catch (err) {
    flash($("overlay-status"), `Could not revoke: ${describeHttp(err)}`, "error");
  }
}

// --- broadcast session -----------------------------------------------------------------------
async function startSession() {
  if (!state.room) return;
  if (!confirm("Start a new broadcast? The live ranking and session earnings start from zero.")) return;
  try {
    const r = await api(`/api/rooms/${encodeURIComponent(state.room)}/session`, { token: auth(), method: "POST" });
    flash($("session-status"), `Broadcast session ${r.epoch} started.`, "ok");
  } catch (err) {
    flash($("session-status"), `Could not start a session: ${describeHttp(err)}`, "error");
  }
}

// --- client events --------------------------------------------------------------------------
client.on("state", (s) => {
  if (s.state !== "open") state.joined = false;
  renderConn($("conn"), s, { joined: state.joined });
});
client.on("joined", (snap) => {
  state.joined = true;
  renderConn($("conn"), { state: "open" }, { joined: true });
  setText("room-sub", `${snap.title} · ${snap.you.name}`);
  setText("earn-session", fmt.format(snap.room_total));
  setText("epoch", String(snap.epoch));
  if (!state.fansSubscribed) {
    state.fansSubscribed = true;
    client.subscribe(snap.streamer.id, "day");
  }
  renderTop();
});
client.on("gift", (ev) => {
  if (!ev.replayed && typeof ev.ts_ms === "number") state.skewMs = ev.ts_ms - Date.now();
  addFeed(ev);
});
client.on("combo_end", (ev) => {
  const li = state.combos.get(ev.combo_id);
  if (li) li.classList.add("ended");
});
client.on("earnings", (m) => {
  setText("earn-session", fmt.format(m.room_total));
  if (state.today !== null && m.delta_coins) {
    state.today += m.delta_coins;
    setText("earn-today", fmt.format(state.today));
  }
});
client.on("session_start", (ev) => {
  setText("epoch", String(ev.epoch));
  setText("earn-session", "0");
  addNote(`Broadcast session ${ev.epoch} started: the live ranking and session earnings restart.`);
});
client.on("pk", ({ pk }) => renderPk(pk));
client.on("pk_declined", () => flash($("pk-status"), "The invitation was declined.", "warn"));
client.on("pk_expired", () => flash($("pk-status"), "The invitation expired unanswered.", "warn"));
client.on("pk_result", (ev) => {
  const weA = ev.room_a === state.room;
  const [us, them] = weA ? [ev.score_a, ev.score_b] : [ev.score_b, ev.score_a];
  const how = ev.winner === "draw" ? "a draw" : (ev.winner === "a") === weA ? "you won" : "you lost";
  addNote(`PK over: ${how} (${fmt.format(us)} : ${fmt.format(them)}).`);
});
client.on("rank", () => { if (state.tab === "room") renderTop(); });
client.on("board", (b) => { if (b.span === "day") { state.fansDay = b; if (state.tab === "day") renderTop(); } });
client.on("viewers", ({ viewers }) => setText("viewers", fmt.format(viewers)));
client.on("error", (err) => { if (!err.id) flash($("notice"), `${err.code}: ${err.message || ""}`, "error"); });

async function boot() {
  $("signout").addEventListener("click", signOut);
  $("pk-form").addEventListener("submit", invitePk);
  $("pk-accept").addEventListener("click", () => answerPk(true));
  $("pk-decline").addEventListener("click", () => answerPk(false));
  $("overlay-new").addEventListener("click", newOverlayUrl);
  $("overlay-copy").addEventListener("click", copyOverlayUrl);
  $("overlay-revoke").addEventListener("click", revokeOverlay);
  $("session-start").addEventListener("click", startSession);
  for (const t of ["room", "day"]) $(`tab-${t}`).addEventListener("click", () => selectTab(t));
  state.session = await signIn({ onError: (t) => flash($("notice"), t, "error") });
  let rooms = [];
  try {
    rooms = (await api("/api/rooms")).rooms || [];
  } catch (err) {
    flash($("notice"), `Could not reach the server: ${err.message}`, "error");
    return;
  }
  for (const r of rooms) state.roomNames.set(r.id, r.streamer?.name || r.title);
  const mine = rooms.find((r) => r.streamer && r.streamer.id === state.session.user.id);
  if (!mine) {
    renderConn($("conn"), { state: "closed" });
    flash($("notice"), `${state.session.user.name} has no room: the console is for streamers.`, "error");
    for (const b of document.querySelectorAll("main button")) b.disabled = true;
    return;
  }
  state.room = mine.id;
  const sel = $("pk-room");
  for (const r of rooms) if (r.id !== mine.id) sel.append(h("option", { value: r.id }, `${r.title} (${r.streamer?.name || r.id})`));
  refreshToday();
  setInterval(refreshToday, TODAY_REFRESH_MS);
  client.connect();
  client.join(state.room);
  newOverlayUrl();
}

boot();
