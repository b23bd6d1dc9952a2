// The spine's demo page: log in as a demo user, join a room, send gifts,
// watch the feed, the ranking and (for the streamer) the earnings.
// All data reaches the DOM as text nodes (textContent); never as HTML.

import { GiftdClient } from "./giftd.js";
import { $, api, fmt, h, setText, timeFmt } from "./ui.js";

const COUNTS = [1, 10, 66, 99];
const FEED_MAX = 50;
const EARN_FEED_MAX = 20;

const params = new URLSearchParams(location.search);
const AS = (params.get("as") || "ann").trim().toLowerCase();
const ROOM = (params.get("room") || "aurora").trim().toLowerCase();


// --- state -------------------------------------------------------------------
const state = {
  me: null, // {id, name, role}
  room: null, // joined snapshot
  gifts: new Map(), // code -> gift
  count: 1,
  balance: null,
  isStreamer: false,
  sending: 0,
  noRoom: false, // the room in ?room= does not exist
};

// --- messages ------------------------------------------------------------------
function giftLabel(code, count) {
  const g = state.gifts.get(code);
  return `${g ? g.name : code} ×${count}`;
}

/** A clear sentence for every outcome and error code the server can answer with. */
function describe(answer, req) {
  const what = req ? giftLabel(req.gift, req.count) : "the gift";
  const cost = req && state.gifts.has(req.gift) ? state.gifts.get(req.gift).price_coins * req.count : null;
  if (answer.type === "ack") {
    const bal = typeof answer.balance === "number" ? ` Balance: ${coins(answer.balance)}.` : "";
    switch (answer.outcome) {
      case "ok":
        return { kind: "ok", text: `Sent ${what}${cost !== null ? ` (${coins(cost)})` : ""}.${bal}` };
      case "duplicate":
        return answer.retried
          ? { kind: "ok", text: `Sent ${what} (confirmed after reconnecting; charged once).${bal}` }
          : { kind: "warn", text: `Already sent: this gift id was accepted before, so you were not charged again.${bal}` };
      case "conflict":
        return { kind: "error", text: `Not sent: this gift id was already used for a different gift. Nothing was charged.${bal}` };
      case "insufficient_balance":
        return { kind: "error", text: `Not enough coins: ${what} costs ${cost !== null ? coins(cost) : "more than you have"} and you have ${coins(answer.balance ?? 0)}. Nothing was charged.` };
      case "backlog_full":
        return { kind: "warn", text: `The server is catching up on its ledger. Nothing was charged; try again in a moment.` };
      default:
        return { kind: "warn", text: `Server answered '${answer.outcome}' for ${what}.${bal}` };
    }
  }
  const msg = answer.message ? ` (${answer.message})` : "";
  switch (answer.code) {
    case "insufficient_balance":
      return { kind: "error", text: `Not enough coins for ${what}. Nothing was charged.` };
    case "unknown_gift":
      return { kind: "error", text: `“${req ? req.gift : "?"}” is not in the gift catalog any more. Reload the page for the current gifts.` };
    case "bad_count":
      return { kind: "error", text: `That count is not allowed${msg}.` };
    case "self_gift":
      return { kind: "error", text: "Streamers cannot send gifts to their own room." };
    case "not_in_room":
      return { kind: "error", text: "You are not in this room (yet). Wait for “Live” and try again." };
    case "unknown_room":
      return { kind: "error", text: `There is no room called “${ROOM}”. Pick one of the rooms above.` };
    case "overloaded":
      return { kind: "warn", text: "The server is busy. Nothing was charged; try again shortly." };
    case "unavailable":
      return { kind: "warn", text: "The server could not handle that right now. Retrying is safe: the same gift is never charged twice." };
    case "timeout":
      return { kind: "warn", text: `No answer for ${what} yet. If it went through it will appear in the feed; you will never be charged twice for it.` };
    case "closed":
    case "not_connected":
      return { kind: "warn", text: "Not connected; nothing was sent." };
    case "rate_limited":
      return { kind: "warn", text: "Slow down a little: too many gifts at once." };
    case "frame_too_large":
    case "bad_frame":
    case "bad_message":
    case "missing_field":
    case "bad_field":
    case "unknown_type":
      return { kind: "error", text: `The page sent a message the server refused (${answer.code})${msg}.` };
    default:
      return { kind: "error", text: `Error ${answer.code || "unknown"}${msg}.` };
  }
}

function showNotice(text, kind = "error") {
  const n = $("notice");
  n.textContent = text;
  n.dataset.kind = kind;
  n.hidden = !text;
}

function showSendStatus(text, kind) {
  const el = $("send-status");
  el.textContent = text;
  el.dataset.kind = kind || "";
}

