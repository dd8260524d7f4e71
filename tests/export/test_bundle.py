import json

import pytest
import torch
from trainyard import Trainer, TrainingConfig
from trainyard.engine.checkpoint import describe
from trainyard.models import GPT

from tests.helpers import lm_samples


def _gpt():
    torch.manual_seed(0)
    return GPT(vocab_size=23, max_seq_len=16, d_model=16, n_layers=1, n_heads=2)


@pytest.mark.slow
def test_seed_feature_3_export_bundle_serves_the_trained_model(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    config = {"vocab_size": 23, "max_seq_len": 16}
    training_config = TrainingConfig(
        learning_rate=5e-5, epochs=1, export_bundle=True, checkpoint_dir=str(tmp_path / "run")
    )
    trainer = Trainer(_gpt, config, training_config)
    results = trainer.train(lm_samples(8))
    bundle = tmp_path / "run" / "export"
    assert results["export_path"] == str(bundle)
    expected = {
        "model.pt", "model.onnx", "model.torchscript.pt", "model.pt2", "model_config.json", "task_spec.json",
        "training_config.yaml", "inference.py", "requirements.txt", "README.md", "Dockerfile",
        "torchserve/config.properties", "torchserve/handler.py", "MANIFEST.json",
    }
    assert {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} == expected
    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    assert all(describe(bundle / name) == info for name, info in manifest["files"].items())
    assert set(manifest["parity"]) == {"onnx", "torchscript", "pt2"}

    model = trainer.model.eval()
    x = torch.randint(0, 23, (3, 11))  # another batch size and length than the export example
    with torch.no_grad():
        reference = model(x)
    onnx_out = ReferenceEvaluator(onnx.load(str(bundle / "model.onnx"))).run(None, {"input_ids": x.numpy()})[0]
    assert torch.allclose(torch.from_numpy(onnx_out), reference, atol=1e-5)
    scripted = torch.jit.load(str(bundle / "model.torchscript.pt"))
    assert torch.allclose(scripted(x), reference, atol=1e-5)
    program = torch.export.load(str(bundle / "model.pt2")).module()
    assert torch.allclose(program(x), reference, atol=1e-5)
    state = torch.load(bundle / "model.pt", weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert json.loads((bundle / "task_spec.json").read_text())["name"] == "language_modeling"


def test_torchscript_only_export_unwraps_dict_outputs(tmp_path):
    from trainyard.export.bundle import export_model
    from trainyard.models import SequenceClassifier

    model = SequenceClassifier(vocab_size=23, d_model=16, n_heads=2, num_labels=3).eval()
    x = torch.randint(0, 23, (2, 7))
    out = export_model(model, x, tmp_path / "bundle", ("torchscript",))
    scripted = torch.jit.load(str(out / "model.torchscript.pt"))
    assert torch.allclose(scripted(x), model(x)["logits"], atol=1e-5)
    assert not (out / "model.onnx").exists()


class _BatchOfTwoOnly(torch.nn.Module):
    """Right for the traced batch size only: a trace bakes the Python branch in."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(23, 4)

    def forward(self, input_ids):
        logits = self.embed(input_ids)
        return logits if input_ids.shape[0] == 2 else logits + 1


def test_an_export_that_does_not_reproduce_the_model_fails_naming_the_format_and_writes_nothing(tmp_path):
    import warnings

    from trainyard.export.bundle import export_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match=r"export to torchscript does not reproduce the model: max abs logit error 1 > tolerance 0.001"):
            export_model(_BatchOfTwoOnly().eval(), torch.randint(0, 23, (2, 5)), tmp_path / "bundle", ("torchscript",))
    assert not (tmp_path / "bundle").exists()
    out = export_model(_BatchOfTwoOnly().eval(), torch.randint(0, 23, (2, 5)), tmp_path / "bundle", ("torchscript",), tolerance=2.0)
    assert json.loads((out / "MANIFEST.json").read_text())["parity"]["torchscript"]["max_abs_error"] == pytest.approx(1.0)


class _FixedShapeTrace(torch.nn.Module):
    """Right at any shape in eager mode; a trace bakes the example's sizes in."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(23, 4)

    def forward(self, input_ids):
        batch, length = int(input_ids.shape[0]), int(input_ids.shape[1])
        return self.embed(input_ids).reshape(batch * length, 4).reshape(batch, length, 4)


def test_a_graph_that_cannot_run_other_shapes_fails_naming_the_format_and_the_shape(tmp_path):
    import warnings

    from trainyard.export.bundle import export_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match=r"export to torchscript cannot run input of shape \(1, 5\) \(RuntimeError: shape '\[10, 4\]' is invalid"):
            export_model(_FixedShapeTrace().eval(), torch.randint(0, 23, (2, 5)), tmp_path / "bundle", ("torchscript",))
    assert not (tmp_path / "bundle").exists()
