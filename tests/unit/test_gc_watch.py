"""The garbage collector's pauses are timed per generation, and only while watched."""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry

from server.gc_watch import GcWatch


def test_full_collections_are_timed_and_stop_when_unwatched() -> None:
    registry = CollectorRegistry()
    watch = GcWatch(registry)
    watch.start()
    try:
        gc.collect(2)
        gc.collect(2)
    finally:
        watch.stop()

    def count() -> float:
        return registry.get_sample_value("giftd_gc_pause_seconds_count",
                                         {"generation": "2"}) or 0.0

    seen = count()
    assert seen >= 2
    total_s = registry.get_sample_value("giftd_gc_pause_seconds_sum", {"generation": "2"})
    assert total_s is not None and 0 < total_s < 5
    gc.collect(2)
    assert count() == seen  # no longer watched
    watch.stop()  # twice is fine
