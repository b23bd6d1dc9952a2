// The admin console (staff roles only): dashboard charts from the ledger, search, refunds
// and adjustments with a reason, the reconciliation report, the audit log with its
// verify status, withdrawal review. Charts are plain SVG drawn here (no library).

import { $, api, coins, describeHttp, flash, fmt, h, idemKey, signIn, signOut } from "./ui.js";

const SVG = "http://www.w3.org/2000/svg";
const state = { token: null, me: null, canMoveMoney: false };

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

function conn(stateName, text) {
  $("conn").dataset.state = stateName;
  $("conn").querySelector(".conn-text").textContent = text;
}

async function call(url, opts = {}) {
  try {
    const r = await api(url, { token: state.token, ...opts });
    conn("open", "Online");
    return r;
  } catch (err) {
    if (err.status === undefined || err.status >= 500) conn("reconnecting", "Server unreachable");
    if (err.status === 401) signOut();
    throw err;
  }
}

// --- charts ---------------------------------------------------------------------------------
function barChart(svg, points, { label = (p) => p.label, value = (p) => p.value, alt = false, line = false } = {}) {
  const W = 560, H = 200, L = 48, B = 24, T = 10;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  // A top a multiple of 4, so the 5 grid labels are whole, distinct numbers.
  const max = Math.max(4, Math.ceil(Math.max(0, ...points.map(value)) / 4) * 4);
  const step = (W - L - 8) / Math.max(1, points.length);
  for (let i = 0; i <= 4; i++) {
    const y = T + (H - B - T) * (i / 4);
    svg.append(s("line", { class: "grid-line", x1: L, x2: W - 4, y1: y, y2: y }));
    svg.append(s("text", { x: L - 6, y: y + 4, "text-anchor": "end" }, fmt.format(Math.round(max * (1 - i / 4)))));
  }
  const every = Math.ceil(points.length / 8);
  let path = "";
  points.forEach((p, i) => {
    const v = value(p);
    const hgt = ((H - B - T) * v) / max;
    const x = L + i * step;
    if (line) {
      path += `${i ? "L" : "M"}${x + step / 2},${H - B - hgt}`;
      svg.append(s("circle", { cx: x + step / 2, cy: H - B - hgt, r: 2.5, class: "bar", "data-value": v }));
    } else {
      const r = s("rect", { class: `bar${alt ? " alt" : ""}`, x: x + 2, y: H - B - hgt, width: Math.max(1, step - 4), height: Math.max(0, hgt), "data-value": v });
      r.append(s("title", {}, `${label(p)}: ${fmt.format(v)}`));
      svg.append(r);
    }
    if (i % every === 0) svg.append(s("text", { x: x + step / 2, y: H - 6, "text-anchor": "middle" }, label(p)));
  });
  if (line) svg.prepend(s("path", { d: path, class: "line" }));
  svg.dataset.points = String(points.length);
  svg.dataset.total = String(points.reduce((a, p) => a + value(p), 0));
}

function hotChart(svg, hot) {
  const W = 560, row = 26, L = 110;
  const H = Math.max(40, hot.length * row + 10);
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const max = Math.max(1, ...hot.map((g) => g.coins));
  hot.forEach((g, i) => {
    const y = 6 + i * row;
    svg.append(s("text", { x: L - 8, y: y + 15, "text-anchor": "end" }, g.name));
    const w = ((W - L - 110) * g.coins) / max;
    svg.append(s("rect", { class: "bar alt", x: L, y, width: Math.max(1, w), height: row - 8, "data-value": g.coins }));
    svg.append(s("text", { x: L + w + 6, y: y + 15 }, `${fmt.format(g.coins)} (${fmt.format(g.gifts)}×)`));
  });
  if (!hot.length) svg.append(s("text", { x: 10, y: 24 }, "No gifts in this range."));
  svg.dataset.points = String(hot.length);
}

