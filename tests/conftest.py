"""Test-wide settings and fixtures; the tiny models live in tests/helpers.py."""

from __future__ import annotations

import os

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
