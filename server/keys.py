"""Every Redis key giftd uses, in one place, with what it holds.

The Lua scripts build the same names from the prefix passed in ARGV; keep the
two in step (tests/integration/test_keys_match_lua.py reads both).

Cluster note: one gift touches the sender's wallet and the room's keys in one
script, so today all keys must live on one primary (or one Cluster slot). The
prefix carries a hash tag (`giftd:{g}:`) so a Cluster deployment at least
routes every key to one slot; sharding rooms apart is future work.
"""

from __future__ import annotations

PREFIX = "giftd:{g}:"

# Write-behind stream of ledger events (gift debits). Read by the flusher's
# consumer group; an entry is XACK+XDEL'd only after Postgres committed it, so
# XLEN is the number of unflushed debits.
LEDGER_STREAM = PREFIX + "ledger"
FLUSHER_GROUP = "flusher"


# Pub/sub channel of process-wide notices, e.g. b"overlay_revoked:<streamer id>".
CONTROL_CHANNEL = PREFIX + "control"


def overlay_version(streamer_id: int) -> str:
    """String: the streamer's current overlay token version; revoking bumps it."""
    return f"{PREFIX}overlay:ver:{streamer_id}"


def balance(user_id: int) -> str:
    """String: the user's spendable coins (integer). Missing means 0."""
    return f"{PREFIX}bal:{user_id}"


def idempotency(user_id: int, client_id: str) -> str:
    """String "fp<TAB>balance<TAB>event id<TAB>seq": the result of an accepted gift id;
    expires after idempotency_ttl_s."""
    return f"{PREFIX}idem:{user_id}:{client_id}"


def credit_marker(op_id: str) -> str:
    """String: set once a credit (recharge, grant) has been applied to a balance."""
    return f"{PREFIX}credit:{op_id}"


def debit_marker(op_id: str) -> str:
    """String: set once a debit (refund, negative adjustment) has left a balance."""
    return f"{PREFIX}debit:{op_id}"


def audit_witness() -> str:
    """Sorted set: audit log heads seen (member = hash, score = seq), the newest 1000.
    A second, separate record of the chain, so cutting records off its end shows."""
    return f"{PREFIX}audit:witness"


def recent(user_id: int) -> str:
    """List: the user's latest accepted gift events (JSON), newest first, capped."""
    return f"{PREFIX}user:{user_id}:recent"


def room_seq(room: str) -> str:
    """String: the room's last event sequence number."""
    return f"{PREFIX}room:{room}:seq"


def room_history(room: str) -> str:
    """Stream: the room's latest events (field p = JSON payload), capped ~room_history_max."""
    return f"{PREFIX}room:{room}:hist"


def room_rank(room: str) -> str:
    """Sorted set: the room's live ranking this broadcast (member = user id, score = coins)."""
    return f"{PREFIX}room:{room}:rank"


def room_earnings(room: str) -> str:
    """String: coins the room's streamer received this broadcast."""
    return f"{PREFIX}room:{room}:earn"


def room_epoch(room: str) -> str:
    """String: the room's broadcast session number; a new session clears rank and earnings."""
    return f"{PREFIX}room:{room}:epoch"


def room_channel(room: str) -> str:
    """Pub/sub channel: every room event, as the same JSON stored in the history."""
    return f"{PREFIX}room:{room}:ch"


def room_viewers(room: str) -> str:
    """Hash: node id -> viewers of the room connected to that node."""
    return f"{PREFIX}room:{room}:viewers"


def board_streamers(period: str) -> str:
    """Sorted set: streamers by coins received in a period (d20261125, w2026-48, m202611)."""
    return f"{PREFIX}board:streamer:{period}"


def board_gifters(period: str) -> str:
    """Sorted set: gifters by coins sent in a period."""
    return f"{PREFIX}board:gifter:{period}"


def board_fans(streamer_id: int, period: str) -> str:
    """Sorted set: one streamer's gifters by coins sent to them in a period."""
    return f"{PREFIX}board:fans:{streamer_id}:{period}"
