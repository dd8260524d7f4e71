"""Seed 004's `training.core` and `training.config`, translated onto trainyard: an
experiment spec is built from config files and trained, and models evaluated.

    spec = build_training_config(args, "configs/")                 # an experiment spec (a dict)
    model, tokenizer = create_model_and_tokenizer(spec)
    results = train_model(spec, load_dataset("train.parquet"), "outputs/run1")
    compute_metrics(logits, labels); evaluate_model(model, val_data)

`train_model` runs the Trainer in this process and leaves everything in `output_dir`:
`checkpoints/`, `config.yaml` (the spec as run), `metrics.json`, and for a Hugging Face
model a `model/` directory that `name_or_path` can load again. `compute_metrics` and
`evaluate_model` count as training does (`trainyard.engine.metrics`), so a model evaluated
here gets exactly the `val/loss` its training run reported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml
from torch import nn

from trainyard import _yaml
from trainyard.engine.config import FIELD_NAMES
from trainyard.engine.context import LocalContext
from trainyard.engine.data.collate import Collator
from trainyard.engine.data.feed import make_loader
from trainyard.engine.data.inputs import as_dataset
from trainyard.engine.data.order import eval_batches
from trainyard.engine.metrics import MetricSums, evaluation_sums
from trainyard.engine.setup import forward_kwargs
from trainyard.engine.task import TASKS, TaskSpec, as_task_spec, compute_loss, count_targets, detect_task, prepare_targets
from trainyard.execution.ingest import run_inputs
from trainyard.experiment.build import build
from trainyard.experiment.recipe import model_recipe
from trainyard.experiment.spec import ExperimentSpec, apply_overrides, as_spec, load_spec, parse_spec
from trainyard.storage import relative_to


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


def build_training_config(args: Any = None, config_dir: str | Path = ".") -> dict[str, Any]:
    """An experiment spec (sections model, data, task, training) from the YAML files of
    `config_dir`, with the command line's choices applied, validated.

    Files: `args.config` if given (relative to `config_dir`), else `experiment.yaml` and/or
    one file per section (`model.yaml`, `data.yaml`, `training.yaml`) in `config_dir`.
    `args` is an argparse Namespace, a dict or a list of `key=value` strings; from a
    Namespace or dict, `overrides` (a list of `key=value`) and any attribute named like a
    TrainingConfig field (and not None) apply, in that order. Relative data paths are
    resolved against `config_dir`, so the spec works from any directory.
    """
    config_dir = Path(config_dir)
    if not config_dir.is_dir():
        raise FileNotFoundError(f"config_dir {config_dir} is not a directory")
    options = _as_options(args)
    if options.get("config"):
        chosen = Path(options["config"])
        path = chosen if chosen.is_absolute() or chosen.is_file() else config_dir / chosen
        spec = load_spec(path).to_dict()
    else:
        spec = {}
        if (config_dir / "experiment.yaml").is_file():
            spec = load_spec(config_dir / "experiment.yaml").to_dict()
        for section in ("model", "data", "training"):
            file = config_dir / f"{section}.yaml"
            if file.is_file():
                content = _yaml.load_file(file, f"{section} config") or {}
                if not isinstance(content, Mapping):
                    raise ValueError(f"{file}: a section file holds a mapping of {section} settings")
                spec[section] = {**(spec.get(section) or {}), **content}
        if not spec:
            raise FileNotFoundError(
                f"{config_dir} has no experiment.yaml, model.yaml, data.yaml or training.yaml; "
                "pass args with config=<file> or put those files there"
            )
    spec = apply_overrides(spec, list(options.get("overrides") or []))
    flags = {k: v for k, v in options.items() if k in FIELD_NAMES and v is not None}
    if flags:
        spec["training"] = {**(spec.get("training") or {}), **flags}
    data = spec.get("data") or {}
    for key in ("train", "val"):
        if isinstance(data.get(key), str):
            data[key] = relative_to(config_dir, data[key])
    parse_spec(spec)
    return spec


def _as_options(args: Any) -> dict[str, Any]:
    if args is None:
        return {}
    if isinstance(args, Mapping):
        return dict(args)
    if isinstance(args, (list, tuple)):
        if not all(isinstance(a, str) for a in args):
            raise TypeError("args as a list must hold key=value strings")
        return {"overrides": list(args)}
    if hasattr(args, "__dict__"):
        return dict(vars(args))
    raise TypeError(f"args must be an argparse Namespace, a dict or a list of key=value strings, got {type(args).__name__}")


def compute_metrics(eval_pred: Any, labels: Any = None, task: str | None = None, pad_token_id: int | None = None) -> dict[str, float]:
    """Loss, perplexity, accuracy (and exact_match for language modelling) of predictions.

    `compute_metrics(logits, labels)` or `compute_metrics((logits, labels))` (a Hugging
    Face `EvalPrediction` works too). Tensors or numpy arrays. Language-modelling labels
    are aligned with the inputs (position t predicts t + 1; -100 is ignored), as in
    training. `task` is inferred from the shapes when not given.
    """
    logits = eval_pred
    if labels is None:
        logits, labels = _unpack(eval_pred)
    logits, labels = torch.as_tensor(logits), torch.as_tensor(labels)
    task = task or _infer_task(logits, labels)
    if task not in TASKS:
        raise ValueError(f"task={task!r} is invalid: must be one of {list(TASKS)}")
    # Without a "labels" key, language-modelling targets are the inputs with padding ignored.
    mask_padding = task == "language_modeling" and pad_token_id is not None
    batch = {"input_ids": labels} if mask_padding else {"input_ids": labels, "labels": labels}
    target = prepare_targets(task, batch, pad_token_id)
    sums = MetricSums()
    sums.add(compute_loss(task, logits, target), count_targets(task, target))
    return sums.metrics("", task)


def evaluate_model(
    model: nn.Module,
    data: Any,
    task_spec: Any = None,
    batch_size: int = 32,
    pad_token_id: int | None = None,
    device: str | None = None,
) -> dict[str, float]:
    """Evaluate `model` on `data` (any form `Trainer.train` accepts) and return
    `{loss, perplexity, accuracy, exact_match}`: what training reports as `val/*`."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"evaluate_model needs a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1")
    dataset = as_dataset(data, "data")
    if dataset is None or len(dataset) == 0:
        raise ValueError("evaluate_model got no samples: pass a non-empty dataset")
    spec: TaskSpec | None = as_task_spec(task_spec)
    task = spec.name if spec is not None else detect_task(dataset[0])[0]
    if pad_token_id is None and spec is not None:
        pad_token_id = spec.preprocessing_config.get("pad_token_id")
    target_device = torch.device(device) if device else next(model.parameters()).device
    model.to(target_device)
    collate = Collator(pad_token_id)
    loader = make_loader(dataset, eval_batches(len(dataset), batch_size, 0, 1), collate, 0, False)
    sums = evaluation_sums(model, loader, task, pad_token_id, target_device, forward_kwargs(model))
    return sums.metrics("", task)


def _unpack(eval_pred: Any) -> tuple[Any, Any]:
    if hasattr(eval_pred, "predictions") and hasattr(eval_pred, "label_ids"):
        return eval_pred.predictions, eval_pred.label_ids
    if isinstance(eval_pred, Mapping) and {"logits", "labels"} <= set(eval_pred):
        return eval_pred["logits"], eval_pred["labels"]
    if isinstance(eval_pred, (tuple, list)) and len(eval_pred) == 2:
        return eval_pred
    raise TypeError(
        "compute_metrics takes (logits, labels), a (logits, labels) pair, or an object with "
        f".predictions and .label_ids; got {type(eval_pred).__name__}"
    )


def _infer_task(logits: torch.Tensor, labels: torch.Tensor) -> str:
    if labels.is_floating_point():
        return "regression"
    if logits.dim() == 3:
        return "language_modeling"
    if logits.dim() == 2 and logits.shape[-1] > 1:
        return "classification"
    raise ValueError(
        f"cannot tell the task from logits shaped {tuple(logits.shape)} and labels shaped {tuple(labels.shape)}: "
        f"pass task= one of {list(TASKS)}"
    )
