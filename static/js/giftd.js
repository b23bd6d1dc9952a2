// giftd.js — a small client for giftd's WebSocket protocol (/ws; JSON or msgpack frames).
// Used by every page: the demo page, the viewer room, the streamer console, the overlay.
//
//   import { GiftdClient } from "/static/js/giftd.js";
//   const client = new GiftdClient({ token: () => myToken });   // format: "json" (default) | "msgpack"
//   client.on("joined", (snap) => ...);        // room snapshot: balance, ranking, viewers, seq
//   client.on("gift", (ev) => ...);            // one gift event from a tick, in seq order
//   client.on("rank", ({ board }) => ...);     // the room's top-N after a tick's diff
//   client.connect();
//   client.join("aurora");
//   const answer = await client.sendGift("rose", 10); // {type:"ack", outcome, balance} | {type:"error", code}
//
// What it does for you:
// - connects with a token (a string, or a function returning one / a promise of one,
//   called before every connect so an expired token can be refreshed);
// - speaks `giftd.json` (text frames, the default) or `giftd.msgpack` (binary frames,
//   option format: "msgpack"; the decoder is the vendored @msgpack/msgpack ES module,
//   loaded only then). Decoded frames are the same objects either way;
// - re-connects with capped, jittered back-off (or after the server's `bye` hint) and
//   re-joins the room it was in WITH `since` = the last seq it saw, so the server
//   replays the missed room events (`joined.replay`, emitted as ordinary events with
//   `replayed: true`) or answers `resync` when they are gone (a fresh snapshot);
// - overlay tokens work like user tokens (read-only); a revoked one (close 4003) stops
//   the client for good (state "revoked");
// - fan-board subscriptions (subscribe) are kept and re-sent after a reconnect;
// - keeps the room's PK battle (joined.pk, pk_* events, gift.pk) as `client.pk`;
// - heartbeats (ping/pong) and drops a silent, half-open socket;
// - keeps the room state: balance, top-N board (rank diffs applied like
//   rooms/ranking.py apply_diff), viewer count, room_total, last seq;
// - sends gifts with generated ids and resolves each send with its answer. A send
//   that got no answer (socket dropped) is re-sent with the SAME id after re-joining,
//   so it is charged at most once: the server replays the original result as
//   `duplicate`, which the client reports as the ack it was waiting for.
//
// Events (client.on(name, fn) returns an unsubscribe function):
//   state     {state: "idle"|"connecting"|"open"|"reconnecting"|"closed"|"revoked", attempt, delay_ms, code, reason}
//   joined    the server's `joined` snapshot
//   resync    {room, missed, from_seq, to_seq, reset}  events missed and not replayable
//             (reset: the server answered `resync`: start over from the snapshot)
//   replay    {room, events, from_seq, to_seq}  after a resumed join, before the events
//   gift, combo_end, session_start, pk_invite, pk_start, pk_score, pk_result, pk_over,
//             pk_declined, pk_expired   room events by type (from ticks and replays)
//   pk        {room, pk}  the battle after any change (pk null: none)
//   board     {key, board, streamer, span, period, rank, snapshot}  a fan board
//   bye       the server's `bye` (it is going away; the client reconnects by itself)
//   tick      the raw tick frame (after its events passed the seq filter)
//   gift      one gift event {seq, sender:{id,name}, gift, gift_name, count, value_coins, tier, ...}
//   rank      {room, board, diff}
//   viewers   {room, viewers}
//   balance   {balance}
//   ack       an `ack` frame (plus `retried: true` when it answers a re-sent id)
//   error     an `error` frame, or a client-side one (code "timeout", "not_connected")
//   earnings  the streamer's earnings frame {room_total, delta_coins, gifts, seq}
//   message   every decoded frame, before the typed event

const SUBPROTOCOLS = { json: "giftd.json", msgpack: "giftd.msgpack" }; // docs/protocol.md
const MSGPACK_MODULE = "../vendor/msgpack/index.mjs"; // @msgpack/msgpack (ISC), see its README.md
const CLOSE_NORMAL = 1000;
const RETRYABLE_SEND_CODES = new Set(["unavailable", "overloaded"]);
const SEND_RETRIES_MAX = 3; // server said "retry": at most this many automatic re-sends
const CLOSE_REVOKED = 4003; // an overlay token was revoked: never reconnect with it

