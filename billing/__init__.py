"""Billing: migrations, the write-behind flusher, the double-entry ledger."""
