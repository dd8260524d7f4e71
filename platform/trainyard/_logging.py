"""The `trainyard` logger: one concise line per event, quiet by default.

`TRAINYARD_LOG_LEVEL` (DEBUG, INFO, WARNING, ...) sets its level. If the application has
configured logging itself (a handler on the root or `trainyard` logger), we add nothing.
"""

from __future__ import annotations

import logging
import os
import sys

ROOT = "trainyard"


def get_logger(name: str = ROOT) -> logging.Logger:
    root = logging.getLogger(ROOT)
    if not root.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[trainyard] %(message)s"))
        root.addHandler(handler)
        root.propagate = False
        root.setLevel(os.environ.get("TRAINYARD_LOG_LEVEL", "INFO").upper())
    return logging.getLogger(name)
