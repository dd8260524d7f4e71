"""Build and train straight from an experiment spec (what `build_training_config` returns).

    spec = build_training_config(args, "configs/")
    model, tokenizer = create_model_and_tokenizer(spec)
    results = train_model(spec, load_dataset("train.parquet"), "outputs/run1")

`train_model` runs the Trainer in this process and leaves everything in `output_dir`:
`checkpoints/`, `config.yaml` (the spec as run), `metrics.json`, and for a Hugging Face
model a `model/` directory that `name_or_path` can load again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from trainyard.engine.context import LocalContext
from trainyard.execution.ingest import run_inputs
from trainyard.experiment.build import build
from trainyard.experiment.recipe import model_recipe
from trainyard.experiment.spec import ExperimentSpec, as_spec


def create_model_and_tokenizer(config: Any) -> tuple[Any, Any]:
    """(model, tokenizer) for the spec's model section: a built-in model (`name: gpt`) with
    its character tokenizer, or a local Hugging Face directory (`name_or_path: ...`)."""
    builder, model_config, tokenizer = model_recipe(as_spec(config))
    return builder(model_config), tokenizer


def train_model(config: Any, dataset: Any = None, output_dir: str | Path = "outputs") -> dict[str, Any]:
    """Train the spec's model on `dataset` and return the engine's results dict (plus
    `output_dir`).

    `dataset`: columns / samples (train only), a `(train, val)` pair, a mapping of splits
    (`train` and `validation`/`val`/`test`), or None for the spec's own data section. A
    `text` column is tokenized with the model's tokenizer.
    """
    exp = build(config, dataset)
    out = Path(output_dir)
    # A factory, not a module: the Trainer seeds random_seed before building it, so the
    # initial weights are reproducible too.
    trainer = exp.trainer()
    cfg = exp.training_config
    data = run_inputs(exp.train_data, exp.val_data, exp.model_config, exp.task_spec, on_ray=False)
    results = trainer.run(LocalContext(cfg.device, run_dir=cfg.checkpoint_dir or out / "checkpoints"), *data)
    _write_outputs(out, exp.spec, results, trainer.model, exp.tokenizer)
    results["output_dir"] = str(out.resolve())
    return results


def _write_outputs(out: Path, spec: ExperimentSpec, results: Mapping[str, Any], model: Any, tokenizer: Any) -> None:
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    summary = results["metrics_summary"]
    metrics = {
        "final_loss": results["final_loss"],
        "final_perplexity": results["final_perplexity"],
        "best_epoch": results["best_epoch"],
        "training_time": results["training_time"],
        "checkpoint_path": results["checkpoint_path"],
        "epochs": json.loads(summary.to_json(orient="records")),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=True))
    if hasattr(model, "save_pretrained") and hasattr(tokenizer, "save_pretrained"):
        model.save_pretrained(out / "model")
        tokenizer.save_pretrained(out / "model")
