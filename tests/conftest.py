"""Test-wide settings and fixtures (one Ray instance per session); tiny models live in tests/helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from tests.helpers import lm_samples  # noqa: E402


@pytest.fixture
def samples():
    return lm_samples()


@pytest.fixture
def ckdir(tmp_path):
    return str(tmp_path / "run")


ROOT = Path(__file__).resolve().parents[1]


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


@pytest.fixture(scope="module")
def process_group_of_one(tmp_path_factory):
    """A torch.distributed (gloo) process group of this process alone, as FSDP and DCP need;
    a file rendezvous, so no port can clash."""
    import torch.distributed as dist

    store = tmp_path_factory.mktemp("process_group") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
