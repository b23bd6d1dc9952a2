"""Read-only admin endpoints for the admin console (static/admin/): the dashboard's
series, gift transaction search, user lookup, the reconciliation report.

Every route is role-gated with `require_role`. The roles allowed to read are in
`ADMIN_READ_ROLES`; when finance/ops/support roles land in `server.auth.Role`,
add them there (or per endpoint below). Money-moving endpoints (refunds,
adjustments) live in `billing/api.py`; this module never writes.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from billing.api import MONEY_ROLES, READ_ROLES
from server.api import ApiError, ctx_of, principal_of, require_role
from server.auth import Principal, Role

# Who may read the admin console's data: the staff roles that read money data
# (billing/api.py READ_ROLES: admin, finance, ops, support). Change it there, or give
# an endpoint its own tuple here. `whoami` reports the caller's role to the page, which
# hides the actions the role may not take (the server refuses them anyway).
ADMIN_READ_ROLES: tuple[Role, ...] = READ_ROLES
MONEY_ACTION_ROLES: tuple[Role, ...] = MONEY_ROLES  # refunds, adjustments, withdrawal review

BUCKETS = {"hour": (timedelta(hours=1), 72), "day": (timedelta(days=1), 92)}  # span, max n
HOT_GIFTS_MAX = 10  # the dashboard's hot-gifts list
SEARCH_LIMIT_MAX = 200  # rows one search returns at most


def _reader(request: Request) -> Principal:
    p = principal_of(request)
    require_role(p, *ADMIN_READ_ROLES)
    return p


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise ApiError(400, "bad_field", f"{name} must be an integer") from None
    if not lo <= v <= hi:
        raise ApiError(400, "bad_field", f"{name} must be {lo}..{hi}")
    return v


async def whoami(request: Request) -> Response:
    """The caller and whether they may open the admin console (403 otherwise)."""
    p = _reader(request)
    return JSONResponse({"user": {"id": p.user_id, "name": p.name, "role": p.role.value},
                         "can_move_money": p.role in MONEY_ACTION_ROLES,
                         "roles": [r.value for r in ADMIN_READ_ROLES]})


async def dashboard(request: Request) -> Response:
    """GET /api/admin/dashboard?bucket=hour|day&n=N — the last N buckets (local time
    zone) of GMV (coins gifted), platform revenue (coins booked to platform_revenue),
    gift count, active creators, plus totals and the hot gifts of the whole range.
    Reads the Postgres ledger: gifts not yet flushed are not counted."""
    _reader(request)
    ctx = ctx_of(request)
    bucket = request.query_params.get("bucket", "day")
    if bucket not in BUCKETS:
        raise ApiError(400, "bad_field", "bucket must be hour or day")
    step, n_max = BUCKETS[bucket]
    n = _int_param(request, "n", 14 if bucket == "day" else 24, 1, n_max)
    tz = ZoneInfo(ctx.settings.timezone)
    now = datetime.now(tz)
    last = (now.replace(minute=0, second=0, microsecond=0) if bucket == "hour"
            else now.replace(hour=0, minute=0, second=0, microsecond=0))
    starts = [last - step * i for i in range(n - 1, -1, -1)]
    if bucket == "day":  # local midnights, DST-safe
        starts = [datetime.combine(last.date() - timedelta(days=i), datetime.min.time(), tz)
                  for i in range(n - 1, -1, -1)]
    begin, end = starts[0], starts[-1] + step
    tzname = ctx.settings.timezone
    gifts = await ctx.pool.fetch(
        """SELECT date_trunc($3, created_at AT TIME ZONE $4) AS b,
                  sum(amount_coins)::bigint AS gmv, sum(count)::bigint AS gifts,
                  count(*)::bigint AS sends, count(DISTINCT streamer_id)::bigint AS creators
             FROM gift_events WHERE created_at >= $1 AND created_at < $2 GROUP BY 1""",
        begin, end, bucket, tzname)
    revenue = await ctx.pool.fetch(
        """SELECT date_trunc($3, j.created_at AT TIME ZONE $4) AS b,
                  sum(p.amount)::bigint AS revenue
             FROM journal_entries j JOIN postings p ON p.entry_id = j.id
            WHERE p.account = 'platform_revenue' AND j.created_at >= $1 AND j.created_at < $2
            GROUP BY 1""", begin, end, bucket, tzname)
    by_b: dict[datetime, dict[str, int]] = {}
    for r in gifts:
        by_b.setdefault(r["b"], {}).update(gmv=r["gmv"], gifts=r["gifts"], sends=r["sends"],
                                           creators=r["creators"])
    for r in revenue:
        by_b.setdefault(r["b"], {})["revenue"] = r["revenue"]
    series = []
    for s in starts:
        row = by_b.get(s.replace(tzinfo=None), {})
        series.append({"start": s.isoformat(), "gmv": row.get("gmv", 0),
                       "revenue": row.get("revenue", 0), "gifts": row.get("gifts", 0),
                       "sends": row.get("sends", 0), "creators": row.get("creators", 0)})
    totals = await ctx.pool.fetchrow(
        """SELECT coalesce(sum(amount_coins), 0)::bigint AS gmv,
                  coalesce(sum(count), 0)::bigint AS gifts, count(*)::bigint AS sends,
                  count(DISTINCT streamer_id)::bigint AS creators,
                  count(DISTINCT sender_id)::bigint AS senders
             FROM gift_events WHERE created_at >= $1 AND created_at < $2""", begin, end)
    total_revenue = sum(r["revenue"] for r in revenue)
    hot = await ctx.pool.fetch(
        """SELECT e.gift_code, coalesce(g.name, e.gift_code) AS name,
                  sum(e.amount_coins)::bigint AS coins, sum(e.count)::bigint AS gifts
             FROM gift_events e LEFT JOIN gifts g ON g.code = e.gift_code
            WHERE e.created_at >= $1 AND e.created_at < $2
            GROUP BY e.gift_code, g.name ORDER BY coins DESC, e.gift_code LIMIT $3""",
        begin, end, HOT_GIFTS_MAX)
    return JSONResponse({
        "bucket": bucket, "timezone": tzname, "from": begin.isoformat(), "to": end.isoformat(),
        "coins_per_yuan": ctx.settings.coins_per_yuan,
        "totals": {**(dict(totals) if totals else {}), "revenue": total_revenue},
        "series": series,
        "hot_gifts": [{"gift": r["gift_code"], "name": r["name"], "coins": r["coins"],
                       "gifts": r["gifts"]} for r in hot],
    })


async def transactions(request: Request) -> Response:
    """GET /api/admin/transactions?user=&room=&gift=&limit= — flushed gift events,
    newest first. `user` is a user id or username and matches sender or streamer."""
    _reader(request)
    ctx = ctx_of(request)
    q = request.query_params
    limit = _int_param(request, "limit", 50, 1, SEARCH_LIMIT_MAX)
    user_id: int | None = None
    if q.get("user"):
        user_id = await _user_id(request, q["user"])
        if user_id is None:
            return JSONResponse({"items": []})
    rows = await ctx.pool.fetch(
        """SELECT e.event_id, e.client_id, e.sender_id, s.display_name AS sender,
                  e.streamer_id, t.display_name AS streamer, e.room_id, e.gift_code, e.count,
                  e.amount_coins, e.created_at, e.flushed_at
             FROM gift_events e
             LEFT JOIN users s ON s.id = e.sender_id LEFT JOIN users t ON t.id = e.streamer_id
            WHERE ($1::bigint IS NULL OR e.sender_id = $1 OR e.streamer_id = $1)
              AND ($2::text IS NULL OR e.room_id = $2) AND ($3::text IS NULL OR e.gift_code = $3)
            ORDER BY e.created_at DESC, e.event_id DESC LIMIT $4""",
        user_id, q.get("room") or None, q.get("gift") or None, limit)
    return JSONResponse({"items": [
        {"event_id": r["event_id"], "client_id": r["client_id"],
         "sender": {"id": r["sender_id"], "name": r["sender"]},
         "streamer": {"id": r["streamer_id"], "name": r["streamer"]},
         "room": r["room_id"], "gift": r["gift_code"], "count": r["count"],
         "amount_coins": r["amount_coins"], "created_at": r["created_at"].isoformat(),
         "flushed_at": r["flushed_at"].isoformat()} for r in rows]})


async def _user_id(request: Request, ref: str) -> int | None:
    ctx = ctx_of(request)
    if ref.isdigit():
        return int(ref)
    v = await ctx.pool.fetchval("SELECT id FROM users WHERE username = $1", ref.lower())
    return int(v) if v is not None else None


async def users(request: Request) -> Response:
    """GET /api/admin/users?q= — users whose username or display name contains q."""
    _reader(request)
    ctx = ctx_of(request)
    q = (request.query_params.get("q") or "").strip()
    rows = await ctx.pool.fetch(
        """SELECT id, username, display_name, role, created_at FROM users
            WHERE $1 = '' OR username ILIKE '%' || $1 || '%' OR display_name ILIKE '%' || $1 || '%'
               OR id::text = $1
            ORDER BY id LIMIT 50""", q)
    from server import keys

    balances = await ctx.redis.mget([keys.balance(r["id"]) for r in rows]) if rows else []
    return JSONResponse({"users": [
        {"id": r["id"], "username": r["username"], "name": r["display_name"], "role": r["role"],
         "balance": int(b or 0), "created_at": r["created_at"].isoformat()}
        for r, b in zip(rows, balances, strict=True)]})


async def reconcile_report(request: Request) -> Response:
    """GET /api/admin/reconcile?date=YYYY-MM-DD&channel=sandbox — runs the same
    read-only reconciliation as `giftd reconcile` (statement from the sandbox channel,
    which keeps its own books; other channels need a statement file, CLI only)."""
    from billing.reconcile import reconcile

    _reader(request)
    ctx = ctx_of(request)
    channel = request.query_params.get("channel", "sandbox")
    raw = request.query_params.get("date")
    try:
        day = date.fromisoformat(raw) if raw else datetime.now(
            ZoneInfo(ctx.settings.timezone)).date()
    except ValueError:
        raise ApiError(400, "bad_field", "date must be YYYY-MM-DD") from None
    sandbox = getattr(request.app.state.billing, "sandbox", None)
    if channel != "sandbox" or sandbox is None:
        raise ApiError(400, "no_statement",
                       "only the sandbox channel's statement is available here; use "
                       "`giftd reconcile --statement FILE` for other channels")
    statement = await sandbox.statement(day)
    report = await reconcile(ctx.pool, ctx.redis, day=day, tz=ctx.settings.timezone,
                             channel=channel, statement=statement)
    return JSONResponse({**report.as_json(), "ran_at": datetime.now(UTC).isoformat()})


def routes() -> list[BaseRoute]:
    return [
        Route("/api/admin/whoami", whoami),
        Route("/api/admin/dashboard", dashboard),
        Route("/api/admin/transactions", transactions),
        Route("/api/admin/users", users),
        Route("/api/admin/reconcile", reconcile_report),
    ]


__all__ = ["ADMIN_READ_ROLES", "routes"]
