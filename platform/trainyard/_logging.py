"""The `trainyard` logger: a library's logger, and the default an application gets.

As a library, trainyard logs through `logging.getLogger("trainyard.*")` with a NullHandler
and propagation on: an application that configures logging (a root handler, a level on the
`trainyard` logger) receives trainyard's lines like any other library's.

`show_logs()` is what an application that configured nothing gets: one concise
`[trainyard] ...` line per event on stderr, at `TRAINYARD_LOG_LEVEL` (DEBUG, INFO, WARNING,
...; INFO by default). The `trainyard` command calls it, and so do trainyard's own processes
(Ray workers, Tune trials, jobs) and its entry points (the training loop, sweeps, the main
job, the job queue). It changes nothing once the application has handlers of its own, and
its line stays silent while the root logger has a handler, so no line is printed twice.
"""

from __future__ import annotations

import logging
import os
import sys

ROOT = "trainyard"

logging.getLogger(ROOT).addHandler(logging.NullHandler())


def get_logger(name: str = ROOT) -> logging.Logger:
    return logging.getLogger(name)


class _DefaultLine(logging.StreamHandler):
    """trainyard's lines on stderr, for as long as the application has no handler of its own
    on the root logger (where the lines go instead, by propagation)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter("[trainyard] %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if not logging.getLogger().handlers:
            super().emit(record)


def show_logs() -> None:
    """The application default (see the module docstring); idempotent."""
    logger = logging.getLogger(ROOT)
    level = os.environ.get("TRAINYARD_LOG_LEVEL")
    if level:
        logger.setLevel(level.upper())
    if any(isinstance(h, _DefaultLine) for h in logger.handlers) or logging.getLogger().handlers:
        return  # shown already, or the application's own logging takes the lines
    if not level and logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    logger.addHandler(_DefaultLine())
