// The viewer room: balance, the gift panel (catalog gifts, batch counts, fixed tips and a
// custom amount), the live feed, rankings, viewer count, the PK bar, and recharge through
// a payment channel (pack → pay page → balance rises when the channel's notify lands).

import { GiftdClient } from "./giftd.js";
import {
  $, api, coins, describe, describeHttp, flash, fmt, h, iconFor, idemKey, renderConn, renderPkBar, setText, signIn, signOut, timeFmt,
} from "./ui.js";

const COUNTS = [1, 10, 66, 99, 520, 1314];
const FEED_MAX = 60;
const ORDER_POLL_MS = 1000; // while a recharge is open, its order is polled this often
const ORDER_POLL_MAX_MS = 15 * 60 * 1000;

const params = new URLSearchParams(location.search);
const ROOM = (params.get("room") || "aurora").trim().toLowerCase();

const state = {
  session: null, // {token, user}
  me: null,
  gifts: new Map(),
  count: 1,
  balance: null,
  joined: false,
  isStreamer: false,
  rankTab: "room",
  fanBoards: { day: null, week: null },
  roomNames: new Map(),
  skewMs: 0,
  combos: new Map(), // combo_id -> feed li
};

const client = new GiftdClient({
  token: async ({ failures }) => {
    if (failures > 0 && failures % 3 === 0) {
      // the token may have expired: check it over HTTP and sign in again if so
      try {
        await api("/api/me", { token: state.session.token });
      } catch (err) {
        if (err.status === 401) signOut();
      }
    }
    return state.session.token;
  },
});

// --- gift panel ------------------------------------------------------------------------
function renderCounts() {
  const row = $("counts");
  row.replaceChildren();
  for (const n of COUNTS) {
    const id = `count-${n}`;
    const input = h("input", {
      type: "radio", name: "count", id, value: n, checked: n === state.count,
      onchange: () => { state.count = n; renderAffordability(); },
    });
    row.append(h("label", { class: "count", for: id }, input, h("span", {}, `×${n}`)));
  }
}

function renderGifts(list) {
  $("gift-list").replaceChildren();
  $("tip-list").replaceChildren();
  for (const g of list) {
    const btn = h("button", { type: "button", class: `gift tier-${g.tier}`, dataset: { code: g.code }, onclick: () => send(g.code) },
      h("span", { class: "gift-icon", "aria-hidden": "true" }, iconFor(g)),
      h("span", { class: "gift-name" }, g.name),
      h("span", { class: "gift-price" }, coins(g.price_coins)));
    (g.kind === "tip" ? $("tip-list") : $("gift-list")).append(btn);
  }
  renderAffordability();
}

function renderAffordability() {
  for (const btn of document.querySelectorAll("button.gift")) {
    const g = state.gifts.get(btn.dataset.code);
    if (!g) continue;
    const count = g.kind === "tip" ? 1 : state.count; // tips go one at a time
    const cost = g.price_coins * count;
    const short = state.balance !== null && cost > state.balance;
    btn.classList.toggle("short", short);
    btn.setAttribute("aria-label", `Send ${g.name}${count > 1 ? ` ×${count}` : ""}, ${coins(cost)}${short ? " (more than your balance)" : ""}`);
    btn.disabled = state.isStreamer;
  }
  $("custom-send").disabled = state.isStreamer;
}

async function send(code) {
  const g = state.gifts.get(code);
  const count = g && g.kind === "tip" ? 1 : state.count;
  const what = `${g ? g.name : code}${count > 1 ? ` ×${count}` : ""}`;
  flash($("send-status"), `Sending ${what}…`, "pending");
  const answer = await client.sendGift(code, count);
  const d = describe(answer, what, g ? g.price_coins * count : null);
  flash($("send-status"), d.text, d.kind);
}

async function sendCustom(e) {
  e.preventDefault();
  const raw = $("custom-amount").value.trim();
  const amount = Number(raw);
  if (!Number.isInteger(amount) || amount < 10 || amount > 200000) {
    flash($("send-status"), "A custom tip must be a whole number of coins between 10 and 200,000.", "error");
    $("custom-amount").focus();
    return;
  }
  flash($("send-status"), `Tipping ${coins(amount)}…`, "pending");
  const answer = await client.sendGift("tip_custom", 1, { amount });
  const d = describe(answer, "a custom tip", amount);
  flash($("send-status"), d.text, d.kind);
}

