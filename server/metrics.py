"""Prometheus metrics of one process (served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge("giftd_connections", "open WebSocket connections", registry=r)
        self.gifts = Counter("giftd_gifts_total", "gift sends by outcome", ["outcome"],
                             registry=r)
        self.errors = Counter("giftd_ws_errors_total", "error messages sent, by code", ["code"],
                              registry=r)
        self.rooms = Gauge("giftd_rooms", "rooms with local viewers", registry=r)
        self.frames = Gauge("giftd_frames_written", "tick frames written (monotonic)", registry=r)
        self.deliveries = Gauge("giftd_deliveries", "gift events delivered to viewers (monotonic)",
                                registry=r)
        self.slow_closes = Gauge("giftd_slow_consumer_closes", "viewers dropped for falling "
                                 "behind (monotonic)", registry=r)
        self.gaps_repaired = Gauge("giftd_room_gaps_repaired", "room event gaps filled from "
                                   "history (monotonic)", registry=r)
        self.gaps_lost = Gauge("giftd_room_gaps_unrepaired", "room event gaps history could "
                               "not fill: events this process never delivered (monotonic)",
                               registry=r)
        self.tick_lag_ms = Gauge("giftd_tick_lag_ms", "lateness of the last room tick",
                                 registry=r)
        self.send_queue = Gauge("giftd_send_queue", "sends waiting for a debit batch",
                                registry=r)
        self.ledger_backlog = Gauge("giftd_ledger_backlog", "unflushed debits in the "
                                    "write-behind stream", registry=r)
        self.flush_lag_ms = Gauge("giftd_flush_lag_ms", "age of the oldest unflushed debit "
                                  "in the write-behind stream (0 when it is empty)", registry=r)
