"""Resume after reconnect, pure: can the missed events be replayed from history?

A client rejoining with the last seq it saw (`since`) needs every event in
(since, S], where S is the room's broadcast seq at the instant it becomes a
member again. History is read just before that instant, so it may end a
little short of S (events broadcast in between): then read again.
"""

from __future__ import annotations

from enum import Enum


class ResumePlan(Enum):
    REPLAY = "replay"  # history holds every missed event
    RESYNC = "resync"  # too old (history trimmed) or from another life of the room
    RETRY = "retry"  # history ends before S: read it again


def plan_resume(since: int, broadcast_seq: int, history_seqs: list[int]) -> ResumePlan:
    """history_seqs: the seqs read from history at or after since + 1, ascending."""
    if since > broadcast_seq:
        return ResumePlan.RESYNC  # the client saw events this room never had
    if since == broadcast_seq:
        return ResumePlan.REPLAY  # nothing missed
    if history_seqs and history_seqs[0] > since + 1:
        return ResumePlan.RESYNC  # the missed events were trimmed from history
    if not history_seqs or history_seqs[-1] < broadcast_seq:
        # Broadcast after our read (or all gone): read again; callers give up
        # after a few tries and resync.
        return ResumePlan.RETRY
    return ResumePlan.REPLAY
