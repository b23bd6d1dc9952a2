"""Gifts: the catalog, the send decision and its Lua twin, the debit batcher."""
