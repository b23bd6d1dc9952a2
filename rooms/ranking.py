"""A room's top-N ranking kept in memory, and the diff between two ticks. Pure.

Every gift event carries the sender's new room total straight from the
script's ZINCRBY, and totals only grow during a broadcast. So a node can keep
the exact top N from events alone: anyone entering the top N must have just
sent a gift, and that event says their total.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Entry:
    user_id: int
    name: str
    score: int

    def as_json(self, rank: int) -> dict[str, Any]:
        return {"rank": rank, "id": self.user_id, "name": self.name, "score": self.score}


class TopN:
    def __init__(self, n: int, entries: list[Entry] | None = None) -> None:
        self.n = n
        self._scores: dict[int, Entry] = {}
        for e in entries or []:
            self._scores[e.user_id] = e
        self._order = self._sorted()

    def _sorted(self) -> list[Entry]:
        # Ties: the earlier holder of a score keeps the higher rank is not knowable
        # here, so break ties by user id for a stable, identical order on every node.
        return sorted(self._scores.values(), key=lambda e: (-e.score, e.user_id))[: self.n]

    def update(self, user_id: int, name: str, total: int) -> None:
        cur = self._scores.get(user_id)
        if cur is not None and cur.score >= total:
            return
        if cur is None and len(self._order) >= self.n and total < self._order[-1].score:
            return
        self._scores[user_id] = Entry(user_id, name, total)
        self._order = self._sorted()
        keep = {e.user_id for e in self._order}
        if len(self._scores) > self.n * 2:  # keep memory bounded to ~2N
            self._scores = {u: e for u, e in self._scores.items() if u in keep}

    def entries(self) -> list[Entry]:
        return list(self._order)

    def as_json(self) -> list[dict[str, Any]]:
        return [e.as_json(i + 1) for i, e in enumerate(self._order)]


def rank_diff(before: list[Entry], after: list[Entry]) -> list[dict[str, Any]]:
    """Entries whose rank or score changed, plus `{"rank": r, "id": None}` for emptied ranks."""
    out: list[dict[str, Any]] = []
    for i, e in enumerate(after):
        if i >= len(before) or before[i] != e:
            out.append(e.as_json(i + 1))
    for i in range(len(after), len(before)):
        out.append({"rank": i + 1, "id": None})
    return out


def apply_diff(board: list[dict[str, Any]], diff: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The client side of rank_diff (used by tests and mirrored in static/js)."""
    by_rank = {e["rank"]: e for e in board}
    for d in diff:
        if d.get("id") is None:
            by_rank.pop(d["rank"], None)
        else:
            by_rank[d["rank"]] = d
    return [by_rank[r] for r in sorted(by_rank)]
