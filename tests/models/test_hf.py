"""Hugging Face models by Hub id or directory, through Hugging Face's own cache and offline
conventions. Nothing is downloaded: a tiny GPT-2 is built from its config and laid out in a
cache of the test's own (HF_HOME), the way `hf download` leaves one."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT

transformers = pytest.importorskip("transformers")
WORDS = ["[PAD]", "[UNK]", "[EOS]", *"the cat sat on a mat dog ran".split()]
SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"  # a commit hash, as the cache names snapshots


def save_tiny_gpt2(directory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]").save_pretrained(directory)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(WORDS), n_positions=16, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=WORDS.index("[EOS]"), eos_token_id=WORDS.index("[EOS]"))  # no dropout: runs compare exactly
    GPT2LMHeadModel(config).save_pretrained(directory)
    return directory


def save_tiny_llama(directory):
    from transformers import LlamaConfig, LlamaForCausalLM

    save_tiny_gpt2(directory)  # its tokenizer; the model below replaces the GPT-2
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=16, pad_token_id=0, bos_token_id=2, eos_token_id=2)
    for stale in ("model.safetensors", "config.json", "generation_config.json"):
        (directory / stale).unlink(missing_ok=True)
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    """An HF_HOME whose hub cache holds `tiny-org/tiny-gpt2` at `main`, as a download leaves it."""
    home = tmp_path_factory.mktemp("hf_home")
    repo = home / "hub" / "models--tiny-org--tiny-gpt2"
    save_tiny_gpt2(repo / "snapshots" / SNAPSHOT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SNAPSHOT)
    return home


def offline(hf_home):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return {**env, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}


SCRIPT = """
import json, sys
from trainyard.compat.training import create_model_and_tokenizer, train_model
spec = {"model": json.loads(sys.argv[1]), "training": {"epochs": 2, "batch_size": 2, "learning_rate": 1e-2, "activation_checkpointing": True}}
model, tokenizer = create_model_and_tokenizer(spec)
results = train_model(spec, {"text": ["the cat sat on a mat", "the dog ran", "a cat ran"] * 4}, sys.argv[2])
print(json.dumps({"model": type(model).__name__, "pad": tokenizer.pad_token_id, "dtype": str(next(model.parameters()).dtype),
                  "losses": results["metrics_summary"]["train/loss"].tolist()}))
