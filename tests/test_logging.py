"""trainyard logs as a library: an application's logging receives its lines; a script that
configured nothing gets the `[trainyard]` line on stderr; nothing is printed twice.
(In fresh processes: pytest's own root handlers would hide the difference here.)"""

import subprocess
import sys

TRAIN = """
from types import SimpleNamespace
from tests.helpers import VOCAB, lm_factory, lm_samples
from trainyard import Trainer, TrainingConfig
Trainer(lm_factory(), SimpleNamespace(vocab_size=VOCAB), TrainingConfig(epochs=1, checkpoint_dir={ckdir!r})).train(lm_samples(8))
"""


def _run(tmp_path, prelude: str = "", env: dict | None = None) -> str:
    import os
    import uuid

    code = prelude + TRAIN.format(ckdir=str(tmp_path / uuid.uuid4().hex[:8]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, check=True)
    return proc.stderr


def test_a_script_that_configures_nothing_gets_one_line_per_epoch(tmp_path):
    err = _run(tmp_path)
    assert [line for line in err.splitlines() if line.startswith("[trainyard] epoch 1/1 | train/loss")]


def test_an_applications_own_logging_receives_the_lines_once(tmp_path):
    prelude = "import logging\nlogging.basicConfig(level=logging.INFO, format='APP %(name)s: %(message)s')\n"
    err = _run(tmp_path, prelude)
    assert "APP trainyard.engine: epoch 1/1 | train/loss" in err
    assert "[trainyard]" not in err  # the default line stays silent: the application's handler has it


def test_the_application_sets_the_level(tmp_path):
    prelude = "import logging\nlogging.basicConfig(level=logging.WARNING)\n"
    assert "epoch 1/1" not in _run(tmp_path, prelude)
    assert "epoch 1/1" not in _run(tmp_path, env={"TRAINYARD_LOG_LEVEL": "WARNING"})


def test_the_command_leaves_an_in_process_callers_logging_and_sigterm_as_they_were(tmp_path):
    """`trainyard.cli.main.main([...])` called in a process of its own (a test, a notebook)
    sets up trainyard's lines for the command only: its handler had outlived the stream it
    wrote to, and stopped propagation for everything after."""
    import logging
    import signal

    import trainyard._logging  # noqa: F401 - the library's NullHandler is on its logger from its first import
    from trainyard.cli.main import main

    logger = logging.getLogger("trainyard")
    before = (logger.level, list(logger.handlers), logger.propagate, signal.getsignal(signal.SIGTERM))
    assert main(["report", str(tmp_path / "nothing-here")]) == 2
    assert (logger.level, list(logger.handlers), logger.propagate, signal.getsignal(signal.SIGTERM)) == before


def test_a_step_that_takes_long_says_what_it_is_doing_and_a_quick_one_says_nothing(caplog):
    import logging
    import time

    from trainyard._logging import say_if_slow

    with caplog.at_level(logging.INFO, logger="trainyard"):
        with say_if_slow("reading the data", after=0.05):
            time.sleep(0.3)
        with say_if_slow("starting Ray", after=5):
            pass
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and said[0] == "reading the data ..." and said[1].startswith("reading the data: done in 0.")


def test_a_worker_killed_inside_a_garbage_collector_callback_prints_no_traceback():
    """Ray stops a pruned trial's process with SIGTERM; its handler's SystemExit, raised in a
    weakref callback, was printed as 'Exception ignored in ...' on the user's terminal."""
    script = (
        "import gc, weakref\n"
        "from trainyard._logging import quiet_exits\n"
        "class A: pass\n"
        "def exits(_): raise SystemExit(1)\n"
        "def fails(_): raise KeyError('kept')\n"
        "a, b = A(), A()\n"
        "refs = [weakref.ref(a, exits), weakref.ref(b, fails)]\n"
        "quiet_exits()\n"
        "del a, b\n"
        "gc.collect()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "SystemExit" not in proc.stderr and "KeyError: 'kept'" in proc.stderr  # other unraisable errors still show
