"""The `trainyard` logger: one concise line per event, quiet by default.

`TRAINYARD_LOG_LEVEL` (DEBUG, INFO, WARNING, ...) sets its level. The logger gets its own
stderr handler (so Ray workers, whose root logger Ray configures, print it too) unless the
application has put a handler on the `trainyard` logger itself.
"""

from __future__ import annotations

import logging
import os
import sys

ROOT = "trainyard"


def get_logger(name: str = ROOT) -> logging.Logger:
    root = logging.getLogger(ROOT)
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[trainyard] %(message)s"))
        root.addHandler(handler)
        root.propagate = False
        root.setLevel(os.environ.get("TRAINYARD_LOG_LEVEL", "INFO").upper())
    return logging.getLogger(name)
