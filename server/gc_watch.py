"""The garbage collector: start-up objects frozen, every pause measured.

A gift allocates a few short-lived dicts and tasks; they die young and cost
little. What costs is CPython's full (generation 2) collection: it walks every
live container object, and a gateway holding thousands of viewers, the
catalog, the modules and their caches has hundreds of thousands. Each such
walk stops the event loop, so it lands straight in ack and delivery tails.
`giftd serve` calls `freeze_startup()` once it listens (server/runner.py): it
moves everything alive then into a permanent generation that collections skip.
What the pauses still are is exported as `giftd_gc_pause_seconds` (by
generation), so a regression shows.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

PAUSE_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class GcWatch:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.pauses = Histogram("giftd_gc_pause_seconds", "event-loop pauses for garbage "
                                "collection, by generation", ["generation"],
                                buckets=PAUSE_BUCKETS_S, registry=registry)
        self._by_gen = [self.pauses.labels(str(g)) for g in range(3)]
        self._started_s = 0.0

    def start(self) -> None:
        gc.callbacks.append(self._on_gc)

    def stop(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started_s = time.perf_counter()
        else:
            self._by_gen[info["generation"]].observe(time.perf_counter() - self._started_s)


def freeze_startup() -> None:
    """Collect once, then exempt every object alive now from later collections."""
    gc.collect()
    gc.freeze()
