"""seeds/004_4c30e7897144f129.txt: every import path, and its examples run on trainyard."""

import argparse
import json
import subprocess
import sys
import warnings

import pytest
import torch
import yaml
from trainyard.compat import LEGACY_MODULES, disable_legacy_imports, enable_legacy_imports

from tests.conftest import ROOT

# (path, names the seed imports from it, the replacement it must name if deprecated)
SEED_PATHS = [
    ("training", ["train_model", "create_model_and_tokenizer", "run_local_hpo_sweep"], None),
    ("training.core", ["train_model", "create_model_and_tokenizer", "compute_metrics", "evaluate_model"], None),
    ("training.core.cv_utils", ["create_kfold_splits"], None),
    ("training.hpo", ["run_local_hpo_sweep", "extract_best_config_from_study", "create_search_space"], None),
    ("training.execution", ["execute_final_training", "extract_lineage_from_best_model", "create_run_context"], None),
    ("training.config", ["build_training_config"], None),
    ("training.cli", ["main"], None),
    ("data.loaders", ["load_dataset"], None),
    ("training.trainer", ["train_model"], "training.core.trainer"),
    ("training.model", ["create_model_and_tokenizer"], "training.core.model"),
    ("training.metrics", ["compute_metrics"], "training.core.metrics"),
    ("training.evaluator", ["evaluate_model"], "training.core.evaluator"),
    ("hpo", ["run_local_hpo_sweep", "extract_best_config_from_study", "create_search_space"], "training.hpo"),
    ("training_exec", ["execute_final_training", "extract_lineage_from_best_model"], "training.execution"),
    ("training.distributed", ["create_run_context"], "training.execution"),
    ("training.cv_utils", ["create_kfold_splits"], "training.core.cv_utils"),
    ("training.data", ["load_dataset"], "data.loaders"),
]
HOMES = {
    "train_model": "trainyard.compat.training", "create_model_and_tokenizer": "trainyard.compat.training",
    "compute_metrics": "trainyard.compat.training", "evaluate_model": "trainyard.compat.training",
    "run_local_hpo_sweep": "trainyard.compat.sweeps", "extract_best_config_from_study": "trainyard.compat.sweeps",
    "create_search_space": "trainyard.compat.sweeps", "execute_final_training": "trainyard.compat.final",
    "extract_lineage_from_best_model": "trainyard.compat.final", "create_run_context": "trainyard.execution.contexts",
    "build_training_config": "trainyard.compat.training", "main": "trainyard.cli.main",
    "create_kfold_splits": "trainyard.data.splits", "load_dataset": "trainyard.data.loaders",
}


@pytest.fixture
def legacy():
    enable_legacy_imports()
    yield
    disable_legacy_imports()


@pytest.mark.parametrize(("path", "names", "replacement"), SEED_PATHS, ids=[p[0] for p in SEED_PATHS])
def test_every_seed_import_path_forwards_to_the_trainyard_function(legacy, path, names, replacement):
    import importlib

    assert LEGACY_MODULES[path][1] == replacement
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(path)
    deprecations = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    if replacement:
        assert deprecations == [f"Importing from '{path}' is deprecated. Please use '{replacement}' instead. "
                                "This shim will be removed in a future release."]
        importlib.import_module(replacement)  # the path the warning names exists
    else:
        assert deprecations == []
    for name in names:
        assert getattr(module, name) is getattr(importlib.import_module(HOMES[name]), name)