// --- balance, feed, ranking ----------------------------------------------------------------
function renderBalance(balance) {
  state.balance = balance;
  setText("balance", balance === null || balance === undefined ? "…" : fmt.format(balance));
  renderAffordability();
}

/** "×N" for a gift or a streak; nothing for a single tip (its amount says it all). */
function countLabel(ev, count) {
  return ev.kind === "tip" && count === 1 ? "" : `×${fmt.format(count)}`;
}

function addFeed(ev) {
  const feed = $("feed");
  const mine = state.me && ev.sender && ev.sender.id === state.me.id;
  const existing = ev.combo_id && state.combos.get(ev.combo_id);
  const count = ev.combo_count || ev.count;
  if (existing && existing.isConnected) { // a streak: one line with a growing counter
    existing.querySelector(".combo").textContent = countLabel(ev, count);
    existing.querySelector(".num").textContent = coins(ev.combo_value || ev.value_coins);
    feed.prepend(existing);
    return;
  }
  const when = new Date(ev.ts_ms || Date.now());
  const li = h("li", { class: `feed-item tier-${ev.tier || 1}${mine ? " mine" : ""}`, dataset: { gift: ev.gift, seq: String(ev.seq) } },
    h("span", { class: "gift-icon", "aria-hidden": "true" }, iconFor(ev)),
    h("span", { class: "grow" }, h("strong", {}, ev.sender ? ev.sender.name : "someone"), mine ? " (you)" : "",
      " sent ", ev.gift_name || ev.gift, " ", h("span", { class: "combo" }, countLabel(ev, count))),
    h("span", { class: "num" }, coins(ev.combo_value || ev.value_coins)),
    h("time", { class: "muted", datetime: when.toISOString() }, timeFmt.format(when)));
  if (ev.combo_id) state.combos.set(ev.combo_id, li);
  feed.prepend(li);
  trimFeed();
}

function addNote(text) {
  $("feed").prepend(h("li", { class: "note" }, text));
  trimFeed();
}

function trimFeed() {
  const feed = $("feed");
  while (feed.children.length > FEED_MAX) feed.lastElementChild.remove();
  $("feed-empty").hidden = feed.children.length > 0;
  if (state.combos.size > FEED_MAX * 2) {
    for (const [k, li] of state.combos) if (!li.isConnected) state.combos.delete(k);
  }
}

function renderRanking() {
  let items;
  if (state.rankTab === "room") items = client.board;
  else items = state.fanBoards[state.rankTab]?.rank || [];
  const ol = $("ranking");
  ol.replaceChildren();
  for (const e of items) {
    const mine = state.me && e.id === state.me.id;
    ol.append(h("li", { class: mine ? "mine" : "", dataset: { user: String(e.id) } },
      h("span", { class: "num" }, `#${e.rank}`),
      h("span", { class: "grow" }, e.name || `user ${e.id}`, mine ? " (you)" : ""),
      h("span", { class: "num" }, coins(e.score))));
  }
  $("rank-empty").hidden = items.length > 0;
}

function selectTab(tab) {
  state.rankTab = tab;
  for (const t of ["room", "day", "week"]) $(`tab-${t}`).setAttribute("aria-selected", String(t === tab));
  renderRanking();
}

// --- PK ---------------------------------------------------------------------------------
let pkTimer = null;
function renderPk(pk) {
  clearInterval(pkTimer);
  const box = $("pk");
  if (!pk || (pk.state !== "running" && pk.state !== "punish")) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  pkTimer = renderPkBar(pk, ROOM, {
    roomNames: state.roomNames, skewMs: state.skewMs,
    words: { battle: "PK battle", won: "We won!", lost: "We lost", multiplier: (m) => `×${m} points now!` },
  });
}

// --- recharge through a payment channel ----------------------------------------------------
let packsLoaded = null;
let pollTimer = null;

