// The overlay widget (an OBS browser source): gift animations by tier, combos with a
// growing counter, high-value gifts on the stage one at a time, cheap gifts stacked,
// the top-N board re-ordering smoothly, the PK bar with its timer. Read-only: it
// connects with the streamer's signed overlay token and resumes after a reconnect.

import { GiftdClient } from "./giftd.js";
import { $, fmt, h, iconFor, renderConn } from "./ui.js";

const params = new URLSearchParams(location.search);
const TOKEN = params.get("token") || "";
const TOP_N = Math.max(1, Math.min(10, parseInt(params.get("top") || "5", 10) || 5));
const BOARD = params.get("board") === "fans" ? "fans" : "room";
const SPAN = ["day", "week", "month"].includes(params.get("span")) ? params.get("span") : "day";
const FORMAT = params.get("format") === "msgpack" ? "msgpack" : "json"; // the wire format (giftd.json by default)
const STACK_MAX = 6; // cheap gifts shown at once; older ones leave first
const CARD_LIFE_MS = 5000; // a stacked card (or banner) stays this long after its last update
const COMBO_END_LINGER_MS = 1500; // after a streak ends its card stays this long
const STAGE_MS = { 3: 2600, 4: 4200 }; // how long a high-value gift holds the stage
const STAGE_QUEUE_MAX = 50; // stage turns waiting (bounded): beyond this the oldest is dropped
const BOARD_ROW_PX = 64;

const state = { room: params.get("room") || "", roomNames: new Map(), skewMs: 0, joined: false };

// --- 1080p canvas scaled to the window ----------------------------------------------------
function fit() {
  const s = params.get("scale") === "1" ? 1 : Math.min(innerWidth / 1920, innerHeight / 1080);
  document.documentElement.style.setProperty("--scale", String(s));
}
addEventListener("resize", fit);
fit();

function problem(text) {
  const p = $("problem");
  p.textContent = text;
  p.hidden = !text;
}

// --- the cheap-gift stack and the banner lane (combos grow in place) -------------------------
const cards = new Map(); // combo_id -> {el, timer}

function countText(ev) {
  return `×${fmt.format(ev.combo_count || ev.count || 1)}`;
}

function upsertCard(ev) {
  const lane = ev.tier >= 2 ? $("banners") : $("stack");
  const key = ev.combo_id || ev.event_id || `s${ev.seq}`;
  let c = cards.get(key);
  if (!c) {
    const el = h("div", {
      class: `gift-card tier-${ev.tier} anim-${ev.animation || "default"}`,
      dataset: { comboId: key, gift: ev.gift, tier: String(ev.tier), sender: String(ev.sender?.id ?? "") },
    },
    h("span", { class: "card-icon", "aria-hidden": "true" }, iconFor(ev)),
    h("span", { class: "card-text" },
      h("strong", { class: "card-sender" }, ev.sender ? ev.sender.name : "someone"),
      h("span", { class: "card-gift" }, `sent ${ev.gift_name || ev.gift}`)),
    h("span", { class: "card-count" }, countText(ev)));
    lane.append(el);
    c = { el, timer: null, lane };
    cards.set(key, c);
    const same = [...lane.children];
    while (same.length > (lane === $("stack") ? STACK_MAX : 3)) {
      const old = same.shift();
      dropCard(old.dataset.comboId);
    }
  } else {
    const count = c.el.querySelector(".card-count");
    count.textContent = countText(ev);
    count.classList.remove("bump");
    void count.offsetWidth; // restart the bump animation
    count.classList.add("bump");
  }
  c.el.dataset.seq = String(ev.seq);
  c.el.dataset.count = String(ev.combo_count || ev.count || 1);
  if (ev.client_id) c.el.dataset.clientId = ev.client_id;
  if (ev.replayed) c.el.dataset.replayed = "1";
  clearTimeout(c.timer);
  c.timer = setTimeout(() => dropCard(key), CARD_LIFE_MS);
}

function dropCard(key) {
  const c = cards.get(key);
  if (!c) return;
  cards.delete(key);
  clearTimeout(c.timer);
  c.el.classList.add("leaving");
  setTimeout(() => c.el.remove(), 400);
}