def test_importing_the_legacy_packages_loads_neither_torch_ray_nor_optuna():
    code = ("import sys, trainyard.compat as c; c.enable_legacy_imports(); "
            "import training, training.core, training.hpo, training.execution, data.loaders; "
            "print(sorted(m for m in ('torch', 'ray', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_users_own_training_package_wins(legacy, tmp_path, monkeypatch):
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "__init__.py").write_text("OWN = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("training", None)
    try:
        import training

        assert training.OWN and not hasattr(training, "train_model")
    finally:
        sys.modules.pop("training", None)


def _config_dir(tmp_path):
    d = tmp_path / "configs"
    d.mkdir()
    (d / "model.yaml").write_text("name: gpt\nd_model: 16\nn_layers: 1\nn_heads: 2\nmax_seq_len: 24\n")
    (d / "training.yaml").write_text("epochs: 2\nbatch_size: 4\nlearning_rate: 1e-3\nrandom_seed: 3\n")
    (d / "data.yaml").write_text("train: train.jsonl\n")
    return d


def test_basic_training_example(legacy, tmp_path, monkeypatch):
    from data.loaders import load_dataset
    from training.config import build_training_config
    from training.core import create_model_and_tokenizer, train_model

    config_dir = _config_dir(tmp_path)
    rows = [{"text": t} for t in ["the cat sat", "a dog ran far", "héllo wörld"] * 4]
    (config_dir / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(overrides=["model.d_model=32"], epochs=3, learning_rate=None)

    config = build_training_config(args, config_dir)
    assert config["model"]["d_model"] == 32 and config["training"]["epochs"] == 3
    assert config["training"]["learning_rate"] == 1e-3  # a flag left at None does not override
    data_asset = config["data"]["train"]
    assert data_asset == str((config_dir / "train.jsonl").resolve())  # relative to the config dir
    dataset = load_dataset(data_asset)
    model, tokenizer = create_model_and_tokenizer(config)
    assert model.config.vocab_size == tokenizer.vocab_size == 259  # bytes + 3 specials
    assert tokenizer.decode(tokenizer.encode("héllo")) == "héllo"
    metrics = train_model(config, dataset, "out")

    out = tmp_path / "out"
    assert metrics["output_dir"] == str(out) and len(metrics["metrics_summary"]) == 3
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["d_model"] == 32
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["final_loss"] == metrics["final_loss"] and len(saved["epochs"]) == 3
    assert metrics["checkpoint_path"].startswith(str(out / "checkpoints"))

    # train_model is the engine, nothing hidden: the same run by hand gives the same losses.
    from trainyard import Trainer, TrainingConfig
    from trainyard.experiment.recipe import tokenize_text

    by_hand = Trainer(lambda: create_model_and_tokenizer(config)[0], {"pad_token_id": 0}, TrainingConfig(epochs=3, batch_size=4, learning_rate=1e-3, random_seed=3,
                      checkpoint_dir=str(tmp_path / "hand"))).train(tokenize_text(dataset, tokenizer, 24))
    assert by_hand["loss_history"] == metrics["loss_history"]

    # Running again into the same output_dir would overwrite the saved run: refused.
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train_model(config, dataset, "out")


def test_build_training_config_errors_name_the_problem(tmp_path):
    from trainyard.compat.training import build_training_config

    with pytest.raises(FileNotFoundError, match="not a directory"):
        build_training_config(None, tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="experiment.yaml, model.yaml"):
        build_training_config(None, tmp_path)
    (tmp_path / "training.yaml").write_text("lerning_rate: 0.1\n")
    with pytest.raises(TypeError, match="lerning_rate"):
        build_training_config(None, tmp_path)
    (tmp_path / "training.yaml").write_text("epochs: 0\n")
    with pytest.raises(ValueError, match="epochs"):
        build_training_config(None, tmp_path)
    (tmp_path / "training.yaml").write_text("epochs: 1\n")
    with pytest.raises(ValueError, match="unknown model 'gtp'"):
        build_training_config(["model.name=gtp"], tmp_path)
    spec = build_training_config({"config": str(ROOT / "jobs/configs/addition.yaml")}, tmp_path)
    assert spec["data"]["name"] == "addition"  # an explicit experiment file


def test_create_model_and_tokenizer_for_the_addition_data_uses_its_tokenizer():
    from trainyard.compat.training import create_model_and_tokenizer
    from trainyard.data.addition import TOKENIZER, seq_len

    spec = yaml.safe_load((ROOT / "jobs/configs/addition.yaml").read_text())
    model, tokenizer = create_model_and_tokenizer(spec)
    assert tokenizer.itos == TOKENIZER.itos and tokenizer.encode("123+456=") == TOKENIZER.encode("123+456=")  # the addition data's own
    assert "least-significant first" in tokenizer.usage and model.config.vocab_size == TOKENIZER.vocab_size
    assert model.config.max_seq_len == seq_len(3)
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        create_model_and_tokenizer({"model": {"name": "gpt", "vocab_size": 4, "tokenizer": "bytes"}})


def test_compute_metrics_matches_cross_entropy_and_takes_hf_eval_predictions():
    from types import SimpleNamespace

    from trainyard.compat.training import compute_metrics

    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(3, 5, 7, generator=g), torch.randint(0, 7, (3, 5), generator=g)
    labels[0, 3] = -100
    shifted_logits, shifted = logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1)
    expected = torch.nn.functional.cross_entropy(shifted_logits, shifted, ignore_index=-100).item()
    keep = shifted != -100
    accuracy = (shifted_logits.argmax(-1)[keep] == shifted[keep]).float().mean().item()
    metrics = compute_metrics(logits, labels)
    assert metrics["loss"] == pytest.approx(expected) and metrics["accuracy"] == pytest.approx(accuracy)
    assert metrics["perplexity"] == pytest.approx(torch.tensor(expected).exp().item())
    assert compute_metrics((logits.numpy(), labels.numpy())) == metrics
    assert compute_metrics(SimpleNamespace(predictions=logits.numpy(), label_ids=labels.numpy())) == metrics

    class_logits, classes = torch.randn(6, 3, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])
    out = compute_metrics(class_logits, classes)
    assert out["loss"] == pytest.approx(torch.nn.functional.cross_entropy(class_logits, classes).item())
    assert out["accuracy"] == pytest.approx((class_logits.argmax(-1) == classes).float().mean().item())
    with pytest.raises(TypeError, match="predictions"):
        compute_metrics(object())


