"""Plain Ray tasks for work that is not a Ray Train run (a job-queue job's driver).

    task = start_task(fn, *args, num_cpus=1, on_this_node=True)
    task.done(); task.join(timeout); task.failure(); task.cancel()
"""

from __future__ import annotations

from typing import Any, Callable

from trainyard.execution.ray_env import ensure_ray


class RemoteTask:
    """A function running as a Ray task that this process launched."""

    def __init__(self, ref: Any):
        self._ref = ref

    def done(self) -> bool:
        import ray

        ready, _ = ray.wait([self._ref], timeout=0)
        return bool(ready)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the task to end (at most `timeout` seconds); whether it has."""
        import ray

        ready, _ = ray.wait([self._ref], timeout=timeout)
        return bool(ready)

    def failure(self) -> str | None:
        """How a finished task failed (`Type: message`); None if it returned or was cancelled."""
        import ray

        try:
            ray.get(self._ref)
        except ray.exceptions.TaskCancelledError:
            return None
        except Exception as e:  # noqa: BLE001 - whatever ended the task is its failure
            return f"{type(e).__name__}: {e}"
        return None

    def cancel(self) -> None:
        """Drop the task from Ray's queue (a task already running is left to stop itself)."""
        import ray

        ray.cancel(self._ref)


def start_task(fn: Callable[..., Any], *args: Any, num_cpus: float = 1, num_gpus: float = 0, on_this_node: bool = False) -> RemoteTask:
    """Run `fn(*args)` as a Ray task, never retried; `on_this_node` pins it to this node
    (e.g. it writes a file only this machine has)."""
    import ray

    ensure_ray()
    options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_retries": 0}
    if on_this_node:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return RemoteTask(ray.remote(fn).options(**options).remote(*args))
