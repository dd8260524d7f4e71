"""Connecting to Ray quietly: an existing cluster when there is one, else a local instance."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pickletools
import re
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from trainyard._logging import get_logger, say_if_slow, show_logs

log = get_logger("trainyard.execution")

# Ray Train's controller polls workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by
# default) and every ray.train.report waits for a poll: 0.2 s cuts a short run's
# wall time by a third on a 2-core machine.
_PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
_QUIET_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_AIR_NEW_OUTPUT": "0",
    "RAY_DEDUP_LOGS": "0",  # SameLineOnce does it without losing lines
}


def token_auth_if_available() -> None:
    """Ray 2.60's `ray start` enables token authentication and writes the token to
    ~/.ray/auth_token, but a client sends it only when RAY_AUTH_MODE=token, which Ray reads
    once, when it is imported: set it when a token is there and the user chose no mode
    (called when this package is imported, before any module here imports Ray)."""
    if "RAY_AUTH_MODE" in os.environ or "ray" in sys.modules:
        return
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def verbose() -> bool:
    """`--verbose` / TRAINYARD_LOG_LEVEL=DEBUG show Ray's own logs."""
    return os.environ.get("TRAINYARD_LOG_LEVEL", "INFO").upper() == "DEBUG"


def ensure_ray(num_cpus: int | None = None, py_modules: list[str] | None = None) -> None:
    """Use the Ray this process is connected to; else RAY_ADDRESS or a running cluster;
    else start a local instance (address="local", never joining a stray head by accident).
    `py_modules` ships local packages to every worker (trainyard itself, when the
    cluster does not have it installed).
    """
    import ray

    show_logs()

    if ray.is_initialized():
        return
    with _CONNECTING:  # threads connecting at once (a first use of the job queue) connect once
        if ray.is_initialized():
            return
        with say_if_slow("starting Ray"):
            if threading.current_thread() is threading.main_thread():
                with _keeping_sigterm():
                    _connect(ray, num_cpus, py_modules)
            else:
                _connect_from_a_lasting_thread(ray, num_cpus, py_modules)


_CONNECTING = threading.Lock()


