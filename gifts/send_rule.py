"""The send decision, pure: the twin of gifts/lua/send_gifts.lua.

The script is what runs; this module states the same rule in Python so that
one table of cases can be run against both (see tests), and so the rule can be
read without Lua. Keep the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Outcome(StrEnum):
    OK = "ok"
    DUPLICATE = "duplicate"  # same id, same content: the original result is replayed
    CONFLICT = "conflict"  # same id, different content: nothing happens
    INSUFFICIENT_BALANCE = "insufficient_balance"
    BACKLOG_FULL = "backlog_full"  # the write-behind log is over its limit: try later


@dataclass(frozen=True, slots=True)
class Remembered:
    """What the script keeps of an accepted gift id."""

    fingerprint: str
    balance: int
    event_id: str
    seq: int


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    balance: int  # balance after (ok), replayed (duplicate), or current
    debit_coins: int  # what this decision takes from the balance (only ok > 0)


def fingerprint(room: str, gift_code: str, count: int, unit_price_coins: int) -> str:
    """What must match for a re-sent id to be the same gift (the price matters for
    custom-amount tips, whose price is the amount the sender chose)."""
    return f"{room}|{gift_code}|{count}|{unit_price_coins}"


def decide(
    *,
    balance: int,
    amount: int,
    fp: str,
    remembered: Remembered | None,
    backlog: int,
    backlog_max: int,
) -> Decision:
    """Decide one send. Order matters and matches the script: id, balance, backlog."""
    if remembered is not None:
        if remembered.fingerprint == fp:
            return Decision(Outcome.DUPLICATE, remembered.balance, 0)
        return Decision(Outcome.CONFLICT, balance, 0)
    if balance < amount:
        return Decision(Outcome.INSUFFICIENT_BALANCE, balance, 0)
    if backlog >= backlog_max:
        return Decision(Outcome.BACKLOG_FULL, balance, 0)
    return Decision(Outcome.OK, balance - amount, amount)