function comboEnded(ev) {
  const c = cards.get(ev.combo_id);
  if (!c) return;
  c.el.classList.add("ended");
  c.el.querySelector(".card-count").textContent = `×${fmt.format(ev.count)}`;
  clearTimeout(c.timer);
  c.timer = setTimeout(() => dropCard(ev.combo_id), COMBO_END_LINGER_MS);
}

// --- the stage: one high-value gift at a time ----------------------------------------------
const stageQueue = [];
let onStage = null;

function enqueueStage(ev) {
  stageQueue.push(ev);
  if (stageQueue.length > STAGE_QUEUE_MAX) stageQueue.shift(); // bounded: the oldest waits no more
  $("stage").dataset.queued = String(stageQueue.length);
  if (!onStage) nextOnStage();
}

function nextOnStage() {
  const ev = stageQueue.shift();
  $("stage").dataset.queued = String(stageQueue.length);
  if (!ev) {
    onStage = null;
    return;
  }
  const el = h("div", {
    class: `stage-item tier-${ev.tier} anim-${ev.animation || "default"}`,
    dataset: { gift: ev.gift, tier: String(ev.tier), seq: String(ev.seq), sender: String(ev.sender?.id ?? ""),
      clientId: ev.client_id || "", replayed: ev.replayed ? "1" : false },
  },
  h("div", { class: "stage-rays", "aria-hidden": "true" }),
  h("div", { class: "stage-icon", "aria-hidden": "true" }, iconFor(ev)),
  h("div", { class: "stage-text" },
    h("strong", { class: "stage-sender" }, ev.sender ? ev.sender.name : "someone"),
    h("span", {}, ` sent ${ev.gift_name || ev.gift} `),
    h("span", { class: "stage-count" }, countText(ev))),
  h("div", { class: "stage-value" }, `${fmt.format(ev.value_coins)} coins`));
  onStage = el;
  $("stage").append(el);
  setTimeout(() => {
    el.classList.add("leaving");
    setTimeout(() => {
      el.remove();
      nextOnStage();
    }, 350);
  }, STAGE_MS[ev.tier] || STAGE_MS[3]);
}

function onGift(ev) {
  if (!ev.replayed && typeof ev.ts_ms === "number") state.skewMs = ev.ts_ms - Date.now();
  if ((ev.tier || 1) >= 3) enqueueStage(ev);
  else upsertCard(ev);
}

// --- the board: rows keyed by user, moved with transforms (smooth re-ordering) ------------------
const rows = new Map(); // user id -> li

function renderBoard(rank) {
  const list = $("board-list");
  const top = (rank || []).filter((e) => e.rank <= TOP_N);
  const keep = new Set(top.map((e) => String(e.id)));
  for (const [id, li] of rows) {
    if (!keep.has(id)) {
      rows.delete(id);
      li.classList.add("leaving");
      setTimeout(() => li.remove(), 400);
    }
  }
  for (const e of top) {
    const id = String(e.id);
    let li = rows.get(id);
    if (!li) {
      li = h("li", { class: "board-row entering", dataset: { user: id } },
        h("span", { class: "board-pos" }), h("span", { class: "board-name" }), h("span", { class: "board-score" }));
      li.style.transform = `translateY(${(e.rank - 1) * BOARD_ROW_PX}px)`;
      list.append(li);
      rows.set(id, li);
      requestAnimationFrame(() => li.classList.remove("entering"));
    }
    li.dataset.rank = String(e.rank);
    li.querySelector(".board-pos").textContent = String(e.rank);
    li.querySelector(".board-name").textContent = e.name || `user ${e.id}`;
    li.querySelector(".board-score").textContent = fmt.format(e.score);
    li.style.transform = `translateY(${(e.rank - 1) * BOARD_ROW_PX}px)`;
  }
  list.style.height = `${Math.max(1, top.length) * BOARD_ROW_PX}px`;
  $("board").classList.toggle("empty", top.length === 0);
}

// --- PK bar ------------------------------------------------------------------------------
let pkTimer = null;

