"""Under load, cheap gifts merge ("Rose ×99"); costly ones never do. Pure.

When one tick frame would carry more than `merge_above_events` events, the
cheap gift events (tier <= MERGE_TIER_MAX) of one sender, gift and streak
are folded into one event: counts and values summed, the member seqs and
event ids listed, placed where the last member stood (so seqs still rise
through the frame). Everything else, high-value gifts above all, goes out
untouched. Nothing is dropped: a client can account for every event id.
"""

from __future__ import annotations

from typing import Any

import orjson

from gifts.catalog import tier_for

MERGE_TIER_MAX = 1  # tier 1 (under 100 coins a send) merges; tier 2 and up never

Event = tuple[bytes, dict[str, Any]]


def merge_cheap(events: list[Event]) -> list[Event]:
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, (_, ev) in enumerate(events):
        if ev.get("type") == "gift" and int(ev.get("tier", 99)) <= MERGE_TIER_MAX:
            key = ((ev.get("sender") or {}).get("id"), ev.get("gift"), ev.get("combo_id"))
            groups.setdefault(key, []).append(i)
    folded: dict[int, Event] = {}  # index of a group's last member -> merged event
    skip: set[int] = set()
    for members in groups.values():
        if len(members) < 2:
            continue
        evs = [events[i][1] for i in members]
        merged = dict(evs[-1])
        merged["count"] = sum(int(e["count"]) for e in evs)
        merged["value_coins"] = sum(int(e["value_coins"]) for e in evs)
        merged["tier"] = tier_for(merged["value_coins"])  # the group plays as one animation
        if isinstance(merged.get("pk"), dict):  # scores are absolute; points add up
            merged["pk"] = {**merged["pk"], "points": sum(
                int((e.get("pk") or {}).get("points", 0)) for e in evs)}
        merged["merged"] = len(evs)
        merged["seqs"] = [e["seq"] for e in evs]
        merged["event_ids"] = [e["event_id"] for e in evs]
        merged.pop("client_id", None)
        folded[members[-1]] = (orjson.dumps(merged), merged)
        skip.update(members[:-1])
    if not folded:
        return events
    return [folded.get(i, ev) for i, ev in enumerate(events) if i not in skip]
