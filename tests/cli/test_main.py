import json
import subprocess
import sys
from pathlib import Path

import pytest
from trainyard.cli.main import main
from trainyard.experiment import apply_overrides, build, load_spec

ROOT = Path(__file__).resolve().parents[2]
ADDITION = ROOT / "jobs" / "configs" / "addition.yaml"
TINY = ["data.train_size=64", "data.val_size=16", "model.d_model=16", "model.n_heads=2", "model.n_layers=1", "batch_size=16"]


def test_the_shipped_config_builds():
    exp = build(load_spec(ADDITION))
    assert exp.training_config.epochs >= 1 and exp.model_config["vocab_size"] == 15
    assert len(exp.train_data["input_ids"]) == 20000


def test_overrides_address_sections_and_parse_values():
    spec = apply_overrides({"training": {"epochs": 5}}, ["epochs=2", "model.d_model=64", "training.learning_rate=1e-3", "export_formats=[onnx]"])
    assert spec["training"] == {"epochs": 2, "learning_rate": 1e-3, "export_formats": ["onnx"]}
    assert spec["model"] == {"d_model": 64}
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides({}, ["epochs"])
    with pytest.raises(ValueError, match="section 'optim'"):
        apply_overrides({}, ["optim.lr=1"])


def test_train_command_writes_results(tmp_path, capsys):
    out = tmp_path / "results.json"
    code = main(["train", str(ADDITION), *TINY, "epochs=1", f"checkpoint_dir={tmp_path / 'ck'}", "--results", str(out)])
    assert code == 0
    results = json.loads(out.read_text())
    assert results["metrics_summary"][0]["epoch"] == 1 and "val/exact_match" in results["metrics_summary"][0]
    assert Path(results["checkpoint_path"]).is_dir()


def test_bad_override_is_a_one_line_error(tmp_path, capsys):
    assert main(["train", str(ADDITION), "n_epochs=3"]) == 2
    err = capsys.readouterr().err
    assert "renamed to 'epochs'" in err and "Traceback" not in err


def test_console_script_runs_in_a_fresh_process(tmp_path):
    script = Path(sys.executable).with_name("trainyard")
    proc = subprocess.run(
        [str(script), "train", str(ADDITION), *TINY, "epochs=1", f"checkpoint_dir={tmp_path / 'ck'}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert any(line.startswith("[trainyard] epoch 1/1") for line in lines)
    assert len(lines) <= 4, lines  # quiet: detection, one line per epoch, a summary


@pytest.mark.parametrize("argv", [["report", "runs", "x=1"], ["jobs", "list", "state=running"]])
def test_key_value_arguments_to_a_command_without_overrides_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and f"unrecognized arguments: {argv[-1]}" in capsys.readouterr().err


def test_a_ray_run_name_that_is_a_path_is_one_line_before_ray(capsys):
    """`--name ../x` put the run's folder outside its storage."""
    from trainyard.cli.main import main

    assert main(["train", str(ADDITION), "--workers", "2", "--name", "../x"]) == 2
    assert capsys.readouterr().err.startswith("trainyard: error: run name '../x' must be one folder name")


@pytest.mark.parametrize("argv, meant", [
    (["train", str(ADDITION), "--worker", "2"], "--workers"),  # argparse took it for --workers
    (["tune", "space.yaml", "--config", str(ADDITION), "--sampl", "3"], "--samples"),
    (["jobs", "submit", str(ADDITION), "--wrkers", "3"], "--workers"),  # a subcommand of a subcommand
])
def test_a_shortened_option_is_refused_naming_the_option_meant(argv, meant, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"unrecognized arguments: {argv[-2]} {argv[-1]} (did you mean {meant}?)" in err, err


@pytest.mark.parametrize("command, shown", [
    ("train", "(default: 0)"), ("tune", "what stops poor trials early (default: asha)"), ("run", "sweep trials (default: 8)"),
])
def test_help_shows_the_defaults(command, shown, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert shown in help_text and "(default: None)" not in help_text


def test_data_files_in_a_config_are_found_from_the_configs_folder_wherever_the_command_runs(tmp_path, monkeypatch):
    """They resolved against the working directory: a sweep's best_config.yaml ('Train it:
    trainyard train <sweep>/best_config.yaml') failed from any other folder."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / "data").mkdir(parents=True)
    elsewhere.mkdir()
    (project / "exp.yaml").write_text("model: {name: gpt, d_model: 16, n_layers: 1, n_heads: 2}\ndata: {train: data/train.parquet}\n")
    monkeypatch.chdir(elsewhere)
    spec = load_spec(project / "exp.yaml", ["data.val=mine/val.parquet"])  # a path typed in the shell: the shell's folder
    assert spec.data["train"] == str(project / "data" / "train.parquet")
    exp = build(spec)
    assert exp.train_data == str(project / "data" / "train.parquet") and exp.val_data == str(elsewhere / "mine" / "val.parquet")
    (project / "abs.yaml").write_text(f"data: {{train: {elsewhere / 'x.parquet'}, val: s3://bucket/val}}\n")
    assert [load_spec(project / "abs.yaml").data[k] for k in ("train", "val")] == [str(elsewhere / "x.parquet"), "s3://bucket/val"]


def test_running_the_same_train_command_again_resumes_its_run_and_fresh_starts_another(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # runs/ goes here
    argv = ["train", str(ADDITION), *TINY, "epochs=1"]
    assert main(argv) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("addition-") and list(run_dir.glob("checkpoint_e0001_*"))
    capsys.readouterr()
    assert main(argv) == 0  # the same command: its run, found and resumed (finished: nothing more to train)
    err = capsys.readouterr().err
    assert f"this command's run {run_dir} has checkpoints: resuming it (--fresh starts a new run)" in err
    assert "is the end of a finished run" in err and "resumed from" not in err  # said once
    assert main(["train", str(ADDITION), *TINY, "epochs=2"]) == 0  # more epochs: the same run, trained further
    err = capsys.readouterr().err
    assert err.count("resumed from") == 1 and "epoch 2/2" in err and "epoch 1/2" not in err
    assert list((tmp_path / "runs").iterdir()) == [run_dir]
    assert main([*argv, "learning_rate=0.002"]) == 0  # another command, another run: none writes into another's folder
    assert main([*argv, "--fresh"]) == 0
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(runs) == 3 and all(r.startswith("addition-") for r in runs)
    assert main([*argv, "--fresh", "--name", "x"]) == 2
    assert "--fresh starts a new run under a new name of its own: drop --name (or --fresh)" in capsys.readouterr().err


@pytest.mark.parametrize("given, told", [("4-2", "'4-2': a range MIN-MAX needs 1 <= MIN <= MAX"), ("two", "'two': give a number of workers (2) or a range (2-4)"),
                                         ("0-3", "'0-3': a range MIN-MAX needs 1 <= MIN <= MAX")])
def test_a_worker_count_or_range_that_makes_no_sense_is_one_line(given, told, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "jobs/configs/addition.yaml", "--workers", given])
    assert exit_.value.code == 2 and f"argument --workers: {told}" in capsys.readouterr().err


def test_a_global_batch_makes_another_worker_count_the_same_run():
    from trainyard.cli.runners import command_run_name

    config = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "addition.yaml"
    fixed, chosen = load_spec(config), load_spec(config, ["global_batch_size=64"])
    assert command_run_name(config, fixed, 2) != command_run_name(config, fixed, 4)  # batch_size per worker: another global batch
    assert command_run_name(config, chosen, 2) == command_run_name(config, chosen, 4) == command_run_name(config, chosen, (2, 4))
