// ui.js — small helpers shared by the room, console and admin pages.
// Every piece of user or server text reaches the DOM through text nodes
// (textContent / createTextNode), never as HTML.

export const $ = (id) => document.getElementById(id);
export const fmt = new Intl.NumberFormat();
export const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });

/** createElement with text children; attributes are set as attributes, never parsed. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v === null || v === undefined) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function setText(id, text) {
  const el = $(id);
  if (el) el.textContent = text;
}

export function coins(n) {
  return `${fmt.format(n)} ${n === 1 ? "coin" : "coins"}`;
}

/** A monogram badge per gift (no emoji font needed): tips show ¥, gifts their initial. */
export function iconFor(g) {
  if (g.kind === "tip") return "¥";
  const name = String(g.name || g.gift_name || g.code || g.gift || "?").trim();
  return (name[0] || "?").toUpperCase();
}

/** fetch JSON; throws Error with .code/.status from the server's {code, message}. */
export async function api(url, { token, method = "GET", body, headers = {} } = {}) {
  const init = { method, headers: { ...headers } };
  if (token) init.headers.authorization = `Bearer ${token}`;
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(url, init);
  let data = null;
  try {
    data = await res.json();
  } catch {
    /* not JSON */
  }
  if (!res.ok) {
    const err = new Error((data && data.message) || `${url}: HTTP ${res.status}`);
    err.code = data && data.code;
    err.status = res.status;
    throw err;
  }
  return data;
}

/** A random Idempotency-Key for one user action (kept across retries of that action). */
export function idemKey(prefix = "k") {
  const b = new Uint8Array(9);
  crypto.getRandomValues(b);
  return `${prefix}-${Date.now().toString(36)}-${[...b].map((x) => x.toString(16).padStart(2, "0")).join("")}`;
}

// --- sign-in -------------------------------------------------------------------------
const TOKEN_KEY = "giftd.session";

/**
 * Get a session: `?as=<demo user>` logs in with the demo password (demo mode only);
 * else a token kept in sessionStorage; else the page's login form (#login) is shown
 * and we wait for it. Resolves {token, user}.
 */
export async function signIn({ form = $("login"), onError = () => {} } = {}) {
  const params = new URLSearchParams(location.search);
  const as = (params.get("as") || "").trim().toLowerCase();
  if (as) {
    try {
      const demo = await api("/api/demo");
      return remember(await api("/api/login", { method: "POST", body: { username: as, password: demo.password } }));
    } catch (err) {
      onError(`Could not sign in as “${as}”: ${err.message}`);
    }
  }
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    try {
      const s = JSON.parse(saved);
      await api("/api/me", { token: s.token }); // still valid?
      return s;
    } catch {
      sessionStorage.removeItem(TOKEN_KEY);
    }
  }
  if (!form) throw new Error("not signed in");
  form.hidden = false;
  const user = form.querySelector("input[name=username]");
  if (user) user.focus();
  return new Promise((resolve) => {
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const fd = new FormData(form);
      const msg = form.querySelector(".form-msg");
      if (msg) msg.textContent = "Signing in…";
      try {
        const s = remember(await api("/api/login", {
          method: "POST",
          body: { username: String(fd.get("username") || "").trim().toLowerCase(), password: String(fd.get("password") || "") },
        }));
        form.hidden = true;
        resolve(s);
      } catch (err) {
        if (msg) msg.textContent = err.code === "bad_credentials" || err.status === 401
          ? "Wrong username or password." : `Could not sign in: ${err.message}`;
      }
    });
  });
}

function remember(s) {
  const session = { token: s.token, user: s.user };
  sessionStorage.setItem(TOKEN_KEY, JSON.stringify(session));
  return session;
}

export function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  const q = new URLSearchParams(location.search);
  q.delete("as");
  location.search = q.toString();
}

// --- connection badge ----------------------------------------------------------------
/** Render the client's state into a #conn badge (data-state drives the colour). */
export function renderConn(el, s, { joined = false } = {}) {
  if (!el) return;
  el.dataset.state = s.state;
  let text;
  switch (s.state) {
    case "connecting":
      text = "Connecting…";
      break;
    case "open":
      text = joined ? "Live" : "Connected, joining…";
      break;
    case "reconnecting":
      text = s.delay_ms
        ? `Reconnecting in ${Math.max(1, Math.round(s.delay_ms / 1000))} s (try ${s.attempt})`
        : `Reconnecting… (try ${s.attempt})`;
      break;
    case "revoked":
      text = "Revoked";
      break;
    case "closed":
      text = "Offline";
      break;
    default:
      text = s.state;
  }
  const label = el.querySelector(".conn-text") || el;
  label.textContent = text;
}

// --- messages for every outcome and error code ----------------------------------------
/** A clear sentence for every ack outcome and error code the server can answer with. */
export function describe(answer, what = "the gift", cost = null) {
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
        return { kind: "error", text: `Not enough coins: ${what} costs ${cost !== null ? coins(cost) : "more than you have"} and you have ${coins(answer.balance ?? 0)}. Nothing was charged — recharge to continue.` };
      case "backlog_full":
        return { kind: "warn", text: "The server is catching up on its ledger. Nothing was charged; try again in a moment." };
      default:
        return { kind: "warn", text: `Server answered '${answer.outcome}' for ${what}.${bal}` };
    }
  }
  const msg = answer.message ? ` (${answer.message})` : "";
  const text = ERROR_TEXT[answer.code];
  if (text) return { kind: WARN_CODES.has(answer.code) ? "warn" : "error", text: typeof text === "function" ? text(answer, what) : text };
  return { kind: "error", text: `Error ${answer.code || "unknown"}${msg}.` };
}