// --- connection state ------------------------------------------------------------
function renderConn(s) {
  const el = $("conn");
  el.dataset.state = s.state;
  let text;
  switch (s.state) {
    case "connecting":
      text = "Connecting…";
      break;
    case "open":
      text = state.room ? "Live" : "Connected, joining…";
      break;
    case "reconnecting":
      text = s.delay_ms
        ? `Reconnecting in ${Math.max(1, Math.round(s.delay_ms / 1000))} s (try ${s.attempt})`
        : `Reconnecting… (try ${s.attempt})`;
      break;
    case "closed":
      text = "Offline";
      break;
    default:
      text = s.state;
  }
  setText("conn-text", text);
}

// --- gift panel ------------------------------------------------------------------
function renderCounts() {
  const row = $("counts");
  row.replaceChildren();
  for (const n of COUNTS) {
    const id = `count-${n}`;
    const input = h("input", {
      type: "radio", name: "count", id, value: n, checked: n === state.count,
      onchange: () => {
        state.count = n;
        renderAffordability();
      },
    });
    row.append(h("label", { class: "count", for: id }, input, h("span", {}, `×${n}`)));
  }
}

function renderGifts(list) {
  const gifts = $("gift-list");
  const tips = $("tip-list");
  gifts.replaceChildren();
  tips.replaceChildren();
  for (const g of list) {
    const btn = h("button", {
      type: "button",
      class: `gift tier-${g.tier}`,
      dataset: { code: g.code },
      onclick: () => send(g.code),
    },
    h("span", { class: "gift-icon", "aria-hidden": "true" }, iconFor(g)),
    h("span", { class: "gift-name" }, g.name),
    h("span", { class: "gift-price" }, coins(g.price_coins)));
    (g.kind === "tip" ? tips : gifts).append(btn);
  }
  renderAffordability();
}

// A monogram badge per gift (no emoji font needed): tips show ¥, gifts their initial.
function iconFor(g) {
  if (g.kind === "tip") return "¥";
  const name = (g.name || g.code || "?").trim();
  return (name[0] || "?").toUpperCase();
}

function coins(n) {
  return `${fmt.format(n)} ${n === 1 ? "coin" : "coins"}`;
}

function renderAffordability() {
  for (const btn of document.querySelectorAll("button.gift")) {
    const g = state.gifts.get(btn.dataset.code);
    if (!g) continue;
    const cost = g.price_coins * state.count;
    const short = state.balance !== null && cost > state.balance;
    btn.classList.toggle("short", short);
    btn.setAttribute("aria-label",
      `Send ${g.name} ×${state.count}, ${coins(cost)}${short ? " (more than your balance)" : ""}`);
    btn.disabled = state.isStreamer || state.noRoom;
  }
}

async function send(code) {
  const req = { gift: code, count: state.count };
  state.sending += 1;
  showSendStatus(`Sending ${giftLabel(code, req.count)}…`, "pending");
  const answer = await client.sendGift(code, req.count);
  state.sending -= 1;
  const d = describe(answer, req);
  showSendStatus(d.text, d.kind);
}

// --- balance ---------------------------------------------------------------------
function renderBalance(balance) {
  state.balance = balance;
  setText("balance", balance === null || balance === undefined ? "…" : fmt.format(balance));
  renderAffordability();
}

// --- feed --------------------------------------------------------------------------
function addFeed(ev) {
  const feed = $("feed");
  const mine = state.me && ev.sender && ev.sender.id === state.me.id;
  const when = new Date(ev.ts_ms || Date.now());
  const item = h("li", { class: `feed-item tier-${ev.tier || 1}${mine ? " mine" : ""}` },
    h("span", { class: "feed-icon", "aria-hidden": "true" }, iconFor({ code: ev.gift, name: ev.gift_name, kind: ev.kind })),
    h("span", { class: "feed-text" },
      h("strong", { class: "feed-sender" }, ev.sender ? ev.sender.name : "someone"),
      mine ? h("span", { class: "you-tag" }, " (you)") : null,
      " sent ",
      h("span", { class: "feed-gift" }, ev.gift_name || ev.gift),
      " ",
      h("span", { class: "feed-count" }, `×${ev.count}`)),
    h("span", { class: "feed-value" }, coins(ev.value_coins)),
    h("time", { class: "feed-time muted", datetime: when.toISOString() }, timeFmt.format(when)));
  feed.prepend(item);
  while (feed.children.length > FEED_MAX) feed.lastElementChild.remove();
  $("feed-empty").hidden = true;
}

function addFeedNote(text) {
  const feed = $("feed");
  feed.prepend(h("li", { class: "feed-note" }, text));
  while (feed.children.length > FEED_MAX) feed.lastElementChild.remove();
  $("feed-empty").hidden = true;
}

// --- ranking -------------------------------------------------------------------------
function renderRanking(board) {
  const ol = $("ranking");
  ol.replaceChildren();
  for (const e of board) {
    const mine = state.me && e.id === state.me.id;
    ol.append(h("li", { class: `rank-item${mine ? " mine" : ""}`, value: e.rank },
      h("span", { class: "rank-pos", "aria-hidden": "true" }, `#${e.rank}`),
      h("span", { class: "rank-name" }, e.name || `user ${e.id}`, mine ? h("span", { class: "you-tag" }, " (you)") : null),
      h("span", { class: "rank-score" }, coins(e.score))));
  }
  $("rank-empty").hidden = board.length > 0;
}

