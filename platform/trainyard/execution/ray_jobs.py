"""Ray's job system, for work that must outlive the process that asks for it (the job
queue's jobs). From outside the cluster, over its HTTP API only: the asking process never
joins the cluster as a driver, so it can exit (or be a notebook running a Ray of its own).

    address = dashboard_address()        # RAY_ADDRESS, a `ray start` head here, or one started now
    client = jobs_client(address)        # ray.job_submission.JobSubmissionClient
    start_and_wait(client, ...)          # a short Ray Job that sets something up, until it is ready

From inside it (a detached actor, a job's driver): `cluster_jobs_client`, `cluster_total`,
`alive_nodes`, `pin_here`, `start_detached`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from typing import Any, Callable

from trainyard._logging import get_logger, say_if_slow
from trainyard.execution.ray_env import free_port, running_cluster, unanswered

log = get_logger("trainyard.execution")

PREFIX = "trainyard-"  # every Ray Job trainyard submits has a submission id starting so


def dashboard_address(start: bool = True) -> str | None:
    """The HTTP address of Ray's job API: RAY_ADDRESS (http(s)://, ray:// or a head's
    host:port); else the `ray start` head running on this machine; else, when `start`, a
    head started here now (said, with the command that stops it). None when there is none
    and `start` is False."""
    given = os.environ.get("RAY_ADDRESS", "").strip()
    if given == "local":
        raise ValueError(
            "RAY_ADDRESS=local runs Ray inside one process, and Ray Jobs (the job queue's) must outlive the process "
            "that submits them: unset RAY_ADDRESS (a head is started on this machine) or point it at a cluster's head"
        )
    if given:
        return _api_url(given)
    running = running_cluster()
    if running is not None:
        return _api_url(running)
    return _start_local_head() if start else None


def _api_url(address: str) -> str:
    if address.startswith(("http://", "https://")):
        return address.rstrip("/")
    problem = unanswered(address.split("://", 1)[-1], timeout=10.0)
    if problem is not None:
        raise ConnectionError(
            f"no Ray cluster answers at {address} (RAY_ADDRESS; {problem.strerror or type(problem).__name__}). "
            "Start one there (`ray start --head`), point RAY_ADDRESS at a running head, or unset it to use a head on this machine"
        )
    from ray.dashboard.utils import get_address_for_submission_client

    return get_address_for_submission_client(address).rstrip("/")


def _start_local_head() -> str:
    """`ray start --head` on this machine: Ray Jobs need a Ray that outlives the submitting
    process. Two processes starting one at once: the loser joins the winner's."""
    # The ports a user addresses (6379, the dashboard's 8265) are Ray's defaults; the agents'
    # are free ones: a Ray running inside another process here (a notebook's) holds the
    # defaults, and the new head's job agent would never come up ("No available agent").
    agents = [f"--{name}={free_port()}" for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
                                                      "metrics-export-port")]
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--disable-usage-stats",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1", *agents]
    with say_if_slow("starting a Ray head on this machine", logger="trainyard.job_queue"):
        done = subprocess.run(command, capture_output=True, text=True, start_new_session=True)
    running = running_cluster()
    if running is None:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
        raise RuntimeError(f"no Ray cluster is running, and `ray start --head` failed to start one here:\n{tail}\n"
                           "Start one yourself (`ray start --head`) or point RAY_ADDRESS at a cluster's head")
    address = _api_url(running)
    if done.returncode == 0:
        log.warning("no Ray cluster was running: started a Ray head on this machine (%s). Its jobs outlive this "
                    "process; `ray stop` stops it, and any job still running", address)
    return address


def jobs_client(address: str):
    """Ray's JobSubmissionClient for `address`, waiting (a little) for a new head's job agent."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def ray_states(client) -> dict[str, tuple[str, str]]:
    """{submission id: (status, message)} of the queue's Ray Jobs on the cluster."""
    return {d.submission_id: (str(d.status), d.message or "") for d in client.list_jobs()
            if d.submission_id and d.submission_id.startswith(PREFIX)}


def submit_with_retry(client, **kwargs: Any) -> str:
    """client.submit_job, retried while a head just started has no job agent yet."""
    deadline = time.monotonic() + 120  # a loaded machine's new head: over a minute
    while True:
        try:
            return client.submit_job(**kwargs)
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(1)


def start_and_wait(client, entrypoint: str, submission_id: str, ready: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    """Submit a short Ray Job that sets `what` up on the cluster, and wait until `ready()`;
    if the job fails first, raise with the end of its log (and the fix, when it is that the
    cluster's Python lacks trainyard)."""
    with say_if_slow(f"starting {what} on the cluster", logger="trainyard.job_queue"):
        submit_with_retry(client, entrypoint=entrypoint, submission_id=submission_id, metadata={"trainyard": what})
        deadline = time.monotonic() + timeout
        while not ready():
            status = str(client.get_job_info(submission_id).status)
            if status in ("FAILED", "STOPPED") or (status == "SUCCEEDED" and not ready()):
                tail = "\n".join(client.get_job_logs(submission_id).strip().splitlines()[-6:])
                hint = (" trainyard is not installed where the cluster runs Python: install it there (pip install trainyard), "
                        "or start the head from this environment") if "No module named 'trainyard'" in tail else ""
                raise RuntimeError(f"{what} did not start on the cluster (Ray Job {submission_id}, {status}):\n{tail}\n{hint}".rstrip())
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not start within {timeout:.0f} s (`ray job logs {submission_id}` shows why)")
            time.sleep(0.2)


# -- inside the cluster ------------------------------------------------------------------


def cluster_jobs_client():
    """The job API of the cluster this process is part of."""
    import ray
    from ray.dashboard.utils import get_address_for_submission_client
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(get_address_for_submission_client(ray.get_runtime_context().gcs_address))


def cluster_total() -> dict[str, float]:
    """The cluster's CPUs and GPUs."""
    import ray

    return {k: float(v) for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}


def alive_nodes() -> list[dict[str, float]]:
    """Each live node's resources."""
    import ray

    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def pin_here() -> dict[str, float]:
    """Entrypoint resources that run a Ray Job's driver on this node."""
    import ray

    return {f"node:{ray.util.get_node_ip_address()}": 0.001}


def start_detached(cls: type, name: str, args: tuple, method: str, on_this_node: bool = False) -> Any:
    """In a driver: get the detached actor `name` (namespace "trainyard") or create it from
    `cls(*args)`, and call its `method` (which must return soon); its result. One that is
    leaving just as it is got is replaced."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not ray.is_initialized():
        ray.init(logging_level=logging.ERROR, log_to_driver=False, namespace="trainyard")
    options: dict[str, Any] = {"name": name, "namespace": "trainyard", "lifetime": "detached", "get_if_exists": True,
                               "num_cpus": 0, "max_concurrency": 4, "max_restarts": 0}
    if on_this_node:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    actor_class = ray.remote(cls)
    for attempt in range(5):
        actor = actor_class.options(**options).remote(*args)
        try:
            return ray.get(getattr(actor, method).remote())
        except ray.exceptions.RayActorError:
            time.sleep(0.5 * (attempt + 1))
    raise RuntimeError(f"could not start the actor {name}")