async function loadDashboard() {
  const [bucket, n] = $("bucket").value.split(":");
  let d;
  try {
    d = await call(`/api/admin/dashboard?bucket=${bucket}&n=${n}`);
  } catch (err) {
    flash($("notice"), `Dashboard: ${describeHttp(err)}`, "error");
    return;
  }
  const t = d.totals;
  const yuan = (c) => `¥${fmt.format(Math.round((c / d.coins_per_yuan) * 100) / 100)}`;
  const kpis = [["GMV", `${fmt.format(t.gmv)} coins`, yuan(t.gmv), "kpi-gmv"], ["Platform revenue", `${fmt.format(t.revenue)} coins`, yuan(t.revenue), "kpi-revenue"],
    ["Gifts sent", fmt.format(t.gifts), `${fmt.format(t.sends)} sends`, "kpi-gifts"], ["Active creators", fmt.format(t.creators), `${fmt.format(t.senders)} paying viewers`, "kpi-creators"]];
  $("kpis").replaceChildren(...kpis.map(([k, v, sub, id]) => h("div", { class: "kpi", id }, h("span", { class: "label" }, k), h("strong", {}, v), h("span", { class: "muted" }, sub))));
  const label = (p) => {
    const dt = new Date(p.start);
    return bucket === "hour" ? `${String(dt.getHours()).padStart(2, "0")}h` : `${dt.getMonth() + 1}/${dt.getDate()}`;
  };
  barChart($("chart-gmv"), d.series, { label, value: (p) => p.gmv });
  barChart($("chart-revenue"), d.series, { label, value: (p) => p.revenue, alt: true });
  barChart($("chart-gifts"), d.series, { label, value: (p) => p.gifts, line: true });
  barChart($("chart-creators"), d.series, { label, value: (p) => p.creators, alt: true });
  hotChart($("chart-hot"), d.hot_gifts);
  $("dash-note").textContent = `${d.timezone}; from the Postgres ledger (gifts appear once flushed).`;
  document.body.dataset.dashboard = "ready";
}

// --- tables ----------------------------------------------------------------------------------
function table(el, cols, rows, empty = "Nothing found.") {
  el.replaceChildren(h("thead", {}, h("tr", {}, cols.map((c) => h("th", { class: c.num ? "num" : "", scope: "col" }, c.title)))));
  const body = h("tbody");
  for (const r of rows) body.append(h("tr", {}, cols.map((c) => h("td", { class: c.num ? "num" : "" }, c.get(r)))));
  if (!rows.length) body.append(h("tr", {}, h("td", { colspan: cols.length, class: "muted" }, empty)));
  el.append(body);
}

const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");

function formHandler(id, fn) {
  $(id).addEventListener("submit", async (e) => {
    e.preventDefault();
    const form = e.currentTarget;
    const status = form.querySelector(".status");
    try {
      await fn(new FormData(form), form, status);
    } catch (err) {
      if (status) flash(status, describeHttp(err), "error");
      else flash($("notice"), describeHttp(err), "error");
    }
  });
}

function setupSearch() {
  formHandler("users-form", async (fd) => {
    const r = await call(`/api/admin/users?q=${encodeURIComponent(fd.get("q") || "")}`);
    table($("users-table"), [
      { title: "id", get: (u) => u.id, num: true }, { title: "username", get: (u) => u.username }, { title: "name", get: (u) => u.name },
      { title: "role", get: (u) => u.role }, { title: "balance", get: (u) => fmt.format(u.balance), num: true },
    ], r.users);
  });
  formHandler("orders-form", async (fd) => {
    const q = new URLSearchParams();
    if (fd.get("user_id")) q.set("user_id", fd.get("user_id"));
    if (fd.get("status")) q.set("status", fd.get("status"));
    const r = await call(`/api/admin/orders?${q}`);
    table($("orders-table"), [
      { title: "order", get: (o) => o.id }, { title: "user", get: (o) => o.user_id, num: true }, { title: "channel", get: (o) => o.channel },
      { title: "¥", get: (o) => o.amount_yuan, num: true }, { title: "coins", get: (o) => fmt.format(o.coins + o.bonus_coins), num: true },
      { title: "status", get: (o) => o.status }, { title: "refunded fen", get: (o) => fmt.format(o.refunded_fen), num: true },
      { title: "created", get: (o) => when(o.created_at) },
      { title: "", get: (o) => (o.status === "SUCCESS" || o.status === "REFUNDED" ? h("button", { type: "button", onclick: () => prefillRefund(o.id) }, "Refund…") : "") },
    ], r.orders);
  });
  formHandler("tx-form", async (fd) => {
    const q = new URLSearchParams();
    for (const k of ["user", "room", "gift"]) if (fd.get(k)) q.set(k, String(fd.get(k)).trim());
    const r = await call(`/api/admin/transactions?${q}`);
    table($("tx-table"), [
      { title: "time", get: (t) => when(t.created_at) }, { title: "sender", get: (t) => `${t.sender.name} (#${t.sender.id})` },
      { title: "streamer", get: (t) => `${t.streamer.name} (#${t.streamer.id})` }, { title: "room", get: (t) => t.room },
      { title: "gift", get: (t) => `${t.gift} ×${t.count}` }, { title: "coins", get: (t) => fmt.format(t.amount_coins), num: true },
      { title: "event", get: (t) => t.event_id },
    ], r.items);
  });
}

