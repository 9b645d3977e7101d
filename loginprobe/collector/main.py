"""`loginprobe collector --config FILE`: load the config (a bad file stops everything before
it starts), set up logging, and run the server until SIGTERM."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path

from loginprobe.collector.config import load_config
from loginprobe.collector.server import serve


class JSONFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(form: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if form == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def run(config_path: str) -> int:
    """Raises ConfigError (the CLI exits 2 with its FILE:LINE message) before anything runs."""
    path = Path(config_path)
    loaded = load_config(path)
    setup_logging(loaded.config.log_format, loaded.config.log_level)
    return asyncio.run(serve(path, loaded))