/** rooms/ranking.py apply_diff, in JS: the board after a tick's rank diff. */
export function applyDiff(board, diff) {
  const byRank = new Map();
  for (const e of board) byRank.set(e.rank, e);
  for (const d of diff || []) {
    if (d.id === null || d.id === undefined) byRank.delete(d.rank);
    else byRank.set(d.rank, d);
  }
  return [...byRank.keys()].sort((a, b) => a - b).map((r) => byRank.get(r));
}

/** A gift id the server accepts: 1-64 of A-Z a-z 0-9 _ . : - , unique per send. */
export function newGiftId() {
  const bytes = new Uint8Array(10);
  crypto.getRandomValues(bytes); // works on plain http too, unlike randomUUID
  let hex = "";
  for (const b of bytes) hex += b.toString(16).padStart(2, "0");
  return `g-${Date.now().toString(36)}-${hex}`;
}

let msgpackLoaded = null; // Promise<{encode, decode}> once a msgpack client asked for it

/** The msgpack codec (vendored @msgpack/msgpack), imported on first use. */
function loadMsgpack() {
  if (!msgpackLoaded) {
    msgpackLoaded = import(MSGPACK_MODULE).then((m) => {
      // ignoreUndefined: like JSON.stringify, leave out fields that are undefined.
      const encoder = new m.Encoder({ ignoreUndefined: true });
      const decoder = new m.Decoder();
      return { encode: (obj) => encoder.encode(obj), decode: (bytes) => decoder.decode(bytes) };
    });
    msgpackLoaded.catch(() => { msgpackLoaded = null; }); // a failed load is retried next connect
  }
  return msgpackLoaded;
}

function defaultUrl() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  return `${proto}//${location.host}/ws`;
}

/** Compare two Redis stream ids ("ms-n"); -1, 0, 1. */
function compareEventIds(a, b) {
  const [am, an] = String(a).split("-").map(Number);
  const [bm, bn] = String(b).split("-").map(Number);
  if (am !== bm) return am < bm ? -1 : 1;
  if (an !== bn) return an < bn ? -1 : 1;
  return 0;
}

export class GiftdClient {
  /**
   * @param {object} opts
   * @param {string|function} opts.token  a token, or ({failures}) => token | Promise<token>
   * @param {string} [opts.url]           ws(s)://host/ws (default: this page's host)
   * @param {"json"|"msgpack"} [opts.format="json"]  the wire format: giftd.json text frames
   *                                      or giftd.msgpack binary frames
   * @param {number} [opts.reconnectBaseMs=500]  first back-off
   * @param {number} [opts.reconnectMaxMs=10000] back-off cap
   * @param {number} [opts.heartbeatMs=15000]    ping period; no frame for 2 periods closes the socket
   * @param {number} [opts.sendTimeoutMs=30000]  a send with no answer by then resolves as error "timeout"
   */
  constructor(opts = {}) {
    this.opts = {
      url: defaultUrl(),
      reconnectBaseMs: 500,
      reconnectMaxMs: 10000,
      heartbeatMs: 15000,
      sendTimeoutMs: 30000,
      format: "json",
      ...opts,
    };
    if (!(this.opts.format in SUBPROTOCOLS)) throw new Error(`giftd: unknown format '${this.opts.format}'`);
    this.format = this.opts.format;
    this._codec = null; // {encode, decode} for msgpack, once loaded
    this.ws = null;
    this.state = "idle";
    this.room = null; // the room we want to be in (re-joined after a reconnect)
    this.joined = false; // the server confirmed `room` on this socket
    this.snapshot = null; // last `joined`
    this.you = null;
    this.balance = null;
    this.board = [];
    this.viewers = 0;
    this.roomTotal = 0;
    this.seq = 0; // last room seq seen (snapshot or event)
    this.epoch = 0;
    this.pk = null; // the room's PK battle (GET /api/pk/{id} shape), or null
    this.boards = new Map(); // "fans:<streamer>:<span>" -> {board, streamer, span, period, rank}
    this._byeDelayMs = null; // the server's reconnect_after_ms from `bye`
    this._handlers = new Map();
    this._pending = new Map(); // gift id -> {msg, resolve, timer, sent, retries, resent}
    this._attempt = 0; // consecutive failed connects
    this._failures = 0; // connects that never opened, since the last open
    this._reconnectTimer = null;
    this._heartbeatTimer = null;
    this._lastFrameAt = 0;
    this._nonce = 0;
    this._lastOkEventId = null;
    this._wantOpen = false;
    this._onOnline = () => {
      if (this._wantOpen && this._reconnectTimer) this._reconnectNow(); // waiting: try now
    };
  }

