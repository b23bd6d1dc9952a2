"""Logging: plain text for a terminal, or one JSON object per line for collectors.

GIFTD_LOG_FORMAT=json gives lines like
{"ts":"2026-11-25T02:30:00.123Z","level":"warning","logger":"giftd.flusher","msg":"...","node":"h-1"}
with exception text under "exc" and any `extra={...}` fields kept. GIFTD_LOG_LEVEL
sets the level (default INFO).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import orjson

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "node": self.node,
        }
        for k, v in vars(record).items():
            if k not in _STANDARD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def configure(node: str) -> None:
    fmt = os.environ.get("GIFTD_LOG_FORMAT", "text").lower()
    level = os.environ.get("GIFTD_LOG_LEVEL", "INFO").upper()
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter(node))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