@contextlib.contextmanager
def _keeping_sigterm():
    """ray.init sets SIGTERM handlers of its own (they exit, with a C++ dump and no word of
    the run): an application that handles SIGTERM itself (the trainyard command stops a run
    as on Ctrl-C) keeps its handler. One that set none gets Ray's."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if callable(previous):
            signal.signal(signal.SIGTERM, previous)


def _connect_from_a_lasting_thread(ray, num_cpus: int | None, py_modules: list[str] | None) -> None:
    """A local Ray's processes are started with PR_SET_PDEATHSIG: the kernel kills them when
    the *thread* that started them ends. Started from a short-lived thread (a request
    handler, a submitting thread), the whole instance would die with it, so start it from
    a thread that lives as long as the process."""
    started, failure = threading.Event(), []

    def keep() -> None:
        try:
            _connect(ray, num_cpus, py_modules)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            failure.append(e)
        finally:
            started.set()
        threading.Event().wait()  # never set: this thread holds the instance's processes

    threading.Thread(target=keep, name="trainyard-ray", daemon=True).start()
    started.wait()
    if failure:
        raise failure[0]


def _connect(ray, num_cpus: int | None, py_modules: list[str] | None) -> None:
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    options = {
        "logging_config": ray.LoggingConfig(log_level="INFO" if verbose() else "ERROR"),
        "log_to_driver": True,  # worker tracebacks and rank 0's epoch lines must reach the user
        "runtime_env": {"env_vars": {k: os.environ[k] for k in _QUIET_ENV}},
    }
    if py_modules:
        options["runtime_env"]["py_modules"] = py_modules
    if not verbose():
        logging.getLogger("ray").setLevel(logging.ERROR)
    given = os.environ.get("RAY_ADDRESS")
    address = None if given == "local" else given or running_cluster()
    if address:
        _check_reachable(address)
        why = "RAY_ADDRESS" if given else "a `ray start` head on this machine; RAY_ADDRESS=local runs a Ray of this process's own instead"
        log.info("joining the Ray cluster at %s (%s)", address, why)
        try:
            ray.init(address=address, **options)
        except ConnectionError as e:
            if "AuthenticationError" not in repr(e.__cause__) and "InvalidAuthToken" not in str(e.__cause__):
                raise
            raise ConnectionError(
                f"the Ray cluster at {address} refused this process's authentication token. Copy the "
                "cluster's token (`ray get-auth-token` on the head) to ~/.ray/auth_token or RAY_AUTH_TOKEN, "
                "and set RAY_AUTH_MODE=token before Python starts (Ray reads it when it is imported)"
            ) from None
        if not py_modules:
            _check_trainyard_imports(ray, address, why)
        _JOINED[:] = [f"the Ray cluster at {address}"]
    else:
        # The dashboard serves the state API that Ray Train's actors poll (the controller at
        # shutdown, its PlacementGroupCleaner every second). They find it by looking for
        # the Ray instance on this machine, which fails ("Found multiple active Ray
        # instances") as soon as a second one runs here: give them its address instead.
        port = free_port()
        options["runtime_env"]["env_vars"]["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        # Ray Train's preemption watcher (one more actor process per run, ~1 s of a short
        # run on two cores) watches for nodes being drained: a one-node instance of this
        # process has none to drain (Ray Train's controller reads the switch).
        options["runtime_env"]["env_vars"][_PREEMPTION_WATCHER] = os.environ.get(_PREEMPTION_WATCHER, "0")
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_port=port, **options)
    if not verbose():
        _filter_worker_output()


_JOINED: list[str] = []  # the cluster this process joined (one trainyard did not start), once it has


def check_importable(what: str, *pickled: bytes) -> None:
    """Ray's workers import the modules objects are pickled by reference to (a model
    factory's, a hook's; `pickled`: as `remote.check_picklable` returns them): refuse, before
    any work, one that exists only in this process (no file: a worker cannot import it
    anywhere), and on a cluster this process joined, one its workers cannot import (on other
    nodes the user's code is not there unless shipped)."""
    modules = referenced_modules(*pickled)
    for name in sorted(modules):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None) is None and name not in sys.builtin_module_names and not hasattr(module, "__path__"):
            raise ValueError(
                f"{what} refer to module {name!r}, which exists only in this process (it has no file): Ray's workers cannot import "
                "it. Define that code in a .py file the workers can import, or in the script you run (its code is sent by value)"
            )
    if not _JOINED:
        return  # a Ray of this process's own: its workers share this machine and this process's import path
    import ray

    @ray.remote(num_cpus=0)
    def missing(names: list[str]) -> list[str]:  # runs in a worker of the cluster
        return [n for n in names if importlib.util.find_spec(n) is None]

    absent = ray.get(missing.remote(sorted(m for m in modules if m.split(".")[0] not in sys.stdlib_module_names)), timeout=120)
    if absent:
        raise ValueError(
            f"{_JOINED[0]} cannot import module {absent[0]!r}, which {what} refer to: install it on the cluster's nodes, or run "
            "the script with `ray job submit --working-dir . -- python ...` (the folder travels with the job), or set "
            "RAY_ADDRESS=local to run on a Ray of this process's own"
        )


def referenced_modules(*pickled: bytes) -> set[str]:
    """The modules objects refer to by name in their pickles (Ray's cloudpickle sends the
    script's own code by value, and names everything imported from elsewhere)."""
    found: set[str] = set()
    for data in pickled:
        pushed: list[Any] = []  # what each opcode left on top of the stack, as far as it matters here: strings
        memo: dict[int, Any] = {}
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                pushed.append(arg)
            elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                pushed.append(memo.get(int(arg)))
            elif op.name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(arg)] = pushed[-1] if pushed else None
            elif op.name == "STACK_GLOBAL" and len(pushed) >= 2 and isinstance(pushed[-2], str):
                found.add(pushed[-2])
                pushed.append(None)
            elif op.name == "GLOBAL":
                found.add(str(arg).split(" ")[0])
                pushed.append(None)
            else:
                pushed.append(None)
    return {m for m in found if m not in ("__main__", "builtins", "copyreg", "__builtin__") and m.split(".")[0] != "ray"}


