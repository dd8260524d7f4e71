"""`trainyard run`'s inputs are checked before anything starts, each mistake one line."""

from pathlib import Path

import pytest

from tests.conftest import ROOT

CONFIG, SPACE = str(ROOT / "jobs" / "configs" / "addition.yaml"), str(ROOT / "tune_spaces" / "addition_small.yaml")


@pytest.mark.parametrize(("argv", "message"), [
    (["final.epochs=0"], "the final section: TrainingConfig.epochs=0 is invalid: must be an integer >= 1"),
    (["final.n_epochs=3"], "the final section: TrainingConfig has no field 'n_epochs': it was renamed to 'epochs'"),
    (["--samples", "0"], "--samples 0: give an integer >= 1"),
    (["--workers", "0"], "--workers 0: give an integer >= 1"),
    (["model.d_modle=3"], "model.d_modle is not a model setting here: did you mean model.d_model?"),
    (["--name", "../../x"], "run name '../../x' must be one folder name"),  # it wrote outside the output directory
    (["--name", "/abs/x"], "run name '/abs/x' must be one folder name"),
    (["source.x=1"], "override 'source.x=1': section 'source' is not one of model, data, training, peft, final"),
])
def test_a_bad_input_is_one_line_before_any_work(tmp_path, capsys, argv, message):
    from trainyard.cli.main import main

    assert main(["run", CONFIG, "--space", SPACE, "--output-dir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"trainyard: error: {message}") and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []  # no run directory was made


def test_a_missing_space_is_named(tmp_path, capsys):
    from trainyard.cli.main import main

    assert main(["run", CONFIG, "--space", str(tmp_path / "nope.yaml"), "--output-dir", str(tmp_path)]) == 2
    assert f"search space {tmp_path / 'nope.yaml'} not found" in capsys.readouterr().err


def test_the_same_command_finds_its_run_and_another_gets_its_own(tmp_path, monkeypatch):
    """The default name comes from the command's inputs (stopped before any stage runs)."""
    from trainyard.pipeline import run

    seen = []
    monkeypatch.setattr(run, "_sweep", lambda pipeline, search: seen.append(pipeline.run_dir) or (_ for _ in ()).throw(KeyboardInterrupt))
    for overrides in (["epochs=2"], ["epochs=2"], ["epochs=3"]):
        with pytest.raises(KeyboardInterrupt):
            run.run_pipeline(CONFIG, SPACE, overrides, output_dir=tmp_path)
    assert seen[0] == seen[1] != seen[2] and Path(seen[0]).name.startswith("addition-")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({Path(seen[0]).name, Path(seen[2]).name})
