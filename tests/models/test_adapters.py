"""LoRA and other PEFT adapters on Hugging Face models: only the adapters train, only they
are checkpointed, a resume is exact, and the model comes out whole (merged) or as adapters.
Tiny GPT-2 and Llama-architecture models are built from their configs: nothing is downloaded."""

import json
from pathlib import Path

import pytest
import torch

from tests.models.test_hf import save_tiny_gpt2, save_tiny_llama

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

TEXT = {"text": ["the cat sat on a mat", "the dog ran", "a cat ran", "the mat sat", "a dog sat on the cat", "the cat"] * 4}
LORA = {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["c_attn"]}


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return save_tiny_gpt2(tmp_path_factory.mktemp("models") / "gpt2")


def experiment(model_dir, tmp_path, peft_section=LORA, **training):
    from trainyard.experiment import build

    spec = {"model": {"name": "hf", "name_or_path": str(model_dir)}, "peft": peft_section,
            "training": {"epochs": 2, "batch_size": 4, "learning_rate": 1e-2, "random_seed": 3, "checkpoint_dir": str(tmp_path / "run"), **training}}
    return build(spec, dataset=(TEXT, TEXT))


def test_only_the_adapters_train_and_only_they_are_checkpointed(gpt2_dir, tmp_path):
    exp = experiment(gpt2_dir, tmp_path)
    trainer = exp.trainer()
    base = {k: v.clone() for k, v in transformers.AutoModelForCausalLM.from_pretrained(gpt2_dir).state_dict().items()}
    results = trainer.train(exp.train_data, exp.val_data)
    losses = results["metrics_summary"]["train/loss"].tolist()
    assert losses[1] < losses[0]
    trained = trainer.model.get_base_model().state_dict()
    lora = {k for k in trained if "lora_" in k}
    frozen = {k.replace(".base_layer.", "."): v for k, v in trained.items() if "lora_" not in k}  # an adapted layer keeps its weight in base_layer
    assert lora and set(frozen) == set(base) and all(torch.equal(frozen[k], base[k]) for k in base)  # the base never moved, adapted layers included
    checkpoint = sorted((tmp_path / "run").glob("checkpoint_e0002_*"))[0]
    saved = torch.load(checkpoint / "model.pt", weights_only=True)
    assert set(saved) == {k for k, p in trainer.model.named_parameters() if p.requires_grad} and all("lora_" in k for k in saved)
    assert sum(v.numel() for v in saved.values()) < sum(v.numel() for v in base.values()) / 5  # small: the base is not in it
    assert json.loads((checkpoint / "trainer_state.json").read_text())["model_state"] == "trainable"


def test_a_run_stopped_mid_epoch_resumes_bit_exactly_from_its_adapters(gpt2_dir, tmp_path):
    from trainyard import TrainingHooks

    class StopAfter(TrainingHooks):
        def on_batch_end(self, trainer, batch, outputs):
            if (trainer.state.epoch, trainer.state.batch_in_epoch) == (1, 3):
                trainer.request_stop("stopped by the test")

    whole = experiment(gpt2_dir, tmp_path / "whole")
    expected = whole.trainer().train(whole.train_data, whole.val_data)
    exp = experiment(gpt2_dir, tmp_path / "cut")
    exp.trainer(hooks=[StopAfter()]).train(exp.train_data, exp.val_data)
    (stopped,) = (tmp_path / "cut" / "run").glob("checkpoint_e0001_b*")
    assert "_b0000003" in stopped.name
    resumed = experiment(gpt2_dir, tmp_path / "cut").trainer().train(exp.train_data, exp.val_data, resume_from=str(tmp_path / "cut" / "run"))
    assert resumed["loss_history"] == expected["loss_history"]  # bit for bit
    assert resumed["metrics_summary"]["val/loss"].tolist() == expected["metrics_summary"]["val/loss"].tolist()


def test_a_tiny_llama_with_lora_exports_a_merged_model_that_loads_with_auto_classes(tmp_path):
    directory = save_tiny_llama(tmp_path / "llama")
    exp = experiment(directory, tmp_path, {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}, export_bundle=True, export_formats=["onnx"])
    trainer = exp.trainer()
    results = trainer.train(exp.train_data, exp.val_data)
    bundle = tmp_path / "run" / "export"
    parity = json.loads((bundle / "MANIFEST.json").read_text())["parity"]
    assert results["export_path"] == str(bundle) and set(parity) == {"onnx", "hf"}
    assert not (bundle / "hf" / "adapter_config.json").exists()  # merged: a plain Llama
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(bundle / "hf")
    assert type(reloaded).__name__ == "LlamaForCausalLM" and not any("lora" in k for k in reloaded.state_dict())
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, trainer.model.eval()(input_ids=ids).logits, atol=1e-5)
        base = transformers.AutoModelForCausalLM.from_pretrained(directory)
        assert not torch.allclose(base(ids).logits, reloaded(ids).logits, atol=1e-4)  # the adapters' training is in it


