"""Every key a user writes is read by something: a typo in the model or data section is
refused before any work, with the closest valid name (it used to train the defaults)."""

import subprocess
import sys

import pytest
from trainyard.experiment import build, load_spec

from tests.conftest import ROOT

CONFIG = ROOT / "jobs" / "configs" / "addition.yaml"


@pytest.mark.parametrize(("override", "message"), [
    ("model.d_modle=64", "model.d_modle is not a model setting here: did you mean model.d_model?"),
    ("model.n_head=2", "model.n_head is not a model setting here: did you mean model.n_heads?"),
    ("data.train_sise=100", "data.train_sise is not a data setting here: did you mean data.train_size?"),
    ("data.shuffle=true", "data.shuffle is not a data setting here: the keys are name, train_size, val_size, digits, seed"),
])
def test_a_mistyped_key_is_refused_with_the_closest_name(override, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("?", r"\?")):
        build(load_spec(CONFIG, [override]))


def test_a_mistyped_dataset_name_is_named_not_its_parameters(tmp_path):
    """It used to say 'data.digits is not a data setting here': the wrong key."""
    with pytest.raises(ValueError, match=r"^data\.name 'additoin' is not a built-in dataset: did you mean 'addition'\? the built-ins are \['addition'\]"):
        load_spec(CONFIG, ["data.name=additoin"])


def test_an_empty_section_takes_overrides_and_a_scalar_one_says_how_to_write_it(tmp_path):
    """`training:` left empty plus epochs=1 is a valid config (it was refused with
    "'NoneType' object does not support item assignment"); `model: gpt` plus
    model.d_model=32 said "'str' object does not support item assignment"."""
    empty = tmp_path / "empty.yaml"
    empty.write_text("model: {name: gpt, d_model: 32, n_layers: 1, n_heads: 2}\ndata: {name: addition, train_size: 16, val_size: 4}\ntraining:\n")
    assert load_spec(empty, ["epochs=1"]).training.epochs == 1
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("model: gpt\ndata: {name: addition}\n")
    with pytest.raises(ValueError, match=r"^override 'model\.d_model=32': the model section is 'gpt', not a mapping of settings; "
                                         r"write it as model: \{name: gpt\} to set model\.d_model too$"):
        load_spec(scalar, ["model.d_model=32"])


def test_the_valid_keys_still_build():
    exp = build(load_spec(CONFIG, ["model.d_model=32", "data.train_size=64", "data.val_size=16"]))
    assert exp.model_config["d_model"] == 32 and len(exp.train_data["input_ids"]) == 64


def test_the_cli_says_it_in_one_line_with_exit_code_2():
    proc = subprocess.run([sys.executable, "-m", "trainyard.cli.main", "train", str(CONFIG), "model.d_modle=64"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "trainyard: error: model.d_modle is not a model setting here: did you mean model.d_model?"


def test_a_missing_or_corrupt_checkpoint_is_one_line_and_exit_code_2(tmp_path, capsys, monkeypatch):
    import os

    from trainyard.cli.main import main

    monkeypatch.setenv("TRAINYARD_LOG_LEVEL", os.environ.get("TRAINYARD_LOG_LEVEL", "INFO"))  # --verbose below sets it: restored after

    tiny = ["data.train_size=64", "data.val_size=8", "model.n_layers=1", "model.d_model=16", "epochs=1", f"checkpoint_dir={tmp_path / 'run'}"]

    def train(*extra):
        code = main(["train", str(CONFIG), *tiny, *extra])
        return code, capsys.readouterr().err

    for workers in ("0", "2"):  # in this process, and on Ray (refused before Ray or the workers start)
        code, err = train("--resume", str(tmp_path / "nowhere"), "--workers", workers)
        assert code == 2 and err.strip() == f"trainyard: error: checkpoint {tmp_path / 'nowhere'} does not exist"
    assert train()[0] == 0
    checkpoint = next((tmp_path / "run").glob("checkpoint_*"))
    (checkpoint / "model.pt").write_bytes(b"not the saved weights")
    for workers in ("0", "2"):
        code, err = train("--resume", str(checkpoint), "--workers", workers)
        assert code == 2, err
        assert err.strip().startswith(f"trainyard: error: checkpoint {checkpoint}") and "model.pt" in err.strip().splitlines()[-1]
        assert "Traceback" not in err
    code, err = train("--resume", str(checkpoint), "--verbose")
    assert code == 2 and "Traceback" in err  # --verbose shows it


@pytest.mark.parametrize(("factory", "message"), [
    ("missing_module:fn", "the module 'missing_module' cannot be imported (ModuleNotFoundError: No module named 'missing_module'); "
                          "it must be importable where trainyard runs"),
    ("json:nope", "json has no function 'nope'; name a function defined there"),
    ("json:loadz", "json has no function 'loadz'; did you mean json:load?"),
    ("nocolon", "must be 'package.module:function'"),
])
def test_a_model_factory_that_cannot_be_found_is_one_line(factory, message):
    """They ended in ModuleNotFoundError / AttributeError tracebacks."""
    with pytest.raises(ValueError) as info:
        load_spec(CONFIG, [f"model.factory={factory}"])
    assert str(info.value).startswith(f"model.factory={factory!r}") and message in str(info.value)


def test_a_missing_factory_module_exits_2_in_one_line():
    proc = subprocess.run([sys.executable, "-m", "trainyard.cli.main", "train", str(CONFIG), "model.factory=missing_module:fn"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_model_vocabulary_smaller_than_the_tokenizers_is_refused():
    with pytest.raises(ValueError, match=r"model vocab_size=5 is smaller than the tokenizer's 15 ids"):
        build(load_spec(CONFIG, ["model.vocab_size=5"]))