def _check_trainyard_imports(ray, address: str, why: str) -> None:
    """A cluster whose Python cannot import trainyard fails every run, deep inside a worker,
    with 40 lines ending in "No module named 'trainyard'": ask it once, here."""

    @ray.remote(num_cpus=0)
    def probe() -> tuple[bool, str]:  # runs in a worker of the cluster (modules travel by name)
        return importlib.util.find_spec("trainyard") is not None, sys.executable

    found, python = ray.get(probe.remote(), timeout=120)
    if not found:
        ray.shutdown()
        raise ConnectionError(
            f"the Ray cluster at {address} ({why.split(';')[0]}) cannot import trainyard: its Python ({python}) does not have it. "
            "Install trainyard on the cluster's nodes (pip install trainyard, or the same checkout), or submit the work with "
            "`trainyard jobs submit`, which ships trainyard; or set RAY_ADDRESS=local to run on a Ray of this process's own"
        )


def check_satisfiable(per_unit: dict[str, float], count: int, what: str, fix: str) -> None:
    """Refuse `count` bundles of `per_unit` resources that this cluster can never provide:
    without an autoscaler, Ray waits for them forever ("No available node types can fulfill
    resource request"). With an autoscaler configured it may add nodes, so anything goes."""
    import ray

    if autoscaling():
        return  # an autoscaler can add nodes (and Ray Train checks its maximum itself)
    problem = unsatisfiable(per_unit, count, [node["Resources"] for node in ray.nodes() if node.get("Alive")], what, fix)
    if problem is not None:
        raise ValueError(problem)


def autoscaling() -> bool:
    """Whether the connected cluster has an autoscaler that can add nodes."""
    from ray._private import state as ray_state

    try:
        return bool(ray_state.state.get_max_resources_from_cluster_config())
    except Exception:  # noqa: BLE001 - an older head without the key: judge by the nodes
        return False


def unsatisfiable(per_unit: dict[str, float], count: int, nodes: list[dict[str, float]], what: str, fix: str) -> str | None:
    """Why `count` bundles of `per_unit` never fit on these nodes (their resources), or None."""
    for key, amount in per_unit.items():
        if not amount:
            continue
        total = sum(node.get(key, 0) for node in nodes)
        largest = max((node.get(key, 0) for node in nodes), default=0)
        if total < amount * count or largest < amount:
            per_node = f", at most {largest:g} on one node" if len(nodes) > 1 else ""
            return (
                f"{what} needs {amount * count:g} {key} ({count} x {amount:g}), but this Ray cluster has "
                f"{total:g} {key}{per_node} and no autoscaler to add nodes: Ray would wait for them forever. {fix}"
            )
    return None


# Lines Ray's own processes print for a run that is fine, each with why it is noise. A
# matching line and the traceback lines that follow it in the same batch are dropped.
RAY_NOISE = (
    # Ray Train's controller creates its PreemptionWatcher with restartable constructor
    # arguments in the object store; the core worker warns at ERROR level (ray#53727).
    re.compile(r"core_worker\.cc:\d+: Actor with class name: 'PreemptionWatcher'"),
    # At shutdown the controller stops its PlacementGroupCleaner, which may still be inside a
    # state-API query (10 s timeout, plus its 1 s poll) on a loaded machine: the 12 s stop
    # times out after a successful run, and the cleaner exits anyway. (Its other failure,
    # "Found multiple active Ray instances", is prevented: see _connect.)
    re.compile(r"Failed to stop PlacementGroupCleaner gracefully"),
    # Ray Train's controller asks the autoscaling coordinator for its workers' resources with
    # a 5 s timeout, and on a busy machine that times out once; it asks again, the run goes
    # on, and Ray's own warning says a transient one is safe to ignore: it printed a
    # GetTimeoutError traceback into runs that then succeeded.
    re.compile(r"Failed to send resource request for "),
)
_TRACEBACK_LINE = re.compile(r"^(Traceback \(most recent call last\)|\s|[\w.]+(Error|Exception|Exit)\b|The above exception|During handling)")


