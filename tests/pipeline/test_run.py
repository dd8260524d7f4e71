"""`trainyard run`, the main job end to end, as a user runs it: one command, killed anywhere
and run again, finishes with the result an uninterrupted run gives."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def readme_command() -> list[str]:
    """`make run`'s arguments to `trainyard run` (the README's first command)."""
    (line,) = [line for line in (ROOT / "Makefile").read_text().splitlines() if "trainyard run " in line]
    return line.split("trainyard run ", 1)[1].split()


MAIN = readme_command()


def option(name: str) -> str:
    return MAIN[MAIN.index(name) + 1]


CONFIG, SPACE = MAIN[0], MAIN[MAIN.index("--space") + 1]
# The README's command on less data: as many trials, workers, epochs and log lines. One trial
# at a time makes the sweep reproducible; the final training's small batches make it long
# enough to be killed in the middle.
TINY = ["data.train_size=512", "data.val_size=64", "model.n_layers=1", "final.batch_size=8", "--max-concurrent", "1"]


def command(out: Path, name: str) -> list[str]:
    return [sys.executable, "-m", "trainyard.cli.main", "run", *MAIN, *TINY, "--output-dir", str(out), "--name", name]


def env(ray=None) -> dict:
    """The command's environment: a Ray of its own, as the README's command starts; or, with
    the session's `ray`, that one joined (a killed driver's trials and workers go with it,
    and no command waits for a Ray to start and stop)."""
    joined = {"RAY_ADDRESS": ray.get_runtime_context().gcs_address} if ray is not None else {}
    return {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **joined}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    proc = subprocess.run(command(out, "whole"), cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-5000:]
    return out / "whole", proc.stdout.splitlines()  # as a terminal shows them


def stages(run: Path) -> dict:
    try:
        return json.loads((run / "pipeline.json").read_text())["stages"]
    except (OSError, ValueError):
        return {}


def test_one_command_runs_every_stage_quietly_and_ends_with_the_summary(uninterrupted):
    run, lines = uninterrupted
    assert len(lines) <= 40, "\n".join(lines)
    assert not [line for line in lines if "Traceback" in line or "WARNING" in line.upper() and "rough guide" not in line], "\n".join(lines)
    summary = lines[lines.index(f"run {run}"):]
    labels = [line.split()[0] for line in summary[1:]]
    assert labels == ["sweep", "best", "final", "export", "stages", "report", "bundle"], summary
    state = stages(run)
    assert list(state) == ["sweep", "final", "export", "report"]
    samples, workers = option("--samples"), option("--workers")
    assert f"from trial {state['sweep']['best_trial_number']} ({samples} trials:" in summary[1]
    assert "exact-match" in summary[3] and f"after 6 epochs on {workers} workers" in summary[3]
    for fmt in ("onnx", "torchscript", "pt2"):
        assert f"{fmt} max|err|" in summary[4]
    assert all(f"{s} " in summary[5] for s in state)
    for sub in ("sweep/trials.csv", "sweep/best_config.yaml", "final", "export/MANIFEST.json", "report/report.html", "report/report.md"):
        assert (run / sub).exists(), sub
    lineage = json.loads((run / "lineage.json").read_text())
    assert lineage["params"] == state["sweep"]["best_params"] and lineage["sweep_path"] == str(run / "sweep")
    assert lineage["checkpoint"] == state["final"]["checkpoint_path"] and lineage["data_fingerprint"].startswith("sha256:")
    assert lineage["code_version"]["git_commit"]  # this checkout's commit


def test_the_report_fits_a_1280_pixel_window_and_lists_every_stage(uninterrupted, tmp_path):
    from tests.test_report import overflow_at

    run, _ = uninterrupted
    report = run / "report" / "report.html"
    assert overflow_at(report, 1280, tmp_path) == []  # no table scrolls sideways, no cell is cut off
    md = (run / "report" / "report.md").read_text()
    assert "| report | " in md and "| trial | state | learning_rate |" in md  # the report's own stage; trials as the console numbers them
    assert "learning_rate.png" in md and "per optimizer step" in md


def test_the_final_training_uses_the_best_params_and_the_final_section(uninterrupted):
    import yaml

    run, _ = uninterrupted
    state = stages(run)
    config = yaml.safe_load((run / "export" / "training_config.yaml").read_text())
    best = state["sweep"]["best_params"]
    assert config["batch_size"] == 8  # final: batch_size=8 wins over the sweep's choice
    assert config["learning_rate"] == best["learning_rate"] and config["warmup_steps"] == best["warmup_steps"]
    assert json.loads((run / "export" / "model_config.json").read_text())["d_model"] == best["model.d_model"]


def _kill_when(argv, run: Path, ready, ray, timeout=300, cwd: Path = ROOT) -> None:
    proc = subprocess.Popen(argv, cwd=cwd, env=env(ray), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started (joined: its job's actors are Ray's to end)
    proc.wait()


def test_killed_in_the_sweep_in_the_final_training_and_between_stages_it_finishes_as_if_never_killed(uninterrupted, tmp_path):
    # Each command starts a Ray of its own, killed with it: on a shared Ray a killed driver's
    # running trial outlives it for a moment and writes its results into the sweep's folder.
    whole, _ = uninterrupted
    run = tmp_path / "killed"
    argv = command(tmp_path, "killed")

    _kill_when(argv, run, lambda: len(list((run / "sweep").glob("_trial_*"))) >= 3, None)  # two trials done, the third started
    assert stages(run) == {}, "killed inside the sweep"
    _kill_when(argv, run, lambda: list((run / "final").glob("checkpoint_e0001_*")), None)
    assert list(stages(run)) == ["sweep"], "killed inside the final training, after its first epoch"
    _kill_when(argv, run, lambda: "final" in stages(run), None)
    assert list(stages(run)) == ["sweep", "final"], "killed before the export finished"

    proc = subprocess.run(argv, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resuming; done already: sweep, final" in proc.stdout + proc.stderr
    done, want = stages(run), stages(whole)
    assert done["sweep"]["best_params"] == want["sweep"]["best_params"]
    assert done["sweep"]["value"] == pytest.approx(want["sweep"]["value"], abs=1e-6)
    assert done["sweep"]["trials"] == want["sweep"]["trials"]
    # Trials that ran (the killed driver may leave the folders of trials it had created but
    # not started, which the resumed sweep does not know): as many as asked, none twice.
    trials = [t for t in (run / "sweep").glob("_trial_*") if (t / "result.json").is_file() and (t / "result.json").stat().st_size]
    assert len(trials) == int(option("--samples"))
    for trial in trials:  # finished trials kept: no epoch reported twice
        epochs = [json.loads(line)["training_iteration"] for line in (trial / "result.json").read_text().splitlines() if line.strip()]
        assert epochs == list(range(1, len(epochs) + 1)), (trial.name, epochs)
    for got, expected in zip(done["final"]["metrics_summary"], want["final"]["metrics_summary"], strict=True):
        assert got["val/loss"] == pytest.approx(expected["val/loss"], abs=1e-6) and got["train/loss"] == pytest.approx(expected["train/loss"], abs=1e-6)
    ours, theirs = (torch.load(r / "export" / "model.pt", weights_only=True) for r in (run, whole))
    assert all(torch.allclose(ours[k], theirs[k], atol=1e-6) for k in theirs)
    assert (run / "report" / "report.html").is_file()


def test_a_different_command_under_a_used_name_is_refused_and_the_run_kept(uninterrupted):
    from trainyard.pipeline.run import run_pipeline

    run, _ = uninterrupted
    before = (run / "pipeline.json").read_text()
    with pytest.raises(ValueError, match=r"run .*whole was started by another command \(different: overrides, spec\); rerun that command"):
        overrides = [o for o in MAIN + TINY if "=" in o and not o.startswith("final.")] + ["final.batch_size=16"]
        run_pipeline(ROOT / CONFIG, ROOT / SPACE, overrides, samples=int(option("--samples")), workers=int(option("--workers")),
                     max_concurrent=1, output_dir=run.parent, name="whole")
    assert (run / "pipeline.json").read_text() == before


def test_on_object_storage_everything_is_kept_there_and_a_rerun_elsewhere_finishes_it(uninterrupted, ray_session, bucket, tmp_path):
    """`--storage s3://...`: every artifact in the bucket and nothing in the working directory;
    killed in the final training, the same command from another directory (as on another
    machine: only the URI in common) finishes with the uninterrupted result."""
    import io

    from trainyard import storage

    whole, _ = uninterrupted
    here = [str(ROOT / word) if word in (CONFIG, SPACE) else word for word in MAIN]
    argv = [sys.executable, "-m", "trainyard.cli.main", "run", *here, *TINY, "--storage", bucket.uri("runs"), "--name", "s3run"]
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    _kill_when(argv, first, lambda: any("/checkpoint_e0001_" in k for k in bucket.keys("runs/s3run/final/")), ray_session, cwd=first)
    assert not any(k.startswith("runs/s3run/export/") for k in bucket.keys()), "killed in the final training"

    proc = subprocess.run(argv, cwd=second, env=env(ray_session), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resuming; done already: sweep" in proc.stdout + proc.stderr
    assert f"run {bucket.uri('runs', 's3run')}" in proc.stdout
    assert list(first.iterdir()) == [] and list(second.iterdir()) == [], "nothing under the working directory"

    keys = bucket.keys("runs/s3run/")
    for wanted in ("pipeline.json", "lineage.json", "sweep/trials.csv", "sweep/best_config.yaml", "sweep/trial_curves.png", "export/MANIFEST.json",
                   "export/model.onnx", "report/report.html", "report/report.md", "report/loss.png"):
        assert f"runs/s3run/{wanted}" in keys, wanted
    done, want = json.loads(storage.read_text(bucket.uri("runs", "s3run", "pipeline.json")))["stages"], stages(whole)
    assert done["sweep"]["best_params"] == want["sweep"]["best_params"] and done["sweep"]["trials"] == want["sweep"]["trials"]
    for got, expected in zip(done["final"]["metrics_summary"], want["final"]["metrics_summary"], strict=True):
        assert got["val/loss"] == pytest.approx(expected["val/loss"], abs=1e-6) and got["train/loss"] == pytest.approx(expected["train/loss"], abs=1e-6)
    assert done["final"]["checkpoint_path"].startswith(bucket.uri("runs", "s3run", "final", "checkpoint_e0006_"))
    lineage = json.loads(storage.read_text(bucket.uri("runs", "s3run", "lineage.json")))
    assert lineage["checkpoint"] == done["final"]["checkpoint_path"] and lineage["sweep_path"] == bucket.uri("runs", "s3run", "sweep")
    obj = bucket.client.get_object(Bucket=bucket.name, Key="runs/s3run/export/model.pt")
    ours, theirs = torch.load(io.BytesIO(obj["Body"].read()), weights_only=True), torch.load(whole / "export" / "model.pt", weights_only=True)
    assert all(torch.allclose(ours[k], theirs[k], atol=1e-6) for k in theirs)
