"""Seeding, and capturing / restoring every RNG the loop can touch (for exact resume)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too


def capture() -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors for state.pt, JSON-able parts for trainer_state.json)."""
    version, mt_state, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    tensors = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    plain = {
        "python": [version, list(mt_state), gauss],
        "numpy": [np_kind, int(np_pos), int(np_has_gauss), float(np_gauss)],
    }
    return tensors, plain


def check(tensors: dict[str, Any], plain: dict[str, Any]) -> None:
    """Raise (TypeError, ValueError, KeyError, ...) unless `restore` would take these states:
    they are tried on throwaway generators, so the run's own streams are not touched."""
    version, mt_state, gauss = plain["python"]
    random.Random().setstate((version, tuple(mt_state), gauss))
    np_kind, np_pos, np_has_gauss, np_gauss = plain["numpy"]
    np.random.RandomState().set_state((np_kind, tensors["numpy_keys"].numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.Generator().set_state(tensors["torch"])
    if not isinstance(tensors["cuda"], (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in tensors["cuda"]):
        raise TypeError(f"cuda states must be a list of tensors, not {type(tensors['cuda']).__name__}")


def restore(tensors: dict[str, Any], plain: dict[str, Any]) -> None:
    version, mt_state, gauss = plain["python"]
    random.setstate((version, tuple(mt_state), gauss))
    np_kind, np_pos, np_has_gauss, np_gauss = plain["numpy"]
    np.random.set_state((np_kind, tensors["numpy_keys"].numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(tensors["torch"])
    if tensors["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(tensors["cuda"][: torch.cuda.device_count()])
