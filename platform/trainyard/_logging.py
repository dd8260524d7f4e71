"""The `trainyard` logger: a library's logger, and the default an application gets.

As a library, trainyard logs through `logging.getLogger("trainyard.*")` with a NullHandler
and propagation on: an application that configures logging (a root handler, a level on the
`trainyard` logger) receives trainyard's lines like any other library's.

`show_logs()` is what an application that configured nothing gets: one concise
`[trainyard] ...` line per event on stderr, at `TRAINYARD_LOG_LEVEL` (DEBUG, INFO, WARNING,
...; INFO by default). trainyard's entry points call it (the training loop, sweeps, the main
job, the job queue). It changes nothing once the application has handlers of its own, and
its line stays silent while the root logger has a handler, so no line is printed twice. Where trainyard is the application (the `trainyard`
command, and the processes it runs itself: Ray Train workers, Tune trials, jobs)
`own_process_logs()` sets its level and line, whatever Ray put on the root logger there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time

ROOT = "trainyard"

logging.getLogger(ROOT).addHandler(logging.NullHandler())


def get_logger(name: str = ROOT) -> logging.Logger:
    return logging.getLogger(name)


class _Line(logging.StreamHandler):
    """trainyard's lines on stderr. `always`: in a process trainyard runs itself; else only
    while the application has no handler of its own on the root logger (where the lines go
    instead, by propagation)."""

    def __init__(self, always: bool) -> None:
        super().__init__()
        self.always = always
        self.setFormatter(logging.Formatter("[trainyard] %(message)s"))

    @property
    def stream(self):
        """stderr as it is now (a caller that redirects it, or captures it, gets the lines)."""
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        if self.always or not logging.getLogger().handlers:
            super().emit(record)


def show_logs() -> None:
    """The application default (see the module docstring); idempotent."""
    logger = logging.getLogger(ROOT)
    level = os.environ.get("TRAINYARD_LOG_LEVEL")
    if level:
        logger.setLevel(level.upper())
    if any(isinstance(h, _Line) for h in logger.handlers) or logging.getLogger().handlers:
        return  # shown already, or the application's own logging takes the lines
    if not level and logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    logger.addHandler(_Line(always=False))


@contextlib.contextmanager
def command_logs():
    """`own_process_logs()` for as long as a command runs; then the `trainyard` logger is as
    it was (code that calls the command's main() in its own process keeps its logging)."""
    logger = logging.getLogger(ROOT)
    saved = (logger.level, list(logger.handlers), logger.propagate)
    own_process_logs()
    try:
        yield
    finally:
        logger.setLevel(saved[0])
        logger.handlers[:] = saved[1]
        logger.propagate = saved[2]


def own_process_logs() -> None:
    """In a process trainyard runs itself (a Ray Train worker, a Tune trial, a job's task)
    trainyard is the application: its lines go to stderr, which Ray forwards to the driver
    and the job's log, at TRAINYARD_LOG_LEVEL (INFO by default), and not also through the
    handlers Ray puts on that process's root logger (they would print them twice)."""
    logger = logging.getLogger(ROOT)
    logger.setLevel((os.environ.get("TRAINYARD_LOG_LEVEL") or "INFO").upper())
    for handler in logger.handlers:
        if isinstance(handler, _Line):
            handler.always = True
    if not any(isinstance(h, _Line) for h in logger.handlers):
        logger.addHandler(_Line(always=True))
    logger.propagate = False


def quiet_exits() -> None:
    """In a Ray worker process trainyard runs: Ray stops a process it no longer needs (a pruned trial's) with SIGTERM, and its handler
    raises SystemExit wherever the process is: inside a garbage collector's callback Python
    cannot raise it, and prints 'Exception ignored in: ...' with a traceback, which Ray
    forwards to the user's terminal. The process is exiting either way: say nothing of it.
    Every other unraisable exception is reported as before."""
    default = sys.unraisablehook
    if getattr(default, "quiet_exit", False):
        return

    def hook(unraisable) -> None:
        if not issubclass(unraisable.exc_type, SystemExit):
            default(unraisable)

    hook.quiet_exit = True
    sys.unraisablehook = hook


@contextlib.contextmanager
def say_if_slow(what: str, after: float = 5.0, logger: str = ROOT):
    """Log `what ...` once the block has run for `after` seconds, and how long it took when
    it ends: a step that is usually quick says what is going on when it is not (reading and
    tokenizing a large file, starting Ray), instead of a silent terminal."""
    log = logging.getLogger(logger)
    done, said, start = threading.Event(), [], time.monotonic()

    def watch() -> None:
        if not done.wait(after):
            said.append(True)
            log.info("%s ...", what)

    watcher = threading.Thread(target=watch, name="trainyard-say-if-slow", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        if said:
            log.info("%s: done in %.1f s", what, time.monotonic() - start)