function renderPk(pk) {
  const box = $("pk");
  clearInterval(pkTimer);
  if (!pk || (pk.state !== "running" && pk.state !== "punish")) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  const weA = pk.room_a === state.room;
  const us = weA ? pk.score_a : pk.score_b;
  const them = weA ? pk.score_b : pk.score_a;
  const other = weA ? pk.room_b : pk.room_a;
  $("pk-us").textContent = state.roomNames.get(state.room) || state.room;
  $("pk-them").textContent = state.roomNames.get(other) || other || "";
  $("pk-score-us").textContent = fmt.format(us || 0);
  $("pk-score-them").textContent = fmt.format(them || 0);
  const total = (us || 0) + (them || 0);
  const share = total ? (us / total) * 100 : 50;
  $("pk-fill-a").style.width = `${share}%`;
  $("pk-fill-b").style.width = `${100 - share}%`;
  box.dataset.state = pk.state;
  const tick = () => {
    const now = Date.now() + state.skewMs;
    const until = pk.state === "running" ? pk.end_ms : pk.punish_end_ms;
    const left = Math.max(0, Math.ceil(((until || now) - now) / 1000));
    $("pk-timer").textContent = `${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}`;
    let phase = "PK";
    if (pk.state === "running" && pk.multiplier > 1 && pk.multiplier_from_ms && now >= pk.multiplier_from_ms) phase = `×${pk.multiplier} time!`;
    if (pk.state === "punish") {
      const won = (pk.winner === "a" && weA) || (pk.winner === "b" && !weA);
      phase = pk.winner === "draw" ? "Draw" : won ? "We won!" : "We lost";
    }
    $("pk-phase").textContent = phase;
  };
  tick();
  pkTimer = setInterval(tick, 250);
}

// --- boot --------------------------------------------------------------------------------
function tokenSubject(token) {
  try {
    const body = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(body + "===".slice((body.length + 3) % 4))).sub; // not verified: the server does that
  } catch {
    return null;
  }
}

async function boot() {
  if (!TOKEN) {
    renderConn($("conn"), { state: "closed" });
    problem("This overlay needs its token: copy the overlay URL from the streamer console.");
    return;
  }
  let rooms = [];
  try {
    rooms = (await (await fetch("/api/rooms")).json()).rooms || [];
  } catch {
    /* the room param may be enough */
  }
  for (const r of rooms) state.roomNames.set(r.id, r.streamer?.name || r.title || r.id);
  if (!state.room) {
    const sub = Number(tokenSubject(TOKEN));
    const mine = rooms.find((r) => r.streamer && r.streamer.id === sub);
    state.room = mine ? mine.id : "";
  }
  if (!state.room) {
    problem("Could not tell which room this overlay is for; add &room=<room id> to its URL.");
    return;
  }
  const client = new GiftdClient({ token: TOKEN, format: FORMAT, reconnectBaseMs: 300, reconnectMaxMs: 3000 });
  document.body.dataset.format = FORMAT;
  window.giftdOverlay = { client, state }; // for tests and debugging
  client.on("state", (s) => {
    if (s.state !== "open") state.joined = false;
    renderConn($("conn"), s, { joined: state.joined });
    document.body.dataset.conn = s.state;
    if (s.state === "revoked") problem("This overlay's token was revoked. Copy the new overlay URL from the streamer console.");
  });
  client.on("joined", (snap) => {
    state.joined = true;
    renderConn($("conn"), { state: "open" }, { joined: true });
    document.body.dataset.seq = String(snap.seq);
    problem("");
  });
  client.on("replay", (r) => {
    document.body.dataset.replayed = String((Number(document.body.dataset.replayed) || 0) + r.events.length);
  });
  client.on("gift", onGift);
  client.on("combo_end", comboEnded);
  client.on("tick", (t) => { document.body.dataset.seq = String(client.seq); });
  client.on("pk", ({ pk }) => renderPk(pk));
  client.on("error", (err) => {
    if (err.code === "out_of_scope") problem("This overlay token belongs to another streamer's room.");
    else if (err.code === "unknown_room") problem(`There is no room “${state.room}”.`);
  });
  if (BOARD === "fans") {
    $("board-title").textContent = { day: "Top fans today", week: "Top fans this week", month: "Top fans this month" }[SPAN];
    client.on("board", (b) => renderBoard(b.rank));
  } else {
    $("board-title").textContent = "Top gifters";
    client.on("rank", ({ board }) => renderBoard(board));
  }
  client.connect();
  client.join(state.room);
  if (BOARD === "fans") {
    const sub = Number(tokenSubject(TOKEN));
    if (sub) client.subscribe(sub, SPAN);
  }
}

boot();
