"""Token buckets for sends, pure: time is passed in.

Each connection has a bucket, and so has each user (across that user's
connections on this process). A send takes one token from both; either being
empty refuses it with `rate_limited` and how long to wait.
"""

from __future__ import annotations

from collections import OrderedDict


class TokenBucket:
    __slots__ = ("burst", "rate_per_s", "tokens", "updated_s")

    def __init__(self, rate_per_s: float, burst: int, now_s: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.tokens = float(burst)
        self.updated_s = now_s

    def _refill(self, now_s: float) -> None:
        elapsed = max(0.0, now_s - self.updated_s)
        self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate_per_s)
        self.updated_s = now_s

    def wait_s(self, now_s: float) -> float:
        """0 if a token is there now, else how long until one is."""
        self._refill(now_s)
        if self.tokens >= 1:
            return 0.0
        return (1 - self.tokens) / self.rate_per_s

    def take(self) -> None:
        self.tokens -= 1


class UserBuckets:
    """One bucket per user, bounded: the least recently used are forgotten (and
    start full again, which only ever errs on the side of letting a send through)."""

    def __init__(self, rate_per_s: float, burst: int, users_max: int = 100_000) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.users_max = users_max
        self._buckets: OrderedDict[int, TokenBucket] = OrderedDict()

    def get(self, user_id: int, now_s: float) -> TokenBucket:
        b = self._buckets.get(user_id)
        if b is None:
            b = self._buckets[user_id] = TokenBucket(self.rate_per_s, self.burst, now_s)
            while len(self._buckets) > self.users_max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(user_id)
        return b


def admit(conn_bucket: TokenBucket, user_bucket: TokenBucket, now_s: float) -> float:
    """Take a token from both buckets, or neither. Returns 0, or seconds to wait."""
    wait = max(conn_bucket.wait_s(now_s), user_bucket.wait_s(now_s))
    if wait == 0:
        conn_bucket.take()
        user_bucket.take()
    return wait