def test_adapters_kept_apart_load_onto_their_base(gpt2_dir, tmp_path):
    exp = experiment(gpt2_dir, tmp_path, {**LORA, "merge_adapters": False}, epochs=1, export_bundle=True, export_formats=["hf"])
    trainer = exp.trainer()
    trainer.train(exp.train_data, exp.val_data)
    hf = tmp_path / "run" / "export" / "hf"
    assert (hf / "adapter_config.json").is_file() and not (hf / "model.safetensors").exists()  # the adapters alone
    loaded = peft.AutoPeftModelForCausalLM.from_pretrained(hf)
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, trainer.model.eval()(input_ids=ids).logits, atol=1e-5)


def test_the_python_api_takes_a_peft_config_for_a_model_or_a_factory(gpt2_dir, tmp_path):
    from trainyard import Trainer, TrainingConfig
    from trainyard.models import hf

    samples = [{"input_ids": [3, 4, 5, 6, 7, 8]}, {"input_ids": [4, 5, 6, 7]}] * 4
    config = TrainingConfig(epochs=1, batch_size=4, learning_rate=1e-2, checkpoint_dir=str(tmp_path / "a"))
    factory = hf.model_builder(str(gpt2_dir), None)
    for model in (factory(None), lambda: factory(None)):
        trainer = Trainer(model, {"pad_token_id": 0}, config.replace(checkpoint_dir=str(tmp_path / str(id(model)))),
                          peft_config=peft.LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True))
        trainer.train(samples)
        assert {n for n, p in trainer.model.named_parameters() if p.requires_grad} and all(
            "lora_" in n for n, p in trainer.model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("section, message", [
    ({"method": "lora", "rank": 4}, r"peft.rank is not a setting of lora: did you mean peft.r\?"),
    ({"method": "lorra"}, r"peft.method='lorra' is not a PEFT method: did you mean 'lora'\?"),
    ({"alpah": 8}, r"peft.alpah is not a setting of lora: did you mean peft.alpha\?"),
    ({"r": 4, "target_modules": ["q_proj"]}, r"peft.target_modules=\['q_proj'\] names no layer of GPT2LMHeadModel: its layers are named \[.*'c_attn'"),
    ({"r": -1, "target_modules": ["c_attn"]}, r"peft: LoraConfig cannot be added to GPT2LMHeadModel \(ValueError: `r` should be a positive integer"),
])
def test_a_bad_peft_setting_is_one_line_naming_it(gpt2_dir, tmp_path, section, message):
    with pytest.raises(ValueError, match=message):
        experiment(gpt2_dir, tmp_path, section).model_factory()


def test_a_checkpoint_of_other_adapters_is_refused_naming_the_cause(gpt2_dir, tmp_path):
    from trainyard.engine.checkpoint import CheckpointError

    exp = experiment(gpt2_dir, tmp_path, epochs=1)
    exp.trainer().train(exp.train_data, exp.val_data)
    other = experiment(gpt2_dir, tmp_path / "other", {**LORA, "target_modules": ["c_fc"]})
    with pytest.raises(CheckpointError, match="holds the trainable parameters of a model with adapters, and has parameters this model lacks"):
        other.trainer().train(other.train_data, other.val_data, resume_from=str(tmp_path / "run"))
    whole = experiment(gpt2_dir, tmp_path / "whole", None)  # the same model without adapters
    with pytest.raises(CheckpointError, match="holds only adapter weights \\(peft\\), and this model has no adapters: build it with the peft settings"):
        whole.trainer().train(whole.train_data, whole.val_data, resume_from=str(tmp_path / "run"))


def test_a_model_that_is_not_a_hugging_face_one_must_name_its_target_layers(tmp_path):
    from trainyard.experiment import build

    spec = {"model": {"name": "gpt", "d_model": 16, "n_layers": 1, "n_heads": 2}, "data": {"name": "addition", "train_size": 8, "val_size": 4},
            "peft": {"r": 2}}
    with pytest.raises(ValueError, match=r"peft.target_modules is needed for GPT \(not a Hugging Face model\): name the layers to adapt; "
                                         r"its layers are named \['head', 'pos', 'proj', 'qkv', 'tok'\]"):
        build(spec).model_factory()
    model = build({**spec, "peft": {"r": 2, "target_modules": ["qkv"]}}).model_factory()
    assert {n for n, p in model.named_parameters() if p.requires_grad} and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_lora_on_two_ray_workers_equals_one_process_and_checkpoints_only_adapters(ray_session, gpt2_dir, tmp_path, architecture):
    """DDP, and FSDP (the blocks sharded apart, each with its frozen weights and adapters)."""
    import ray.train

    model_dir, lora = gpt2_dir, LORA
    if architecture == "llama":
        model_dir, lora = save_tiny_llama(tmp_path / "llama"), {**LORA, "target_modules": ["q_proj", "v_proj", "down_proj"]}

    def run(batch_size, parallelism="ddp", **options):
        exp = experiment(model_dir, tmp_path / f"{batch_size}-{parallelism}", lora, batch_size=batch_size, parallelism=parallelism)
        results = exp.trainer(**options).train(exp.train_data, exp.val_data)
        return results["metrics_summary"][["train/loss", "val/loss"]].values.ravel().tolist(), results

    one, _ = run(8)
    storage = ray.train.RunConfig(storage_path=str(tmp_path / "storage"))
    ddp, results = run(4, scaling=2, run_config=storage)
    assert ddp == pytest.approx(one, abs=1e-5)
    saved = torch.load(f"{results['checkpoint_path']}/model.pt", weights_only=True)
    assert saved and all("lora_" in k for k in saved)
    fsdp, results = run(4, "fsdp", scaling=2, run_config=storage)
    assert fsdp == pytest.approx(one, abs=1e-5)
    from trainyard.engine.shards import read_metadata

    keys = read_metadata((Path(results["checkpoint_path"]) / ".metadata").read_bytes(), "test").state_dict_metadata
    model_keys = [k for k in keys if k.startswith("model.")]
    assert model_keys and all("lora_" in k for k in model_keys)  # the frozen base is not in the shards either


@pytest.mark.slow
def test_the_fine_tuning_example_config_trains_adapters_from_instruction_files(ray_session, gpt2_dir, tmp_path, monkeypatch, capsys):
    """jobs/configs/finetune_lora.yaml as a user runs it, with the Hub's gpt2 swapped for the tiny local one."""
    from trainyard.cli.main import main

    from tests.conftest import ROOT

    monkeypatch.chdir(tmp_path)
    code = main(["train", str(ROOT / "jobs" / "configs" / "finetune_lora.yaml"), f"model.name_or_path={gpt2_dir}", "epochs=1"])
    assert code == 0, capsys.readouterr().err
    (run,) = (tmp_path / "runs").iterdir()
    (checkpoint,) = run.glob("checkpoint_e0001_*")
    saved = torch.load(checkpoint / "model.pt", weights_only=True)
    assert saved and all("lora_" in k for k in saved)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(run / "export" / "hf")
    assert type(reloaded).__name__ == "GPT2LMHeadModel"


@pytest.mark.slow
def test_a_sweep_searches_the_adapters_rank_and_its_best_config_keeps_it(ray_session, gpt2_dir, tmp_path):
    import yaml
    from trainyard.experiment import as_spec
    from trainyard.hpo.experiments import sweep_experiment

    spec = {"model": {"name": "hf", "name_or_path": str(gpt2_dir)}, "peft": LORA,
            "training": {"epochs": 1, "batch_size": 4, "learning_rate": 1e-2, "random_seed": 3}}
    space = {"metric": "val/loss", "mode": "min", "params": {"peft.r": {"choice": [2, 6]}, "peft.alpha": {"choice": [8]}}}
    result = sweep_experiment(spec, space, dataset=(TEXT, TEXT), num_samples=2, scheduler="none", storage_path=tmp_path, name="ranks", seed=0)
    ranks = set()
    for checkpoint in tmp_path.glob("ranks/*/checkpoint_*/model.pt"):
        saved = torch.load(checkpoint, weights_only=True)
        ranks |= {v.shape[0] for k, v in saved.items() if "lora_A" in k}  # each trial built its own rank's adapters
    assert ranks == {2, 6}
    best = yaml.safe_load((Path(result.path) / "best_config.yaml").read_text())
    assert best["peft"]["r"] == result.best_params["peft.r"] and best["peft"]["target_modules"] == ["c_attn"]
    as_spec(best)  # a config that loads again

    with pytest.raises(ValueError, match="the space searches 'peft.r', but the experiment has no peft section"):
        sweep_experiment({**spec, "peft": None}, space, dataset=(TEXT, TEXT), num_samples=1, storage_path=tmp_path)
    with pytest.raises(ValueError, match="the method and the export are not searched"):
        sweep_experiment(spec, {"params": {"peft.method": {"choice": ["lora"]}}}, dataset=(TEXT, TEXT), num_samples=1, storage_path=tmp_path)