async function openRecharge() {
  const dlg = $("recharge");
  flash($("recharge-status"), "");
  $("pay-link").hidden = true;
  dlg.showModal();
  try {
    packsLoaded = packsLoaded || await api("/api/recharge/packs");
  } catch (err) {
    flash($("recharge-status"), `Could not load the packs: ${describeHttp(err)}`, "error");
    return;
  }
  const p = packsLoaded;
  const channel = p.channels.includes("sandbox") ? "sandbox" : p.channels[0];
  setText("recharge-rate", channel
    ? `1 yuan = ${p.coins_per_yuan} coins. ${p.first_recharge_bonus.pct ? `First recharge: +${p.first_recharge_bonus.pct}% bonus (up to ${fmt.format(p.first_recharge_bonus.max_coins)} coins). ` : ""}Paying with: ${channel}.`
    : "No payment channel is configured on this server.");
  const box = $("packs");
  box.replaceChildren();
  for (const pack of p.packs) {
    box.append(h("button", { type: "button", class: "pack", disabled: !channel, dataset: { yuan: String(pack.yuan), coins: String(pack.coins) },
      onclick: () => buyPack(pack, channel) },
    h("strong", {}, `¥${pack.yuan}`), h("span", { class: "muted" }, coins(pack.coins))));
  }
  box.querySelector("button")?.focus();
}

async function buyPack(pack, channel) {
  // Open the pay window inside the click (popup blockers), point it at the pay page once
  // the order exists. The idempotency key makes a double click one order.
  const win = channel === "sandbox" ? window.open("about:blank", "giftd-pay") : null;
  const key = idemKey("rc");
  flash($("recharge-status"), `Creating an order for ¥${pack.yuan}…`, "pending");
  let order;
  try {
    order = (await api("/api/recharge/orders", {
      token: state.session.token, method: "POST", headers: { "idempotency-key": key },
      body: { channel, pack_yuan: pack.yuan },
    })).order;
  } catch (err) {
    if (win) win.close();
    flash($("recharge-status"), `Could not create the order: ${describeHttp(err)}`, "error");
    return;
  }
  if (order.pay_url) {
    const link = $("pay-link");
    link.href = order.pay_url;
    link.hidden = false;
    if (win) win.location.href = order.pay_url;
    flash($("recharge-status"), `Order for ${coins(order.coins)} created. Pay on the pay page; your balance goes up as soon as the payment is confirmed.`, "pending");
  } else {
    if (win) win.close();
    flash($("recharge-status"), "Order created; complete the payment in your payment app.", "pending");
  }
  const before = state.balance;
  watchOrder(order.id, before);
}

function watchOrder(orderId, before) {
  clearInterval(pollTimer);
  const started = Date.now();
  pollTimer = setInterval(async () => {
    if (Date.now() - started > ORDER_POLL_MAX_MS) {
      clearInterval(pollTimer);
      flash($("recharge-status"), "Still waiting for the payment; your balance updates when it is confirmed.", "warn");
      return;
    }
    let order;
    try {
      order = (await api(`/api/recharge/orders/${encodeURIComponent(orderId)}`, { token: state.session.token })).order;
    } catch {
      return; // try again next time
    }
    if (order.status === "PENDING") return;
    if (order.status !== "SUCCESS") {
      clearInterval(pollTimer);
      flash($("recharge-status"), order.status === "CLOSED" ? "The order expired before it was paid. Nothing was charged." : `The payment did not go through (${order.status}).`, "error");
      return;
    }
    // Paid: the credit reaches the wallet right after (outbox); wait until the balance shows it.
    const want = (before ?? 0) + order.coins + order.bonus_coins;
    const { balance } = await api("/api/me/balance", { token: state.session.token });
    if (before !== null && balance < want && Date.now() - started < ORDER_POLL_MAX_MS) return;
    clearInterval(pollTimer);
    client.balance = balance;
    renderBalance(balance);
    flash($("recharge-status"), `Paid: +${coins(order.coins)}${order.bonus_coins ? ` and a ${coins(order.bonus_coins)} bonus` : ""}. Balance: ${coins(balance)}.`, "ok");
    flash($("notice"), `Recharge complete: +${coins(order.coins + order.bonus_coins)}.`, "ok");
  }, ORDER_POLL_MS);
}