function prefillRefund(orderId) {
  const f = $("refund-form");
  f.elements.order_id.value = orderId;
  f.elements.reason.focus();
}

function setupMoney() {
  // Each submit gets its own idempotency key, kept while the form is unchanged, so a
  // double submit or a retry after a network error is one refund/adjustment.
  for (const id of ["refund-form", "adjust-form"]) $(id).addEventListener("input", (e) => { e.currentTarget.dataset.key = ""; });
  formHandler("refund-form", async (fd, form, status) => {
    if (!confirm(`Refund order ${fd.get("order_id")}?`)) return;
    form.dataset.key = form.dataset.key || idemKey("rf");
    const body = { order_id: String(fd.get("order_id")).trim(), reason: String(fd.get("reason")) };
    const fen = String(fd.get("amount_fen") || "").trim();
    if (fen) body.amount_fen = Number(fen);
    const r = await call("/api/admin/refunds", { method: "POST", body, headers: { "idempotency-key": form.dataset.key } });
    flash(status, `Refund ${r.refund.id}: ${r.refund.status}.`, "ok");
    loadAudit();
  });
  formHandler("adjust-form", async (fd, form, status) => {
    const amount = Number(fd.get("amount"));
    if (!Number.isInteger(amount) || amount === 0) {
      flash(status, "Coins must be a non-zero whole number.", "error");
      return;
    }
    if (!confirm(`${amount > 0 ? "Credit" : "Debit"} ${coins(Math.abs(amount))} to user ${fd.get("user_id")}?`)) return;
    form.dataset.key = form.dataset.key || idemKey("adj");
    const r = await call("/api/admin/adjustments", {
      method: "POST", headers: { "idempotency-key": form.dataset.key },
      body: { user_id: Number(fd.get("user_id")), amount, reason: String(fd.get("reason")) },
    });
    flash(status, `Adjustment ${r.adjustment.id}: ${r.adjustment.status}.`, "ok");
    loadAudit();
  });
}

function setupRecon() {
  const f = $("recon-form");
  f.elements.date.value = new Date().toISOString().slice(0, 10);
  formHandler("recon-form", async (fd) => {
    const out = $("recon-out");
    out.replaceChildren(h("p", { class: "muted" }, "Running…"));
    const r = await call(`/api/admin/reconcile?date=${encodeURIComponent(fd.get("date"))}&channel=${encodeURIComponent(fd.get("channel"))}`);
    out.replaceChildren(
      h("p", {}, h("span", { class: `badge ${r.ok ? "ok" : "bad"}`, id: "recon-badge" }, r.ok ? "No differences" : `${r.differences.length} differences`),
        ` ${r.date} · ${r.channel} · cut ${r.cut_position}`),
      h("p", { class: "muted" }, Object.entries(r.counts).map(([k, v]) => `${k.replace(/_/g, " ")}: ${v}`).join(" · ")));
    if (r.differences.length) {
      const t = h("table", { "aria-label": "Differences" });
      table(t, Object.keys(r.differences[0]).map((k) => ({ title: k, get: (d) => (typeof d[k] === "object" ? JSON.stringify(d[k]) : d[k]) })), r.differences);
      out.append(h("div", { class: "table-wrap" }, t));
    }
  });
}

async function loadAudit() {
  try {
    const [v, log] = await Promise.all([call("/api/admin/audit/verify"), call("/api/admin/audit")]);
    const b = $("audit-verify");
    b.className = `badge ${v.ok ? "ok" : "bad"}`;
    b.textContent = v.ok ? `Chain verified (${v.records} records)` : `BROKEN: ${v.problems.length} problem(s)`;
    b.title = v.ok ? `head ${v.head_hash || "-"}` : v.problems.map((p) => `#${p.seq} ${p.kind}: ${p.detail}`).join("\n");
    table($("audit-table"), [
      { title: "#", get: (r) => r.seq, num: true }, { title: "at", get: (r) => when(r.at) }, { title: "actor", get: (r) => r.actor },
      { title: "action", get: (r) => r.action }, { title: "target", get: (r) => r.target }, { title: "reason", get: (r) => r.reason },
    ], [...log.records].reverse().slice(0, 50), "No audit records yet.");
  } catch (err) {
    flash($("notice"), `Audit log: ${describeHttp(err)}`, "error");
  }
}

