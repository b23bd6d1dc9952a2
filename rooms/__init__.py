"""Rooms: local connection registry, tick-batched broadcast, rankings, the Redis room bus."""