// --- client events ----------------------------------------------------------------------------
client.on("state", (s) => {
  if (s.state !== "open") state.joined = false;
  renderConn($("conn"), s, { joined: state.joined });
});
client.on("joined", (snap) => {
  state.joined = true;
  state.me = snap.you;
  state.isStreamer = snap.streamer && snap.you && snap.streamer.id === snap.you.id;
  document.title = `${snap.title} — giftd`;
  setText("room-title", snap.title);
  setText("room-sub", `Streamer ${snap.streamer.name}`);
  setText("me-name", snap.you.name);
  renderConn($("conn"), { state: "open" }, { joined: true });
  if (state.isStreamer) {
    flash($("notice"), "This is your own room: streamers cannot gift themselves. Open the streamer console to watch your gifts.", "warn");
  } else {
    flash($("notice"), "");
  }
  if (!state.fanBoards.subscribed) {
    state.fanBoards.subscribed = true;
    client.subscribe(snap.streamer.id, "day");
    client.subscribe(snap.streamer.id, "week");
  }
  renderAffordability();
});
client.on("resync", (r) => {
  if (r.reset) addNote("The room was reset while you were away; everything shown is current.");
  else if (r.missed) addNote(`${r.missed} event${r.missed === 1 ? "" : "s"} happened while you were disconnected; ranking and totals are up to date.`);
});
client.on("balance", ({ balance }) => renderBalance(balance));
client.on("gift", (ev) => {
  if (!ev.replayed && typeof ev.ts_ms === "number") state.skewMs = ev.ts_ms - Date.now();
  addFeed(ev);
});
client.on("session_start", () => {
  addNote("The streamer started a new broadcast: the ranking starts afresh.");
});
client.on("pk_invite", () => addNote("A PK battle invitation was sent."));
client.on("pk_start", () => addNote("PK battle started! Gifts now score for this room."));
client.on("pk_result", (ev) => addNote(`PK battle over: ${ev.winner === "draw" ? "a draw" : "we " + ((ev.winner === "a") === (ev.room_a === ROOM) ? "won" : "lost")} (${fmt.format(ev.score_a)} : ${fmt.format(ev.score_b)}).`));
client.on("pk", ({ pk }) => renderPk(pk));
client.on("rank", () => { if (state.rankTab === "room") renderRanking(); });
client.on("board", (b) => {
  state.fanBoards[b.span] = b;
  if (state.rankTab === b.span) renderRanking();
});
client.on("viewers", ({ viewers }) => setText("viewers", fmt.format(viewers)));
client.on("error", (err) => {
  if (err.id) return; // a send's error is shown by the send
  const d = describe(err);
  flash($("notice"), err.code === "unknown_room" ? `There is no room called “${ROOM}”.` : d.text, d.kind);
});

// --- boot ----------------------------------------------------------------------------------------
async function boot() {
  renderCounts();
  $("signout").addEventListener("click", signOut);
  $("recharge-btn").addEventListener("click", openRecharge);
  $("recharge-close").addEventListener("click", () => $("recharge").close());
  $("custom-form").addEventListener("submit", sendCustom);
  for (const t of ["room", "day", "week"]) $(`tab-${t}`).addEventListener("click", () => selectTab(t));
  addEventListener("focus", async () => {
    if (!state.session) return;
    try {
      const { balance } = await api("/api/me/balance", { token: state.session.token });
      if (client._pending.size === 0) { client.balance = balance; renderBalance(balance); }
    } catch { /* shown elsewhere */ }
  });
  try {
    const [catalog, rooms] = await Promise.all([api("/api/gifts"), api("/api/rooms").catch(() => ({ rooms: [] }))]);
    for (const g of catalog.gifts) state.gifts.set(g.code, g);
    for (const r of rooms.rooms || []) state.roomNames.set(r.id, r.streamer?.name || r.title);
    renderGifts(catalog.gifts);
  } catch (err) {
    renderConn($("conn"), { state: "closed" });
    flash($("notice"), `Could not reach the server: ${err.message}`, "error");
    return;
  }
  state.session = await signIn({ onError: (t) => flash($("notice"), t, "error") });
  state.me = state.session.user;
  setText("me-name", state.me.name);
  api("/api/me/balance", { token: state.session.token })
    .then((b) => { if (state.balance === null) renderBalance(b.balance); })
    .catch(() => {});
  client.connect();
  client.join(ROOM);
}

boot();
