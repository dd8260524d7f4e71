"""Build and train straight from an experiment spec (what `build_training_config` returns).

    spec = build_training_config(args, "configs/")
    model, tokenizer = create_model_and_tokenizer(spec)
    results = train_model(spec, load_dataset("train.parquet"), "outputs/run1")

`train_model` runs the engine `Trainer` in this process and leaves everything in
`output_dir`: `checkpoints/`, `config.yaml` (the spec as run), `metrics.json`, and for a
Hugging Face model a `model/` directory that `name_or_path` can load again.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Mapping

from trainyard._logging import get_logger
from trainyard.engine.config import TrainingConfig
from trainyard.experiment import SECTIONS, model_recipe, validate

log = get_logger("trainyard")
_VAL_KEYS = ("validation", "val", "test")


def as_spec(config: Any) -> dict[str, Any]:
    """An experiment spec from a spec, a bare model section, or a TrainingConfig."""
    if isinstance(config, TrainingConfig):
        return {"training": config.to_dict()}
    if not isinstance(config, Mapping):
        raise TypeError(
            f"config must be an experiment spec (a dict with sections {list(SECTIONS)}, as build_training_config "
            f"returns) or a TrainingConfig, got {type(config).__name__}"
        )
    if not set(config) & set(SECTIONS):  # a bare model section
        return {"model": dict(config)}
    return dict(config)


def create_model_and_tokenizer(config: Any) -> tuple[Any, Any]:
    """(model, tokenizer) for the spec's model section: a built-in model (`name: gpt`) with
    its character tokenizer, or a local Hugging Face directory (`name_or_path: ...`)."""
    spec = as_spec(config)
    validate(spec)
    builder, model_config, tokenizer = model_recipe(spec)
    return builder(model_config), tokenizer


def prepare(config: Any, dataset: Any) -> tuple[dict[str, Any], Any, dict[str, Any], Any, Any, Any]:
    """(spec, builder, model config, tokenizer, train, val): the validated spec, its model
    recipe, and the data split and tokenized as `train_model` describes."""
    spec = as_spec(config)
    validate(spec)
    builder, model_config, tokenizer = model_recipe(spec)
    train, val = split_dataset(dataset, spec)
    max_len = model_config.get("max_seq_len")
    return spec, builder, model_config, tokenizer, tokenize_text(train, tokenizer, max_len), tokenize_text(val, tokenizer, max_len)


def train_model(config: Any, dataset: Any = None, output_dir: str | Path = "outputs") -> dict[str, Any]:
    """Train the spec's model on `dataset` and return the engine's results dict (plus
    `output_dir`).

    `dataset`: columns / samples (train only), a `(train, val)` pair, a mapping of splits
    (`train` and `validation`/`val`/`test`), or None for the spec's own data section. A
    `text` column is tokenized with the model's tokenizer.
    """
    from trainyard.engine.trainer import Trainer

    spec, builder, model_config, tokenizer, train, val = prepare(config, dataset)
    out = Path(output_dir)
    training_config = TrainingConfig.from_dict(spec.get("training") or {})
    if training_config.checkpoint_dir is None:
        training_config = training_config.replace(checkpoint_dir=str(out / "checkpoints"))
    # A factory, not a module: the Trainer seeds random_seed before building it, so the
    # initial weights are reproducible too.
    trainer = Trainer(functools.partial(builder, model_config), model_config, training_config, spec.get("task"))
    results = trainer.train(train, val)
    _write_outputs(out, spec, results, trainer.model, tokenizer)
    results["output_dir"] = str(out.resolve())
    return results


def split_dataset(dataset: Any, spec: Mapping[str, Any]) -> tuple[Any, Any]:
    """(train, val) from the forms `train_model` accepts."""
    if dataset is None:
        from trainyard.experiment import build_data

        data = dict(spec.get("data") or {})
        if not data:
            raise ValueError("train_model got no dataset and the spec has no data section: pass dataset=")
        return build_data(data, Path.cwd())
    if isinstance(dataset, tuple) and len(dataset) == 2:
        return dataset
    if isinstance(dataset, Mapping) and "train" in dataset and "input_ids" not in dataset and "text" not in dataset:
        val = next((dataset[k] for k in _VAL_KEYS if k in dataset), None)
        return dataset["train"], val
    return dataset, None


def tokenize_text(data: Any, tokenizer: Any, max_len: int | None) -> Any:
    """Columns with a `text` column and no `input_ids` get `input_ids` from `tokenizer`
    (cut at `max_len`); anything else is returned as it is."""
    if not isinstance(data, Mapping) or "text" not in data or "input_ids" in data:
        return data
    texts = list(data["text"])
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("the 'text' column must hold strings")
    from trainyard.data.tokenizer import CharTokenizer

    kwargs = {} if isinstance(tokenizer, CharTokenizer) or not max_len else {"truncation": True}
    ids = [tokenizer(t, max_length=max_len, **kwargs)["input_ids"] for t in texts]
    return {"input_ids": ids, **{k: v for k, v in data.items() if k != "text"}}


def _write_outputs(out: Path, spec: Mapping[str, Any], results: Mapping[str, Any], model: Any, tokenizer: Any) -> None:
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(_plain(dict(spec)), sort_keys=False))
    summary = results["metrics_summary"]
    metrics = {
        "final_loss": results["final_loss"],
        "final_perplexity": results["final_perplexity"],
        "best_epoch": results["best_epoch"],
        "training_time": results["training_time"],
        "checkpoint_path": results["checkpoint_path"],
        "epochs": json.loads(summary.to_json(orient="records")),
    }
    (out / "metrics.json").write_text(json.dumps(_plain(metrics), indent=2, allow_nan=True))
    if hasattr(model, "save_pretrained") and hasattr(tokenizer, "save_pretrained"):
        model.save_pretrained(out / "model")
        tokenizer.save_pretrained(out / "model")


def _plain(value: Any) -> Any:
    """YAML-safe containers: tuples become lists, keys strings."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