// Withdrawals (issue 5): GET /api/admin/withdrawals and POST .../{id}/review {decision, reason}.
// When the server has no such endpoint yet (404), the section says so.
async function loadWithdrawals() {
  const status = $("wd-status").value;
  let r;
  try {
    r = await call(`/api/admin/withdrawals${status ? `?status=${status}` : ""}`);
  } catch (err) {
    $("wd-note").textContent = err.status === 404
      ? "Withdrawal review is not available on this server yet (no /api/admin/withdrawals endpoint)."
      : `Could not load withdrawals: ${describeHttp(err)}`;
    table($("wd-table"), [], []);
    return;
  }
  $("wd-note").textContent = state.canMoveMoney ? "" : "Your role can see withdrawals but not review them.";
  table($("wd-table"), [
    { title: "id", get: (w) => w.id }, { title: "creator", get: (w) => w.creator_id, num: true },
    { title: "coins", get: (w) => fmt.format(w.amount_coins), num: true }, { title: "¥", get: (w) => (w.amount_fen / 100).toFixed(2), num: true },
    { title: "method", get: (w) => (w.method ? `${w.method.kind} ${w.method.account}` : "") }, { title: "status", get: (w) => w.status },
    { title: "requested", get: (w) => when(w.created_at) }, { title: "reason", get: (w) => w.reason || "" },
    { title: "", get: (w) => (w.status === "REQUESTED" && state.canMoveMoney ? reviewButtons(w) : "") },
  ], r.withdrawals || [], "No withdrawals.");
}

function reviewButtons(w) {
  const review = async (decision) => {
    const reason = prompt(`${decision === "approve" ? "Approve" : "Reject"} withdrawal ${w.id}: reason?`);
    if (!reason || !reason.trim()) return;
    try {
      await call(`/api/admin/withdrawals/${encodeURIComponent(w.id)}/review`, { method: "POST", body: { decision, reason } });
      loadWithdrawals();
      loadAudit();
    } catch (err) {
      $("wd-note").textContent = `Review failed: ${describeHttp(err)}`;
    }
  };
  return h("span", { class: "row" }, h("button", { type: "button", class: "primary", onclick: () => review("approve") }, "Approve"),
    h("button", { type: "button", class: "danger", onclick: () => review("reject") }, "Reject"));
}

// --- boot --------------------------------------------------------------------------------------
async function boot() {
  $("signout").addEventListener("click", signOut);
  const session = await signIn({ onError: (t) => flash($("notice"), t, "error") });
  state.token = session.token;
  let me;
  try {
    me = await call("/api/admin/whoami");
  } catch (err) {
    conn(err.status === 403 ? "closed" : "reconnecting", err.status === 403 ? "No access" : "Server unreachable");
    $("who").textContent = `${session.user.name} (${session.user.role})`;
    flash($("forbidden"), err.status === 403
      ? `The admin console is for staff. ${session.user.name} is a ${session.user.role} and cannot open it.`
      : `Could not open the console: ${describeHttp(err)}`, "error");
    return;
  }
  state.me = me.user;
  state.canMoveMoney = me.can_move_money;
  $("who").textContent = `${me.user.name} · ${me.user.role}`;
  for (const f of ["refund-form", "adjust-form"]) {
    for (const el of $(f).elements) el.disabled = !state.canMoveMoney;
  }
  if (!state.canMoveMoney) flash($("notice"), "Read-only: your role cannot refund, adjust or review withdrawals.", "warn");
  $("app").hidden = false;
  $("bucket").addEventListener("change", loadDashboard);
  $("dash-refresh").addEventListener("click", loadDashboard);
  $("audit-refresh").addEventListener("click", loadAudit);
  $("wd-refresh").addEventListener("click", loadWithdrawals);
  $("wd-status").addEventListener("change", loadWithdrawals);
  setupSearch();
  setupMoney();
  setupRecon();
  await loadDashboard();
  loadAudit();
  loadWithdrawals();
}

boot();