def without_noise(lines: list[str]) -> list[str]:
    """`lines` (one batch of a worker's output) less RAY_NOISE and the tracebacks under it."""
    kept, dropping = [], False
    for line in lines:
        if any(pattern.search(line) for pattern in RAY_NOISE):
            dropping = True
        elif not (dropping and (not line.strip() or _TRACEBACK_LINE.match(line))):
            dropping = False
            kept.append(line)
    return kept


def _filter_worker_output() -> None:
    """Wrap Ray's printer of worker output on this driver with `without_noise` and
    `SameLineOnce`, in place of Ray's own deduplication."""
    try:
        from ray._private import ray_logging
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return
    # Ray merges lines from different processes that are equal once every word holding a
    # digit is dropped: the epoch lines of a restarted worker, or of a second run within
    # seconds, vanished into "[repeated 2x across cluster] (Ray deduplicates logs by
    # default. Set RAY_DEDUP_LOGS=0 ...)". Read when Ray is imported: too early to set.
    ray_logging.RAY_DEDUP_LOGS = False
    once = SameLineOnce()
    with dispatcher._lock:
        dispatcher.handlers = [(name, filtered(h, once) if name == "ray_print_logs" else h) for name, h in dispatcher.handlers]


def filtered(handle, once: SameLineOnce):
    """`handle` (Ray's printer of one batch of a worker's lines) given the batch less noise
    and less lines another process printed just before."""
    def emit(data):
        lines = once(data.get("pid"), without_noise(list(data.get("lines", ()))))
        if lines:
            handle({**data, "lines": lines})

    return emit


class SameLineOnce:
    """Drops a line whose very text another process printed within `window_s` (the same
    warning from every rank); a line that differs in any character, a number included,
    is kept."""

    def __init__(self, window_s: float = 5.0, clock=time.monotonic):
        self.window_s, self.clock = window_s, clock
        self.recent: dict[str, tuple[Any, float]] = {}  # line -> (the process that printed it, when)

    def __call__(self, source: Any, lines: list[str]) -> list[str]:
        now = self.clock()
        if len(self.recent) > 10_000:
            self.recent = {k: v for k, v in self.recent.items() if now - v[1] < self.window_s}
        kept = []
        for line in lines:
            seen = self.recent.get(line)
            if seen is not None and seen[0] != source and now - seen[1] < self.window_s and line.strip():
                continue
            self.recent[line] = (source, now)
            kept.append(line)
        return kept


def cluster_resources() -> dict[str, float]:
    """The connected cluster's total resources (`CPU`, `GPU`, ...)."""
    import ray

    return dict(ray.cluster_resources())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Ray waits minutes, logging a warning every few seconds, for a cluster address that
    nothing answers at: find that out in seconds and say what to do."""
    e = unanswered(address, timeout)
    if e is not None:
        raise ConnectionError(
            f"no Ray cluster answers at {address} (RAY_ADDRESS; {e.strerror or type(e).__name__}). "
            "Start one there (`ray start --head`), point RAY_ADDRESS at a running head, or unset "
            "RAY_ADDRESS to run on a local Ray started in this process"
        )


def unanswered(address: str, timeout: float) -> OSError | None:
    """Why nothing accepts a connection at `[scheme://]host:port`, or None if something does
    (or the address is no host:port, like "auto", which Ray resolves itself)."""
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():
        return None
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return None
    except OSError as e:
        return e


def running_cluster() -> str | None:
    """The address of a cluster `ray start` left running on this machine, if it is alive.

    Only `ray start` writes ray_current_cluster; another program's in-process Ray does
    not, so it is never joined by accident. A stale file (a head stopped without
    `ray stop`) points at a dead port and is ignored.
    """
    current = Path(os.environ.get("RAY_TMPDIR", tempfile.gettempdir()), "ray", "ray_current_cluster")
    try:
        address = current.read_text().strip()
    except OSError:
        return None
    if not address.rpartition(":")[2].isdigit():
        return None  # not host:port: not written by `ray start`
    return address if unanswered(address, timeout=0.5) is None else None
