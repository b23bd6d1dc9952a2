"""The gift catalog: fixed-price gifts and fixed tips, priced in integer coins.

Loaded from Postgres at start-up and kept in memory: pricing a send never
touches the network. Pure functions here; I/O is in `load_catalog`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Animation tiers by the value of one send (count × price), in coins.
# 1: a small float-up; 2: a banner; 3: full-width; 4: full-screen, takes the stage.
TIER_FLOORS_COINS = (0, 100, 1_000, 10_000)

TIP_YUAN = (1, 6, 10, 50, 100)  # fixed tip presets, converted at coins_per_yuan


@dataclass(frozen=True, slots=True)
class Gift:
    code: str
    name: str
    price_coins: int
    animation: str
    kind: str = "gift"  # gift | tip

    def as_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "name": self.name,
            "price_coins": self.price_coins,
            "animation": self.animation,
            "kind": self.kind,
            "tier": tier_for(self.price_coins),
        }


def tier_for(value_coins: int) -> int:
    """Animation tier (1..4) for a send worth `value_coins`."""
    tier = 1
    for i, floor in enumerate(TIER_FLOORS_COINS):
        if value_coins >= floor:
            tier = i + 1
    return tier


def default_catalog(coins_per_yuan: int) -> list[Gift]:
    """The demo catalog: what `giftd serve --demo` seeds when the table is empty."""
    gifts = [
        Gift("rose", "Rose", 1, "rose_float"),
        Gift("heart", "Heart", 10, "heart_pop"),
        Gift("donut", "Donut", 52, "donut_spin"),
        Gift("crown", "Crown", 520, "crown_banner"),
        Gift("sports_car", "Sports car", 1_200, "car_drive"),
        Gift("rocket", "Rocket", 10_001, "rocket_launch"),
        Gift("carnival", "Carnival", 30_000, "carnival_fullscreen"),
    ]
    tips = [
        Gift(f"tip_{yuan}", f"Tip ¥{yuan}", yuan * coins_per_yuan, "tip_coins", kind="tip")
        for yuan in TIP_YUAN
    ]
    return gifts + tips


class Catalog:
    """An immutable snapshot of the catalog, by code."""

    def __init__(self, gifts: list[Gift]) -> None:
        self._by_code = {g.code: g for g in gifts}
        self.gifts = tuple(gifts)

    def get(self, code: str) -> Gift | None:
        return self._by_code.get(code)

    def __len__(self) -> int:
        return len(self._by_code)

    def as_json(self) -> list[dict[str, Any]]:
        return [g.as_json() for g in self.gifts]
