"""How every process of the gateway logs: ``[log] level`` and ``[log] format``, set once.

Each process (the supervisor, dnsd and proxy worker processes) calls ``configure`` first
thing; it is the one place that touches the root logger. ``format = "json"`` writes one
JSON object per line -- time (RFC 3339, UTC), level, logger, message and, when there is
one, the exception's traceback as text -- so a log shipper needs no parsing rules.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from webgateway.config import LogConfig
from webgateway.when import rfc3339_ms

_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record; ``process`` names a worker process when set."""

    def __init__(self, process: str = "") -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": rfc3339_ms(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.process:
            out["process"] = self.process
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def formatter(config: LogConfig, process: str = "") -> logging.Formatter:
    if config.format == "json":
        return JsonFormatter(process)
    return logging.Formatter(_TEXT if not process else f"%(asctime)s %(levelname)s {process} "
                             "%(name)s: %(message)s")


#: Libraries whose DEBUG records carry SQL parameters (sealed or plain private keys, token
#: hashes): never below INFO, whatever ``[log] level`` says.
PARAMETER_LOGGERS = ("aiosqlite", "asyncpg")


def keep_parameters_out() -> None:
    for name in PARAMETER_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)


def configure(config: LogConfig, process: str = "") -> None:
    """Route the root logger to stderr at ``config.level`` in ``config.format``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(config, process))
    logging.basicConfig(level=getattr(logging, config.level.upper()), handlers=[handler],
                        force=True)
    keep_parameters_out()
