"""The export bundle of a trained run: one way, wherever the run trained.

    export_trained(trainer, data, out_dir, task)    the trained model, with its configs and
                                                    tokenizer; the example input from `data`

In-process runs (`export_bundle=True`) export when training ends, through the
`ExportBundle` observer, so a user's `on_train_end` already finds `results["export_path"]`.
Runs on Ray Train export on the driver once the workers are done, from the final
checkpoint's weights (gathered whole under FSDP), into the run's directory. The main job's
export stage calls the same function on its final checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainyard.engine.data.collate import Collator
from trainyard.engine.data.inputs import as_dataset
from trainyard.engine.hooks import Observer
from trainyard.engine.model_config import model_config_dict
from trainyard.export.bundle import export_model


def export_trained(trainer: Any, data: Any, out_dir: Path, task: str) -> Path:
    """Export `trainer.model` with its configs and tokenizer into `out_dir`; its first two
    samples of `data` (any form training takes) are the example input."""
    dataset = as_dataset(data, "data")
    samples = [dataset[i] for i in range(min(2, len(dataset)))]
    example = Collator(trainer.pad_token_id)(samples)["input_ids"]
    spec = trainer.task_spec.to_dict() if trainer.task_spec is not None else {"name": task}
    cfg = trainer.training_config
    formats = cfg.export_formats
    if hasattr(trainer.model, "save_pretrained") and "hf" not in formats:
        formats = (*formats, "hf")  # a Hugging Face model comes out as one too
    return export_model(
        trainer.model, example, out_dir, formats, tolerance=cfg.export_tolerance,
        training_config=cfg.to_dict(), task_spec=spec, model_config=model_config_dict(trainer.config),
        tokenizer=trainer.tokenizer, merge_adapters=getattr(trainer, "merge_adapters", True),
    )


class ExportBundle(Observer):
    """`export_bundle=True` in this process: export the trained model into `<run_dir>/export`
    when training ends, and put the path in `results["export_path"]`."""

    def __init__(self):
        self.train_dataset: Any = None

    def on_train_begin(self, trainer, train_dataset, val_dataset) -> None:
        self.train_dataset = train_dataset

    def on_train_end(self, trainer, results) -> None:
        if not trainer.context.is_main or trainer.context.shards_state:  # a shard is no model: see launch.fit
            return
        results["export_path"] = str(export_trained(trainer, self.train_dataset, Path(results["run_dir"]) / "export", results["task"]))