  // --- events -------------------------------------------------------------
  on(name, fn) {
    if (!this._handlers.has(name)) this._handlers.set(name, new Set());
    this._handlers.get(name).add(fn);
    return () => this._handlers.get(name)?.delete(fn);
  }

  _emit(name, payload) {
    for (const fn of this._handlers.get(name) || []) {
      try {
        fn(payload);
      } catch (err) {
        console.error(`giftd: '${name}' handler failed`, err);
      }
    }
  }

  _setState(state, extra = {}) {
    this.state = state;
    this._emit("state", { state, attempt: this._attempt, ...extra });
  }

  // --- connection ---------------------------------------------------------
  connect() {
    this._wantOpen = true;
    if (typeof window !== "undefined") window.addEventListener("online", this._onOnline);
    if (this.ws || this._reconnectTimer) return;
    this._open();
  }

  /** Close for good (no reconnect). Unanswered sends resolve as error "closed". */
  close() {
    this._wantOpen = false;
    if (typeof window !== "undefined") window.removeEventListener("online", this._onOnline);
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    this._stopHeartbeat();
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close(CLOSE_NORMAL, "bye");
    }
    for (const id of [...this._pending.keys()]) {
      this._settle(id, { type: "error", code: "closed", message: "the client was closed", id });
    }
    this._setState("closed");
  }

  async _open() {
    this._setState(this._attempt ? "reconnecting" : "connecting", { delay_ms: 0 });
    let token;
    try {
      const t = this.opts.token;
      token = typeof t === "function" ? await t({ failures: this._failures }) : t;
    } catch (err) {
      this._scheduleReconnect(0, String(err && err.message ? err.message : err));
      return;
    }
    if (this.format === "msgpack" && !this._codec) {
      try {
        this._codec = await loadMsgpack();
      } catch (err) {
        console.error("giftd: could not load the msgpack codec", err);
        this._scheduleReconnect(0, "msgpack codec unavailable");
        return;
      }
    }
    if (!this._wantOpen) return;
    const url = `${this.opts.url}?token=${encodeURIComponent(token || "")}`;
    let ws;
    try {
      ws = new WebSocket(url, [SUBPROTOCOLS[this.format]]);
    } catch (err) {
      this._scheduleReconnect(0, String(err));
      return;
    }
    ws.binaryType = "arraybuffer"; // msgpack frames arrive as ArrayBuffers
    this.ws = ws;
    this.joined = false;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this._attempt = 0;
      this._failures = 0;
      this._lastFrameAt = Date.now();
      this._setState("open");
      this._startHeartbeat();
      if (this.room) this._sendJoin();
      for (const b of this.boards.values()) {
        this._send({ type: "subscribe", board: b.board, streamer: b.streamer, span: b.span });
      }
    };
    ws.onmessage = (e) => {
      this._lastFrameAt = Date.now();
      let msg;
      try {
        msg = this._decode(e.data);
      } catch {
        console.warn("giftd: undecodable frame");
        return;
      }
      if (msg && typeof msg === "object") this._dispatch(msg);
    };
    ws.onclose = (e) => {
      if (this.ws !== ws) return; // an old socket
      this.ws = null;
      this.joined = false;
      this._stopHeartbeat();
      if (!opened) this._failures += 1;
      if (e.code === CLOSE_REVOKED) {
        this._wantOpen = false; // the streamer revoked this overlay token
        this._setState("revoked", { code: e.code, reason: e.reason });
        return;
      }
      if (this._wantOpen) this._scheduleReconnect(e.code, e.reason);
      else this._setState("closed", { code: e.code, reason: e.reason });
    };
    ws.onerror = () => {}; // onclose follows and carries what we can know
  }

  _scheduleReconnect(code, reason) {
    this._attempt += 1;
    const base = Math.min(this.opts.reconnectMaxMs,
      this.opts.reconnectBaseMs * 2 ** Math.min(this._attempt - 1, 10));
    let delay = Math.round(base / 2 + Math.random() * (base / 2)); // jitter: [base/2, base]
    if (this._byeDelayMs !== null) { // the server said when to come back
      delay = Math.round(this._byeDelayMs * (1 + Math.random() * 0.5));
      this._byeDelayMs = null;
    }
    this._setState("reconnecting", { delay_ms: delay, code, reason });
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = setTimeout(() => {
      this._reconnectTimer = null;
      if (this._wantOpen) this._open();
    }, delay);
  }

  _reconnectNow() {
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    this._open();
  }

  _startHeartbeat() {
    this._stopHeartbeat();
    const period = this.opts.heartbeatMs;
    this._heartbeatTimer = setInterval(() => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
      if (Date.now() - this._lastFrameAt > 2 * period) {
        this.ws.close(4000, "heartbeat timeout"); // onclose reconnects
        return;
      }
      this._send({ type: "ping", nonce: ++this._nonce });
    }, period);
  }

  _stopHeartbeat() {
    clearInterval(this._heartbeatTimer);
    this._heartbeatTimer = null;
  }

  _send(msg) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(this._codec ? this._codec.encode(msg) : JSON.stringify(msg));
    return true;
  }

  /** One frame's payload to an object: text frames are JSON, binary frames msgpack. */
  _decode(data) {
    if (typeof data === "string") return JSON.parse(data);
    if (!this._codec) throw new Error("a binary frame on a JSON connection");
    return this._codec.decode(new Uint8Array(data));
  }

  // --- rooms and gifts ----------------------------------------------------
  /** Join a room (and re-join it after every reconnect, resuming from the last seq). */
  join(room) {
    if (room !== this.room) {
      this.room = room;
      this.snapshot = null;
      this.board = [];
      this.seq = 0;
      this.pk = null;
    }
    this.joined = false;
    this._sendJoin();
  }

  _sendJoin() {
    const msg = { type: "join", room: this.room };
    if (this.snapshot !== null && this.snapshot.room === this.room) msg.since = this.seq; // resume
    this._send(msg);
  }

  /**
   * Subscribe to a streamer's fan board (span "day" | "week" | "month"). `board` events
   * carry the whole board (diffs applied). Re-subscribed after every reconnect.
   */
  subscribe(streamer, span = "day", board = "fans") {
    const key = `${board}:${streamer}:${span}`;
    if (!this.boards.has(key)) this.boards.set(key, { key, board, streamer, span, period: null, rank: [] });
    this._send({ type: "subscribe", board, streamer, span });
    return key;
  }

  /**
   * Send `count` × `gift` to the joined room. Resolves with the server's answer:
   * {type:"ack", id, outcome, balance, event_id?, seq?} or {type:"error", id, code, message}.
   * Never rejects. Queued while disconnected; re-sent with the same id after a reconnect.
   */
  sendGift(gift, count = 1, { id = newGiftId(), room = this.room, amount } = {}) {
    return new Promise((resolve) => {
      if (!room) {
        resolve({ type: "error", id, code: "not_in_room", message: "join a room first" });
        return;
      }
      const msg = { type: "gift", id, room, gift, count };
      if (amount !== undefined) msg.amount = amount; // tip_custom: the coins to tip
      const p = { msg, resolve, sent: false, retries: 0, resent: false, timer: null };
      p.timer = setTimeout(() => {
        this._settle(id, {
          type: "error", id, code: "timeout",
          message: "no answer from the server; if the gift went through it shows in the feed",
        });
      }, this.opts.sendTimeoutMs);
      this._pending.set(id, p);
      if (this.joined && this.room === room) {
        p.sent = this._send(msg);
      }
    });
  }

  _flushPending() {
    for (const p of this._pending.values()) {
      if (p.msg.room !== this.room) continue;
      if (p.sent) p.resent = true; // sent on an earlier socket: the answer may be lost
      p.sent = this._send(p.msg);
    }
  }

  _settle(id, answer) {
    const p = this._pending.get(id);
    if (!p) return false;
    this._pending.delete(id);
    clearTimeout(p.timer);
    p.resolve(answer);
    return true;
  }

  _applyAckBalance(ack) {
    // Acks of concurrent sends may arrive out of order. An ok ack's event id orders
    // it; any other ack carries the balance "now", trusted only when nothing is in flight.
    if (typeof ack.balance !== "number") return;
    if (ack.outcome === "ok" && ack.event_id) {
      if (this._lastOkEventId && compareEventIds(ack.event_id, this._lastOkEventId) < 0) return;
      this._lastOkEventId = ack.event_id;
    } else if (this._pending.size > 0) {
      return;
    }
    if (ack.balance !== this.balance) {
      this.balance = ack.balance;
      this._emit("balance", { balance: this.balance });
    }
  }

  // --- inbound ------------------------------------------------------------
  _dispatch(msg) {
    this._emit("message", msg);
    switch (msg.type) {
      case "joined":
      case "resync":
        return this._onJoined(msg);
      case "board":
        return this._onBoard(msg);
      case "bye":
        this._byeDelayMs = typeof msg.reconnect_after_ms === "number" ? msg.reconnect_after_ms : null;
        return this._emit("bye", msg);
      case "tick":
        return this._onTick(msg);
      case "ack":
        return this._onAck(msg);
      case "error":
        return this._onError(msg);
      case "earnings":
        if (msg.room !== this.room || !this.joined) return;
        this.roomTotal = msg.room_total;
        return this._emit("earnings", msg);
      case "pong":
        return this._emit("pong", msg);
      default:
        return this._emit(msg.type, msg);
    }
  }

  _onJoined(msg) {
    if (msg.room !== this.room) return; // an answer to a join we have since replaced
    const prevSeq = this.seq;
    const rejoin = this.snapshot !== null;
    const replay = Array.isArray(msg.replay) ? msg.replay : null;
    this.joined = true;
    this.snapshot = msg;
    this.you = msg.you;
    this.board = Array.isArray(msg.ranking) ? msg.ranking : [];
    this.viewers = msg.viewers;
    this.roomTotal = msg.room_total;
    this.epoch = msg.epoch || 0;
    this.pk = msg.pk || null;
    if (typeof msg.balance === "number" && this._pending.size === 0) {
      this.balance = msg.balance;
    }
    this._emit("joined", msg);
    if (replay) {
      // Resumed: the missed events, in seq order, exactly once. The ranking and totals
      // in the snapshot are current already, so these feed the feed/animations only.
      const fresh = replay.filter((ev) => typeof ev.seq === "number" && ev.seq > prevSeq);
      this._emit("replay", { room: msg.room, events: fresh, from_seq: prevSeq + 1, to_seq: msg.seq });
      for (const ev of fresh) {
        this.seq = ev.seq;
        this._emit(ev.type || "gift", { ...ev, replayed: true });
      }
    } else if (rejoin && (msg.type === "resync" || msg.seq > prevSeq)) {
      this._emit("resync", { room: msg.room, missed: Math.max(0, msg.seq - prevSeq),
        from_seq: prevSeq + 1, to_seq: msg.seq, reset: msg.type === "resync" });
    }
    this.seq = msg.seq;
    this._emit("pk", { room: msg.room, pk: this.pk });
    this._emit("balance", { balance: this.balance });
    this._emit("rank", { room: msg.room, board: this.board, diff: null });
    this._emit("viewers", { room: msg.room, viewers: this.viewers });
    this._flushPending();
  }

  _onTick(msg) {
    // A tick before our `joined` answer (or one of a room we just left) is dropped:
    // the snapshot is taken after any such tick, so its events have seq <= joined.seq
    // and its rank diff is already in joined.ranking. After `joined`, events with
    // seq <= the last seen one are repeats and are dropped too.
    if (msg.room !== this.room || !this.joined) return;
    const fresh = [];
    for (const ev of msg.events || []) {
      if (typeof ev.seq !== "number" || ev.seq <= this.seq) continue; // seen already
      if (ev.seq !== this.seq + 1) {
        this._emit("resync", { room: msg.room, missed: ev.seq - this.seq - 1,
          from_seq: this.seq + 1, to_seq: ev.seq - 1 });
      }
      this.seq = ev.seq;
      fresh.push(ev);
    }
    if (typeof msg.seq === "number" && msg.seq > this.seq) this.seq = msg.seq;
    this._emit("tick", { ...msg, events: fresh });
    for (const ev of fresh) {
      this._emit(ev.type || "gift", ev);
      if (this._applyPk(ev)) this._emit("pk", { room: msg.room, pk: this.pk });
      if (ev.type === "session_start") this.epoch = ev.epoch;
    }
    if (Array.isArray(msg.rank) && msg.rank.length) {
      this.board = applyDiff(this.board, msg.rank);
      this._emit("rank", { room: msg.room, board: this.board, diff: msg.rank });
    }
    if (typeof msg.viewers === "number" && msg.viewers !== this.viewers) {
      this.viewers = msg.viewers;
      this._emit("viewers", { room: msg.room, viewers: this.viewers });
    }
  }

  /** Fold a room event into this.pk; true when it changed. */
  _applyPk(ev) {
    const t = ev.type || "gift";
    if (t === "gift") {
      if (!ev.pk || !this.pk || ev.pk.id !== this.pk.id) return false;
      this.pk = { ...this.pk, score_a: ev.pk.score_a, score_b: ev.pk.score_b };
      return true;
    }
    if (!t.startsWith("pk_")) return false;
    const base = this.pk && this.pk.id === ev.pk_id ? this.pk : { id: ev.pk_id, score_a: 0, score_b: 0 };
    const sides = {};
    for (const k of ["room_a", "room_b", "streamer_a", "streamer_b"]) if (k in ev) sides[k] = ev[k];
    switch (t) {
      case "pk_invite":
        this.pk = { ...base, ...sides, state: "invited", expires_ms: ev.expires_ms, invited_ms: ev.ts_ms };
        return true;
      case "pk_start":
        this.pk = { ...base, ...sides, state: "running", start_ms: ev.start_ms, end_ms: ev.end_ms,
          multiplier_from_ms: ev.multiplier_from_ms, multiplier: ev.multiplier };
        return true;
      case "pk_score":
        this.pk = { ...base, score_a: ev.score_a, score_b: ev.score_b };
        return true;
      case "pk_result":
        this.pk = { ...base, ...sides, state: "punish", score_a: ev.score_a, score_b: ev.score_b,
          winner: ev.winner, end_ms: ev.end_ms, punish_end_ms: ev.punish_end_ms };
        return true;
      case "pk_over":
      case "pk_declined":
      case "pk_expired":
        this.pk = null;
        return true;
      default:
        return false;
    }
  }

  _onBoard(msg) {
    const key = `${msg.board}:${msg.streamer}:${msg.span}`;
    const b = this.boards.get(key) || { key, board: msg.board, streamer: msg.streamer, span: msg.span, rank: [] };
    b.period = msg.period;
    b.rank = msg.snapshot ? (msg.rank || []) : applyDiff(b.rank, msg.rank);
    b.snapshot = !!msg.snapshot;
    this.boards.set(key, b);
    this._emit("board", { ...b });
  }

  _onAck(msg) {
    const p = this._pending.get(msg.id);
    const ack = p && p.resent && msg.outcome === "duplicate" ? { ...msg, retried: true } : msg;
    this._settle(msg.id, ack);
    this._applyAckBalance(ack);
    this._emit("ack", ack);
  }

  _onError(msg) {
    const p = msg.id ? this._pending.get(msg.id) : undefined;
    if (p && RETRYABLE_SEND_CODES.has(msg.code) && p.retries < SEND_RETRIES_MAX) {
      p.retries += 1; // the server asked for a retry with the same id
      setTimeout(() => {
        if (this._pending.get(msg.id) === p && this.joined) p.sent = this._send(p.msg);
      }, 300 * 2 ** p.retries);
      return;
    }
    if (p && msg.code === "not_in_room" && this.room === p.msg.room && !this.joined) {
      return; // raced a reconnect: it is re-sent after the re-join
    }
    if (msg.id) this._settle(msg.id, msg);
    else if (this.room && !this.joined && msg.code === "unavailable") {
      setTimeout(() => this.join(this.room), 1000); // the room could not be opened; retry
    } else if (this.room && !this.joined && msg.code === "unknown_room") {
      // The join failed for good: sends waiting for that room will never go out.
      for (const [id, q] of [...this._pending]) {
        if (q.msg.room === this.room) this._settle(id, { ...msg, id });
      }
    }
    this._emit("error", msg);
  }
}
