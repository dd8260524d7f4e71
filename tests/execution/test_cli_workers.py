import json
from pathlib import Path

import pytest
from trainyard.cli.main import main

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TINY = ["data.train_size=64", "data.val_size=16", "model.d_model=16", "model.n_heads=2", "model.n_layers=1", "batch_size=8", "epochs=2"]


def test_trainyard_train_with_workers_runs_on_ray_and_reports_like_in_process(ray_session, tmp_path):
    out_ray, out_local = tmp_path / "ray.json", tmp_path / "local.json"
    config = str(ROOT / "jobs" / "configs" / "addition.yaml")
    assert main(["train", config, *TINY, "--workers", "2", "--storage-path", str(tmp_path / "s"), "--results", str(out_ray)]) == 0
    local = [*TINY[:-2], "batch_size=16", "epochs=2", f"checkpoint_dir={tmp_path / 'ck'}"]
    assert main(["train", config, *local, "--results", str(out_local)]) == 0
    on_ray, in_process = json.loads(out_ray.read_text()), json.loads(out_local.read_text())
    assert on_ray["checkpoint_path"].startswith(str(tmp_path / "s"))
    for a, b in zip(on_ray["metrics_summary"], in_process["metrics_summary"]):
        assert a["train/loss"] == pytest.approx(b["train/loss"], abs=1e-6)
        assert a["val/exact_match"] == b["val/exact_match"]


def test_negative_workers_is_a_clear_error(capsys):
    assert main(["train", str(ROOT / "jobs" / "configs" / "addition.yaml"), "--workers", "-1"]) == 2
    assert "--workers -1" in capsys.readouterr().err