// --- earnings ------------------------------------------------------------------------
function renderEarnings(msg) {
  setText("earn-total", fmt.format(msg.room_total));
  if (msg.delta_coins) {
    const feed = $("earn-feed");
    feed.prepend(h("li", {},
      h("strong", {}, `+${coins(msg.delta_coins)}`),
      ` from ${msg.gifts} gift${msg.gifts === 1 ? "" : "s"} `,
      h("span", { class: "muted" }, timeFmt.format(new Date()))));
    while (feed.children.length > EARN_FEED_MAX) feed.lastElementChild.remove();
  }
}

// --- switcher ------------------------------------------------------------------------
function renderSwitch(users, rooms) {
  const link = (label, as, room, current) => {
    const q = new URLSearchParams({ as, room });
    return h("a", { href: `?${q}`, class: "chip", "aria-current": current ? "page" : false }, label);
  };
  const u = $("switch-users");
  u.replaceChildren(h("span", { class: "label" }, "Open as"));
  for (const user of users.filter((x) => x.role !== "admin")) {
    u.append(link(user.name, user.username, ROOM, user.username === AS));
  }
  const r = $("switch-rooms");
  r.replaceChildren(h("span", { class: "label" }, "Room"));
  for (const room of rooms) r.append(link(room.title || room.id, AS, room.id, room.id === ROOM));
}

// --- boot ----------------------------------------------------------------------------
let demo = null;
let token = null;

async function login() {
  const body = await api("/api/login", {
    method: "POST",
    body: { username: AS, password: demo.password },
  });
  token = body.token;
  state.me = body.user;
  return token;
}

const client = new GiftdClient({
  // Log in again when a connect failed before opening (an expired token looks like that).
  token: async ({ failures }) => (token && failures === 0 ? token : login()),
});

client.on("state", (s) => {
  renderConn(s);
  if (s.state === "reconnecting" || s.state === "connecting") state.room = null;
});

client.on("joined", (snap) => {
  state.room = snap;
  state.me = snap.you;
  state.isStreamer = snap.streamer && snap.you && snap.streamer.id === snap.you.id;
  document.title = `${snap.title} — giftd demo`;
  setText("room-title", `${snap.title} · streamer ${snap.streamer.name}`);
  setText("me-name", snap.you.name);
  setText("me-role", snap.you.role);
  // The streamer's own room: earnings instead of the gift panel (no self-gifts).
  document.body.classList.toggle("is-streamer", state.isStreamer);
  $("earnings").hidden = !state.isStreamer;
  $("gifts").hidden = state.isStreamer;
  if (state.isStreamer) setText("earn-total", fmt.format(snap.room_total));
  renderConn({ state: "open" });
  renderAffordability();
  showNotice("");
});

client.on("resync", (r) => {
  addFeedNote(`${r.missed} gift${r.missed === 1 ? "" : "s"} happened while you were disconnected; ranking and totals are up to date.`);
});

client.on("balance", ({ balance }) => renderBalance(balance));
client.on("gift", addFeed);
client.on("rank", ({ board }) => renderRanking(board));
client.on("viewers", ({ viewers }) => setText("viewers", fmt.format(viewers)));
client.on("earnings", renderEarnings);
client.on("error", (err) => {
  if (err.id) return; // a send's error: shown by the send itself
  const d = describe(err, null);
  showNotice(d.text, d.kind);
  if (err.code === "unknown_room") {
    state.noRoom = true;
    setText("room-title", "No such room");
    setText("conn-text", "Connected, not in a room");
    renderAffordability();
  }
});

async function boot() {
  renderCounts();
  renderRanking([]);
  try {
    demo = await api("/api/demo");
  } catch (err) {
    renderConn({ state: "closed" });
    showNotice(err.status === 404
      ? "This page needs demo mode: start the server with `giftd serve --demo`."
      : `Could not reach the server: ${err.message}`);
    return;
  }
  const [catalog, rooms] = await Promise.all([
    api("/api/gifts"),
    api("/api/rooms").catch(() => ({ rooms: [] })),
  ]);
  renderSwitch(demo.users, rooms.rooms || []);
  for (const g of catalog.gifts) state.gifts.set(g.code, g);
  renderGifts(catalog.gifts);
  try {
    await login();
  } catch (err) {
    renderConn({ state: "closed" });
    showNotice(`Could not log in as “${AS}”: ${err.message}. Pick one of the demo accounts above.`);
    return;
  }
  setText("me-name", state.me.name);
  setText("me-role", state.me.role);
  api("/api/me/balance", { token })
    .then((b) => { if (state.balance === null) renderBalance(b.balance); })
    .catch(() => {}); // the room snapshot brings the balance too
  client.connect();
  client.join(ROOM);
}

boot();
