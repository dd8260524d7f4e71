from pathlib import Path

import pytest
from trainyard.cli.main import main

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TINY = ["data.train_size=128", "data.val_size=32", "data.digits=2", "model.n_layers=1", "epochs=2"]


def test_trainyard_tune_prints_the_winning_values_and_how_to_train_them(ray_session, tmp_path, capsys):
    import yaml

    code = main(["tune", str(ROOT / "tune_spaces" / "addition_small.yaml"), "--config", str(ROOT / "jobs" / "configs" / "addition.yaml"),
                 *TINY, "--samples", "3", "--storage-path", str(tmp_path), "--name", "cli"])
    assert code == 0
    out = capsys.readouterr().out
    best_file = tmp_path / "cli" / "best_config.yaml"
    # What the search chose, as its space names them (not every TrainingConfig field), and the file to train
    assert f"#   trainyard train {best_file}\n" in out, out
    chosen = yaml.safe_load("\n".join(line for line in out.splitlines() if not line.startswith("#")))
    space = yaml.safe_load((ROOT / "tune_spaces" / "addition_small.yaml").read_text())["params"]
    assert set(chosen) == set(space), out
    # best_config.yaml is the whole experiment, winners filled in: `trainyard train` runs it as is
    from trainyard.experiment import build, load_spec

    report = tmp_path / "cli" / "report"  # and the sweep's report, its plots in it
    assert {"sweep_optimization_history.png", "sweep_trial_curves.png"} <= {p.name for p in report.glob("*.png")}
    assert (report / "report.html").read_text().count("data:image/png;base64,") >= 2 and "| COMPLETE |" in (report / "report.md").read_text()
    exp = build(load_spec(best_file))
    assert exp.training_config.epochs == 2
    for name, value in chosen.items():
        section, key = name.split(".", 1) if name.startswith("model.") else ("training", name)
        got = exp.model_config[key] if section == "model" else getattr(exp.training_config, key)
        assert got == value, name
    assert exp.spec.data == {"name": "addition", "digits": 2, "train_size": 128, "val_size": 32, "seed": 0}
    assert main(["train", str(best_file), "--results", str(tmp_path / "r.json")]) == 0


def test_a_bad_space_fails_before_ray_work_with_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("params:\n  learnig_rate: {uniform: [0.1, 0.2]}\n")
    assert main(["tune", str(bad), "--config", str(ROOT / "jobs" / "configs" / "addition.yaml")]) == 2
    assert "did you mean 'learning_rate'" in capsys.readouterr().err
