"""Connecting to Ray quietly: an existing cluster when there is one, else a local instance."""

from __future__ import annotations

import logging
import os

from trainyard._logging import get_logger

log = get_logger("trainyard.execution")

# Ray Train's controller polls workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by
# default) and every ray.train.report waits for a poll: 0.2 s cuts a short run's
# wall time by a third on a 2-core machine.
_QUIET_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_AIR_NEW_OUTPUT": "0",
    "RAY_DEDUP_LOGS": "1",
}


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

    if ray.is_initialized():
        return
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
    address = os.environ.get("RAY_ADDRESS") or (_running_cluster() and "auto")
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, **options)
    else:
        # The dashboard serves the state API that Ray Train polls while shutting a run down;
        # without it every fit() waits out a 10 s timeout and logs a traceback.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, **options)


def _running_cluster() -> bool:
    """Whether `ray start` left a head on this machine that is still alive."""
    try:
        from ray._private.services import find_gcs_addresses

        return bool(find_gcs_addresses())
    except Exception:  # noqa: BLE001 - a private API: no answer means no cluster
        return False
