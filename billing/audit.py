"""The tamper-evident audit log: append-only rows, each carrying the hash of the previous.

`record` is called inside the transaction that moves the money, so an action
and its audit row commit together or not at all. A transaction-scoped
advisory lock makes the chain linear (one writer at a time appends).

`verify_chain` is pure: it recomputes every hash and reports, by sequence
number, records altered (hash mismatch), removed (a gap, or a prev_hash that
no longer matches), and inserted (a link to a hash that is not its
predecessor's). The database refuses UPDATE/DELETE/TRUNCATE; the chain catches
whoever gets around that (a superuser disabling triggers, a restored backup).
Removing the newest records leaves a consistent chain, so the head is also
copied every few seconds into a Redis sorted set (the witness): a witnessed
record that is gone or changed is reported. Records younger than the last
witness copy can still be cut off unseen; `giftd audit verify` prints the head
hash so operators can keep it elsewhere too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from billing.db import Db

GENESIS = "0" * 64
_LOCK_KEY = 0x61756469  # advisory lock for appending to the chain


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    at: datetime
    actor_id: int | None
    actor: str
    action: str
    target: str
    reason: str
    detail: str  # canonical JSON
    prev_hash: str
    hash: str


def canonical(detail: dict[str, Any]) -> str:
    return orjson.dumps(detail, option=orjson.OPT_SORT_KEYS).decode()


def record_hash(prev_hash: str, seq: int, at: datetime, actor_id: int | None, actor: str,
                action: str, target: str, reason: str, detail: str) -> str:
    body = orjson.dumps([seq, at.astimezone(UTC).isoformat(), actor_id, actor, action, target,
                         reason, detail])
    return hashlib.sha256(prev_hash.encode() + b"\n" + body).hexdigest()


async def record(conn: Db, *, actor_id: int | None, actor: str, action: str, target: str,
                 reason: str, detail: dict[str, Any]) -> AuditRecord:
    """Append one record. Call inside the caller's transaction."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
    last = await conn.fetchrow("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
    seq = (last["seq"] + 1) if last else 1
    prev = last["hash"] if last else GENESIS
    at = datetime.now(UTC)
    det = canonical(detail)
    h = record_hash(prev, seq, at, actor_id, actor, action, target, reason, det)
    await conn.execute(
        """INSERT INTO audit_log (seq, at, actor_id, actor, action, target, reason, detail,
                                  prev_hash, hash) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)""",
        seq, at, actor_id, actor, action, target, reason, det, prev, h)
    return AuditRecord(seq, at, actor_id, actor, action, target, reason, det, prev, h)


@dataclass(frozen=True, slots=True)
class ChainProblem:
    seq: int
    kind: str  # altered | removed | inserted
    detail: str


@dataclass(frozen=True, slots=True)
class ChainReport:
    records: int
    head_hash: str
    problems: tuple[ChainProblem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_chain(records: Iterable[AuditRecord],
                 witness: Iterable[tuple[int, str]] = ()) -> ChainReport:
    """Recompute the chain. `witness`: (seq, hash) heads recorded elsewhere (Redis); each
    must still be in the chain, which catches records removed from its end."""
    records = list(records)
    problems: list[ChainProblem] = []
    prev_hash, prev2_hash, prev_seq, n = GENESIS, "", 0, 0
    for r in records:
        n += 1
        own = record_hash(r.prev_hash, r.seq, r.at, r.actor_id, r.actor, r.action, r.target,
                          r.reason, r.detail)
        if own != r.hash:
            problems.append(ChainProblem(r.seq, "altered", "the record does not match its hash"))
        if r.prev_hash != prev_hash and r.prev_hash == prev2_hash:
            problems.append(ChainProblem(prev_seq, "inserted", f"record {r.seq} links past "
                                                               f"record {prev_seq}"))
        elif r.seq != prev_seq + 1:
            problems.append(ChainProblem(r.seq, "removed",
                                         f"records {prev_seq + 1}..{r.seq - 1} are missing"))
        elif r.prev_hash != prev_hash:
            kind = "inserted" if own == r.hash else "altered"
            problems.append(ChainProblem(r.seq, kind, "prev_hash does not link to record "
                                                      f"{prev_seq}"))
        prev2_hash, prev_hash, prev_seq = prev_hash, r.hash, r.seq
    by_seq = {r.seq: r.hash for r in records}
    for seq, h in sorted(witness):
        if seq > prev_seq:
            problems.append(ChainProblem(seq, "removed", f"the witness saw record {seq}; the "
                                                         f"chain ends at {prev_seq}"))
            break
        if seq in by_seq and by_seq[seq] != h:
            problems.append(ChainProblem(seq, "altered", "differs from the witnessed hash"))
    return ChainReport(n, prev_hash, tuple(problems))


WITNESS_KEEP = 1000  # heads kept in the Redis witness


async def witness(conn: Db | Any, redis: Any) -> tuple[int, str] | None:
    """Copy the chain's head into the Redis witness (run every few seconds)."""
    head = await conn.fetchrow("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
    if head is None:
        return None
    from server import keys

    async with redis.pipeline(transaction=True) as pipe:
        pipe.zadd(keys.audit_witness(), {head["hash"]: head["seq"]})
        pipe.zremrangebyrank(keys.audit_witness(), 0, -WITNESS_KEEP - 1)
        await pipe.execute()
    return head["seq"], head["hash"]


async def load_witness(redis: Any) -> list[tuple[int, str]]:
    from server import keys

    return [(int(score), m.decode() if isinstance(m, bytes) else str(m))
            for m, score in await redis.zrange(keys.audit_witness(), 0, -1, withscores=True)]


async def load(conn: Db | Any, after_seq: int = 0, limit: int | None = None
               ) -> Sequence[AuditRecord]:
    rows = await conn.fetch(
        """SELECT seq, at, actor_id, actor, action, target, reason, detail, prev_hash, hash
             FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2""", after_seq, limit)
    return [AuditRecord(**dict(r)) for r in rows]