const WARN_CODES = new Set(["rate_limited", "overloaded", "unavailable", "timeout", "closed", "not_connected", "backlog_full"]);
const ERROR_TEXT = {
  insufficient_balance: (a, what) => `Not enough coins for ${what}. Nothing was charged.`,
  unknown_gift: "That gift is not in the catalog any more. Reload the page for the current gifts.",
  bad_count: "That count is not allowed (1 to 9,999 per send).",
  bad_amount: "A custom tip must be between 10 and 200,000 coins.",
  self_gift: "Streamers cannot send gifts to their own room.",
  not_in_room: "You are not in this room (yet). Wait for “Live” and try again.",
  unknown_room: "There is no such room.",
  read_only: "This connection is read-only (an overlay token) and cannot send gifts.",
  out_of_scope: "An overlay token only works for its own streamer's room and boards.",
  overloaded: "The server is busy. Nothing was charged; try again shortly.",
  unavailable: "The server could not handle that right now. Retrying is safe: the same gift is never charged twice.",
  timeout: (a, what) => `No answer for ${what} yet. If it went through it will appear in the feed; you will never be charged twice for it.`,
  closed: "Not connected; nothing was sent.",
  not_connected: "Not connected; nothing was sent.",
  rate_limited: (a) => `Slow down a little: too many gifts at once.${a.retry_after_ms ? ` Try again in ${Math.ceil(a.retry_after_ms / 100) / 10} s.` : ""} Nothing was charged.`,
  unknown_board: "That leaderboard does not exist.",
  too_many_subscriptions: "Too many leaderboards open on this connection.",
  frame_too_large: "The page sent a message that was too large; nothing was sent.",
  bad_frame: "The page sent a message the server could not read; nothing was sent.",
  bad_message: "The page sent a malformed message; nothing was sent.",
  missing_field: (a) => `The page sent an incomplete message${a.message ? ` (${a.message})` : ""}; nothing was sent.`,
  bad_field: (a) => `The page sent an invalid value${a.message ? ` (${a.message})` : ""}; nothing was sent.`,
  unknown_type: "The page sent a message the server does not know; nothing was sent.",
};

/** HTTP API error codes → sentences (recharge, PK, overlay, admin). */
export function describeHttp(err) {
  const t = {
    auth_required: "Please sign in again.",
    bad_token: "Your session is not valid any more; please sign in again.",
    token_expired: "Your session expired; please sign in again.",
    forbidden: "Your role may not do this.",
    read_only: "An overlay token cannot use the API.",
    no_room: "Only a streamer with a room can do this.",
    unknown_room: "There is no such room.",
    busy: "One of the rooms is already in a PK battle.",
    bad_state: "The battle is not in a state that allows this any more.",
    not_yours: "This battle invitation is not addressed to you.",
    not_found: "Not found.",
    bad_idempotency_key: "The request was missing its idempotency key; please retry.",
    idempotency_conflict: "This request conflicts with an earlier one; please retry.",
    reason_required: "A reason is required.",
    amount_not_convertible: "That amount does not convert to whole coins.",
    no_statement: "No statement is available for that channel here.",
  }[err.code];
  return t || err.message || "Something went wrong.";
}

/** Show a transient message in a status element (role=status or alert). */
export function flash(el, text, kind = "") {
  if (!el) return;
  el.textContent = text;
  el.dataset.kind = kind;
  el.hidden = !text;
}

/**
 * Fill the PK bar (#pk-us, #pk-them, #pk-score-*, #pk-a/#pk-b widths, #pk-timer,
 * #pk-phase) for the room `mine`, and tick its timer every 0.5 s. Returns the
 * interval id (clear it before the next render). `words` names the outcome from
 * this page's point of view, e.g. {won: "We won!", lost: "We lost"}.
 */
export function renderPkBar(pk, mine, { roomNames, skewMs = 0, words }) {
  const weA = pk.room_a === mine;
  const us = (weA ? pk.score_a : pk.score_b) || 0;
  const them = (weA ? pk.score_b : pk.score_a) || 0;
  const other = weA ? pk.room_b : pk.room_a;
  setText("pk-us", roomNames.get(mine) || mine);
  setText("pk-them", roomNames.get(other) || other);
  setText("pk-score-us", fmt.format(us));
  setText("pk-score-them", fmt.format(them));
  const share = us + them ? (us / (us + them)) * 100 : 50;
  $("pk-a").style.width = `${share}%`;
  $("pk-b").style.width = `${100 - share}%`;
  const tick = () => {
    const now = Date.now() + skewMs;
    const until = pk.state === "running" ? pk.end_ms : pk.punish_end_ms;
    const left = Math.max(0, Math.ceil(((until || now) - now) / 1000));
    setText("pk-timer", `${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")} left`);
    let phase = words.battle;
    if (pk.state === "running" && pk.multiplier > 1 && pk.multiplier_from_ms && now >= pk.multiplier_from_ms) {
      phase = words.multiplier(pk.multiplier);
    }
    if (pk.state === "punish") {
      phase = pk.winner === "draw" ? "Draw" : ((pk.winner === "a") === weA ? words.won : words.lost);
    }
    setText("pk-phase", phase);
  };
  tick();
  return setInterval(tick, 500);
}
