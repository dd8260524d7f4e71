"""One local Ray instance for the whole test session, started the way the platform does."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ray_session():
    ray = pytest.importorskip("ray")
    # Ray's workers and Train controller unpickle objects defined in tests/: put the repo
    # on their path (they inherit this process's environment).
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    from trainyard.execution.ray_env import ensure_ray

    if ray.is_initialized():
        ray.shutdown()
    ensure_ray(num_cpus=4)
    yield ray
    ray.shutdown()
