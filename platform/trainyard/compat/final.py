"""Seed 004's `training.execution` names for the final training and its lineage, forwarded to
`trainyard.pipeline.final`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from trainyard.pipeline.final import FinalTrainingJob, lineage, train_final


def execute_final_training(best_config: Any, dataset: Any = None, *, workers: int = 2, use_gpu: bool = False,
                           output_dir: str | Path = "runs", name: str | None = None) -> FinalTrainingJob:  # fmt: skip
    """`trainyard.pipeline.final.train_final`: the best config trained on Ray Train workers."""
    return train_final(best_config, dataset, workers=workers, use_gpu=use_gpu, output_dir=output_dir, name=name)


def extract_lineage_from_best_model(job: FinalTrainingJob | str | os.PathLike) -> dict[str, Any]:
    """`trainyard.pipeline.final.lineage`: where the final model came from."""
    return lineage(job)
