from pathlib import Path

import pytest
from trainyard.hpo import load_search_space
from trainyard.hpo.space import shipped_spaces

ROOT = Path(__file__).resolve().parents[2]


def test_every_shipped_space_loads_and_fits_the_builtin_model_config():
    from trainyard.experiment import build, load_spec

    spaces = list(shipped_spaces(ROOT / "tune_spaces"))
    assert spaces
    model_config = build(load_spec(ROOT / "jobs" / "configs" / "addition.yaml", ["data.train_size=8", "data.val_size=2"])).model_config
    for path in spaces:
        space = load_search_space(path)
        assert space.params and space.mode in ("min", "max")
        space.check_model_keys(model_config)
        assert set(space.optuna_space()) == {p.name for p in space.params}


def test_distributions_map_to_optuna_with_tunes_bounds():
    space = load_search_space({"params": {
        "learning_rate": {"loguniform": [1e-5, 1e-2]},
        "weight_decay": {"uniform": [0.0, 0.1]},
        "max_grad_norm": {"quniform": [0.5, 2.0, 0.5]},
        "warmup_steps": {"randint": [0, 200]},
        "epochs": {"qrandint": [2, 10, 2]},
        "batch_size": {"choice": [16, 32]},
    }})
    d = space.optuna_space()
    assert d["learning_rate"].log and d["learning_rate"].low == 1e-5
    assert (d["warmup_steps"].low, d["warmup_steps"].high) == (0, 199)  # randint excludes high
    assert (d["epochs"].low, d["epochs"].high, d["epochs"].step) == (2, 10, 2)  # qrandint includes it
    assert d["max_grad_norm"].step == 0.5 and list(d["batch_size"].choices) == [16, 32]
    assert space.metric == "val/loss" and space.mode == "min"


BAD = [
    ({"learnig_rate": {"uniform": [0.1, 0.2]}}, r"'learnig_rate' is not a TrainingConfig field; did you mean 'learning_rate'"),
    ({"learning_rate": {"gaussian": [0, 1]}}, r"unknown distribution 'gaussian'"),
    ({"learning_rate": {"uniform": [0.2, 0.1]}}, r"'learning_rate': uniform needs low < high, got low=0.2, high=0.1"),
    ({"learning_rate": {"loguniform": [0, 0.1]}}, r"loguniform needs bounds > 0"),
    ({"batch_size": {"choice": []}}, r"'batch_size': choice needs at least one value"),
    ({"batch_size": {"uniform": [8, 64]}}, r"'batch_size': the field takes integers, but uniform samples floats"),
    ({"batch_size": {"choice": [16, "big"]}}, r"'batch_size': value 'big' is not valid"),
    ({"use_amp": {"choice": [True, "yes"]}}, r"'use_amp': value 'yes' is not valid"),
    ({"epochs": {"qrandint": [1, 5]}}, r"qrandint takes \[low, high, q\]"),
    ({"warmup_steps": {"randint": [0.5, 10]}}, r"randint takes integers"),
    ({"checkpoint_dir": {"choice": ["a"]}}, r"'checkpoint_dir' cannot be searched"),
    ({"learning_rate": [1e-3, 1e-2]}, r"must be one distribution"),
]


@pytest.mark.parametrize("params, message", BAD)
def test_bad_spaces_name_the_parameter_and_the_problem(params, message):
    with pytest.raises(ValueError, match=message):
        load_search_space({"params": params})


def test_bad_top_level_keys_and_values():
    with pytest.raises(ValueError, match="mode='best'"):
        load_search_space({"mode": "best", "params": {"learning_rate": {"uniform": [0.1, 0.2]}}})
    with pytest.raises(ValueError, match="params must map at least one"):
        load_search_space({"params": {}})
    with pytest.raises(ValueError, match="unknown key"):
        load_search_space({"parameters": {}})
    with pytest.raises(FileNotFoundError):
        load_search_space("nowhere.yaml")


def test_model_keys_are_checked_against_the_model_config():
    space = load_search_space({"params": {"model.d_modle": {"choice": [64]}}})
    with pytest.raises(ValueError, match="did you mean 'model.d_model'"):
        space.check_model_keys({"d_model": 128, "n_layers": 2})


def test_loading_a_space_imports_neither_ray_nor_optuna():
    import subprocess
    import sys

    code = f"import sys; from trainyard.hpo import load_search_space; load_search_space({str(ROOT / 'tune_spaces' / 'addition_small.yaml')!r}); print([m for m in ('ray', 'optuna') if m in sys.modules])"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