def test_evaluate_model_reproduces_the_trainers_validation_numbers(samples, tmp_path):
    from trainyard import Trainer, TrainingConfig
    from trainyard.compat.training import evaluate_model

    from tests.helpers import TinyLM

    torch.manual_seed(0)
    trainer = Trainer(TinyLM(), None, TrainingConfig(epochs=2, batch_size=4, checkpoint_dir=str(tmp_path / "r")))
    results = trainer.train(samples, samples[:10])
    metrics = evaluate_model(trainer.model, samples[:10], batch_size=3)
    last = results["metrics_summary"].iloc[-1]
    assert metrics["loss"] == pytest.approx(last["val/loss"], rel=1e-6)
    assert metrics["accuracy"] == pytest.approx(last["val/accuracy"], rel=1e-6)
    assert trainer.model.training  # its mode is left as it was
    with pytest.raises(ValueError, match="data is empty"):
        evaluate_model(trainer.model, [])


def test_hf_model_directory_trains_and_saves_a_loadable_model(tmp_path):
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from trainyard.compat.training import create_model_and_tokenizer, evaluate_model, train_model
    from trainyard.engine.checkpoint import load
    from trainyard.experiment.recipe import tokenize_text
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[EOS]", *"the cat sat on a mat dog ran".split()]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]").save_pretrained(tmp_path / "hf")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(words), n_positions=16, n_embd=16, n_layer=1, n_head=2)).save_pretrained(tmp_path / "hf")

    spec = {"model": {"name_or_path": str(tmp_path / "hf")}, "training": {"epochs": 2, "batch_size": 2, "learning_rate": 1e-2}}
    model, tokenizer = create_model_and_tokenizer(spec)
    assert type(model).__name__ == "GPT2LMHeadModel" and tokenizer.pad_token_id == 0
    data = {"text": ["the cat sat on a mat", "the dog ran", "a cat ran"] * 4}
    results = train_model(spec, data, tmp_path / "out")
    assert results["metrics_summary"]["train/loss"].iloc[-1] < results["metrics_summary"]["train/loss"].iloc[0]

    reloaded, tok = create_model_and_tokenizer({"model": {"name_or_path": str(tmp_path / "out" / "model")}})
    final = load(results["checkpoint_path"]).model
    assert all(torch.equal(t, final[k]) for k, t in reloaded.state_dict().items() if k in final)
    assert evaluate_model(reloaded, tokenize_text(data, tok, None), pad_token_id=tok.pad_token_id)["loss"] < 10

    with pytest.raises(FileNotFoundError, match="no config.json"):
        create_model_and_tokenizer({"model": {"name_or_path": str(tmp_path)}})