"""


def test_a_hub_id_found_only_in_an_offline_cache_loads_and_trains(hf_home, tmp_path):
    section = {"name": "hf", "name_or_path": "tiny-org/tiny-gpt2", "revision": "main"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(section), str(tmp_path / "out")], cwd=ROOT, env=offline(hf_home),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["model"] == "GPT2LMHeadModel" and out["pad"] == 0  # the model and the tokenizer from the same place
    assert out["losses"][-1] < out["losses"][0]  # it trains, with the model's own gradient checkpointing on


def test_a_hub_id_missing_from_an_offline_cache_is_one_line_naming_it(hf_home, tmp_path):
    config = tmp_path / "hf.yaml"
    config.write_text("model: {name: hf, name_or_path: nobody/missing-model}\ndata: {name: addition}\n")
    proc = subprocess.run([sys.executable, "-m", "trainyard.cli.main", "train", str(config)], cwd=tmp_path, env=offline(hf_home),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Hugging Face model 'nobody/missing-model' is not in the cache" in proc.stderr and "HF_HUB_OFFLINE is set" in proc.stderr


def test_dtype_and_gradient_checkpointing_go_through_the_models_own_switches(tmp_path):
    from trainyard.engine.setup import checkpoint_activations
    from trainyard.models import hf

    directory = save_tiny_gpt2(tmp_path / "tiny")
    model = hf.model_builder(str(directory), None, dtype="bfloat16")(None)
    assert next(model.parameters()).dtype == torch.bfloat16
    model = hf.model_builder(str(directory), None)(None)
    checkpointing = lambda: any(getattr(m, "gradient_checkpointing", False) for m in model.modules())  # noqa: E731
    assert next(model.parameters()).dtype == torch.float32 and not checkpointing()
    assert checkpoint_activations(model) >= 1 and checkpointing()  # its own switch, not trainyard's block wrapping
    with pytest.raises(ValueError, match=r"model.dtype='int8' must be one of \['float32', 'bfloat16', 'float16', 'auto'\]"):
        hf.model_builder(str(directory), None, dtype="int8")


@pytest.mark.parametrize("adapters", [False, True], ids=["full", "lora"])
def test_training_builds_no_generation_cache_and_the_model_keeps_it_for_generation(tmp_path, adapters):
    """Hugging Face models build their key/value cache in every forward (config.use_cache),
    training ones too: a concatenation per layer kept for backward, 5% of a LoRA step. It is
    not built while trainyard trains, and the model keeps the setting for generation."""
    from trainyard import Trainer, TrainingConfig
    from trainyard.models import hf

    model = hf.model_builder(str(save_tiny_gpt2(tmp_path / "tiny")), None)(None)
    caches = []
    model.register_forward_hook(lambda m, args, out: caches.append(out.past_key_values) if m.training else None)
    peft = {"method": "lora", "r": 2, "target_modules": ["c_attn"]} if adapters else None
    ids = [torch.arange(1, 9) % 8 + 1 for _ in range(8)]
    Trainer(model, {"pad_token_id": 0}, TrainingConfig(epochs=1, batch_size=4, checkpoint_dir=str(tmp_path / "run")),
            task_spec="language_modeling", peft_config=peft).train(ids)
    assert len(caches) == 2 and caches == [None, None]
    assert model.config.use_cache is True
    if not adapters:  # (with adapters the hook is on the PEFT model trainyard built around this one)
        model.train()
        assert model(torch.arange(1, 9)[None]).past_key_values is None  # training: none, unless asked
        assert model(torch.arange(1, 9)[None], use_cache=True).past_key_values is not None
    model.eval()
    assert model(torch.arange(1, 9)[None]).past_key_values is not None  # generation as before


@pytest.mark.parametrize("section, message", [
    ({"name": "hf"}, "model.name=hf needs name_or_path"),
    ({"name": "gpt", "name_or_path": "gpt2"}, "a Hugging Face model is name: hf"),
    ({"name": "gpt", "dtype": "bfloat16"}, "model.dtype is for a Hugging Face model"),
])
def test_a_model_section_that_mixes_kinds_says_which_it_is(section, message):
    from trainyard.experiment.sections import check_model_section

    with pytest.raises(ValueError, match=message):
        check_model_section(section)


def test_a_hugging_face_model_comes_out_as_a_model_directory_checked_like_the_other_formats(tmp_path):
    from trainyard.experiment import build

    directory = save_tiny_gpt2(tmp_path / "tiny")
    spec = {"model": {"name": "hf", "name_or_path": str(directory)},
            "training": {"epochs": 1, "batch_size": 2, "learning_rate": 1e-2, "export_bundle": True, "export_formats": ["torchscript"],
                         "checkpoint_dir": str(tmp_path / "run")}}
    exp = build(spec, dataset={"text": ["the cat sat on a mat", "the dog ran", "a cat ran"] * 2})
    trainer = exp.trainer()
    results = trainer.train(exp.train_data, exp.val_data)
    bundle = tmp_path / "run" / "export"
    assert results["export_path"] == str(bundle)
    parity = json.loads((bundle / "MANIFEST.json").read_text())["parity"]
    assert set(parity) == {"torchscript", "hf"} and parity["hf"]["max_abs_error"] <= 1e-5  # hf/ added for a Hugging Face model
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(bundle / "hf")
    tokenizer = transformers.AutoTokenizer.from_pretrained(bundle / "hf")  # the tokenizer is in the directory too
    ids = torch.tensor([tokenizer("the cat ran")["input_ids"]])
    trained = trainer.model.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, trained(ids).logits, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_a_hugging_face_model_on_two_ray_workers_equals_one_process_with_the_global_batch(ray_session, tmp_path, architecture):
    """DDP and FSDP (the model's repeated blocks sharded apart), a GPT-2 and a Llama."""
    import ray.train
    from trainyard.experiment import build

    directory = (save_tiny_gpt2 if architecture == "gpt2" else save_tiny_llama)(tmp_path / "tiny")
    text = {"text": ["the cat sat on a mat", "the dog ran", "a cat ran", "the mat sat", "a dog sat on the cat", "the cat"] * 4}

    def run(batch_size, parallelism="ddp", **options):
        spec = {"model": {"name": "hf", "name_or_path": str(directory)},
                "training": {"epochs": 2, "batch_size": batch_size, "learning_rate": 1e-2, "random_seed": 3, "parallelism": parallelism}}
        exp = build(spec, dataset=(text, text))
        folder = str(tmp_path / f"run-{batch_size}-{parallelism}")
        results = exp.trainer(exp.training_config.replace(checkpoint_dir=folder), **options).train(exp.train_data, exp.val_data)
        return results["metrics_summary"][["train/loss", "val/loss"]].values.ravel().tolist()

    one = run(8)
    storage = ray.train.RunConfig(storage_path=str(tmp_path / "storage"))
    assert run(4, scaling=2, run_config=storage) == pytest.approx(one, abs=1e-5)  # padded texts, attention masks and all
    assert run(4, "fsdp", scaling=2, run_config=storage) == pytest.approx(one, abs=1e-5)
