import json
import logging
from types import SimpleNamespace

import pytest
import torch
from trainyard import CheckpointError, Trainer, TrainingConfig
from trainyard.engine import checkpoint as ck
from trainyard.engine import run_folder

from tests.helpers import VOCAB, lm_factory, lm_samples

CONFIG = SimpleNamespace(vocab_size=VOCAB)


def finished_run(run_dir, epochs=3, **cfg):
    tc = TrainingConfig(epochs=epochs, checkpoint_dir=str(run_dir), keep_last_n_checkpoints=None, **cfg)
    return Trainer(lm_factory(), CONFIG, tc).train(lm_samples())


def test_a_checkpoint_is_a_complete_self_describing_directory(tmp_path):
    r = finished_run(tmp_path / "run")
    path = ck.Path(r["checkpoint_path"])
    assert sorted(p.name for p in path.iterdir()) == sorted([*ck.TENSOR_FILES, ck.STATE_JSON, ck.MARKER])
    for name in ck.TENSOR_FILES:
        torch.load(path / name, weights_only=True)  # loadable without unpickling code
    state = json.loads((path / ck.STATE_JSON).read_text())
    assert state["training_config"]["epochs"] == 3 and state["task_spec"]["name"] == "language_modeling"
    assert state["position"] == {"epoch": 3, "batch_in_epoch": 6, "global_step": 18, "epoch_complete": True}
    assert state["format_version"] == ck.FORMAT_VERSION and state["model_config"] == {"vocab_size": VOCAB}
    assert set(torch.load(path / "state.pt", weights_only=True)["rng"]) == {"torch", "numpy_keys", "cuda"}


def test_a_checkpoint_directory_is_a_ray_checkpoint_as_is(tmp_path):
    ray_train = pytest.importorskip("ray.train")
    r = finished_run(tmp_path / "run", epochs=1)
    ray_ckpt = ray_train.Checkpoint.from_directory(r["checkpoint_path"])
    with ray_ckpt.as_directory() as d:
        ck.verify(ck.Path(d))


def test_keep_last_n_checkpoints(tmp_path):
    tc = TrainingConfig(epochs=4, checkpoint_dir=str(tmp_path / "run"), keep_last_n_checkpoints=2)
    r = Trainer(lm_factory(), CONFIG, tc).train(lm_samples())
    names = [p.name for p in run_folder.list_checkpoints(tmp_path / "run")]
    assert names == ["checkpoint_e0003_b0000006", "checkpoint_e0004_b0000006"]
    assert r["checkpoint_path"].endswith(names[-1])


def _corrupt(path, how):
    target = path / "model.pt"
    data = bytearray(target.read_bytes())
    if how == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif how == "flip":
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(data)
    elif how == "marker":
        (path / ck.MARKER).unlink()
    elif how == "delete":
        target.unlink()


@pytest.mark.parametrize(
    "how, message",
    [
        ("truncate", r"checkpoint .*file model.pt is truncated or corrupt"),
        ("flip", r"checkpoint .*file model.pt is corrupt \(its sha256"),
        ("marker", r"checkpoint .* is incomplete: its COMPLETE marker is missing"),
        ("delete", r"checkpoint .*file model.pt is missing"),
    ],
)
def test_a_damaged_checkpoint_is_refused_naming_the_file(tmp_path, how, message):
    r = finished_run(tmp_path / "run", epochs=1)
    _corrupt(ck.Path(r["checkpoint_path"]), how)
    tc = TrainingConfig(epochs=2, checkpoint_dir=str(tmp_path / "run"))
    with pytest.raises(CheckpointError, match=message):
        Trainer(lm_factory(), CONFIG, tc).train(lm_samples(), resume_from=r["checkpoint_path"])


def test_a_run_directory_falls_back_to_the_newest_valid_checkpoint(tmp_path, caplog):
    finished_run(tmp_path / "run", epochs=3)
    saved = run_folder.list_checkpoints(tmp_path / "run")
    _corrupt(saved[-1], "truncate")
    with caplog.at_level(logging.WARNING, logger="trainyard"):
        assert run_folder.resolve(tmp_path / "run", warn=logging.getLogger("trainyard").warning) == saved[-2]
    assert "skipping checkpoint" in caplog.text and "model.pt" in caplog.text
    tc = TrainingConfig(epochs=3, checkpoint_dir=str(tmp_path / "run"), keep_last_n_checkpoints=None)
    r = Trainer(lm_factory(), CONFIG, tc).train(lm_samples(), resume_from=tmp_path / "run")
    assert list(r["metrics_summary"]["epoch"]) == [1, 2, 3]


def test_a_run_directory_without_any_valid_checkpoint_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        run_folder.resolve(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="does not exist"):
        run_folder.resolve(tmp_path / "nowhere")


def test_a_crash_while_saving_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    r = finished_run(tmp_path / "run", epochs=1)
    before = [p.name for p in (tmp_path / "run").iterdir()]
    real_save, calls = torch.save, []

    def failing_save(obj, f, *a, **k):
        calls.append(f)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", failing_save)
    tc = TrainingConfig(epochs=2, checkpoint_dir=str(tmp_path / "run"))
    with pytest.raises(OSError, match="disk full"):
        Trainer(lm_factory(), CONFIG, tc).train(lm_samples(), resume_from=r["checkpoint_path"])
    assert [p.name for p in (tmp_path / "run").iterdir()] == before
    ck.verify(ck.Path(r["checkpoint_path"]))


def test_a_fresh_run_never_overwrites_an_existing_run(tmp_path):
    r = finished_run(tmp_path / "run", epochs=1)
    before = (ck.Path(r["checkpoint_path"]) / "model.pt").read_bytes()
    with pytest.raises(ValueError, match="already holds checkpoints.*resume_from="):
        finished_run(tmp_path / "run", epochs=1)
    assert (ck.Path(r["checkpoint_path"]) / "model.pt").read_bytes() == before


class Payload:
    def __reduce__(self):
        return (print, ("code from a checkpoint ran",))


def test_loading_never_runs_code_from_a_checkpoint(tmp_path):
    r = finished_run(tmp_path / "run", epochs=1)
    path = ck.Path(r["checkpoint_path"])
    torch.save({"w": Payload()}, path / "model.pt")
    marker = json.loads((path / ck.MARKER).read_text())
    marker["files"]["model.pt"] = ck.describe(path / "model.pt")  # a forged, consistent marker
    (path / ck.MARKER).write_text(json.dumps(marker))
    with pytest.raises(CheckpointError, match="cannot load model.pt"):
        ck.load(path)


@pytest.mark.parametrize("listed", [[], ["state.pt", "trainer_state.json", "optimizer.pt"]], ids=["no-files", "model-unlisted"])
def test_a_marker_must_list_every_file_loading_reads(tmp_path, listed):
    r = finished_run(tmp_path / "run", epochs=1)
    path = ck.Path(r["checkpoint_path"])
    marker = json.loads((path / ck.MARKER).read_text())
    marker["files"] = {name: d for name, d in marker["files"].items() if name in listed}
    (path / ck.MARKER).write_text(json.dumps(marker))
    torch.save({"w": torch.zeros(1)}, path / "model.pt")  # modified, and the marker cannot tell
    with pytest.raises(CheckpointError, match=r"marker does not list .*model\.pt.*which loading reads"):
        ck.load(path)


@pytest.mark.parametrize("drop", ["history", "position.global_step"])
def test_a_trainer_state_with_missing_fields_names_the_file_and_the_fields(tmp_path, drop):
    r = finished_run(tmp_path / "run", epochs=1)
    path = ck.Path(r["checkpoint_path"])
    state = json.loads((path / ck.STATE_JSON).read_text())
    if "." in drop:
        del state["position"][drop.split(".")[1]]
    else:
        del state[drop]
    (path / ck.STATE_JSON).write_text(json.dumps(state))
    marker = json.loads((path / ck.MARKER).read_text())
    marker["files"][ck.STATE_JSON] = ck.describe(path / ck.STATE_JSON)  # consistent: only the content is short
    (path / ck.MARKER).write_text(json.dumps(marker))
    with pytest.raises(CheckpointError, match=rf"file trainer_state.json lacks {drop.replace('.', '[.]')}: "):
        Trainer(lm_factory(), CONFIG, TrainingConfig(epochs=2, checkpoint_dir=str(tmp_path / "run"))).train(lm_samples(), resume_from=str(path))


def test_a_checkpoint_from_a_newer_format_is_refused(tmp_path):
    r = finished_run(tmp_path / "run", epochs=1)
    path = ck.Path(r["checkpoint_path"])
    marker = json.loads((path / ck.MARKER).read_text())
    marker["format_version"] = ck.FORMAT_VERSION + 1
    (path / ck.MARKER).write_text(json.dumps(marker))
    with pytest.raises(CheckpointError, match="upgrade trainyard"):
        ck.load(path)


def test_a_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    from tests.helpers import TinyLM

    r = finished_run(tmp_path / "run", epochs=1)
    tc = TrainingConfig(epochs=2, checkpoint_dir=str(tmp_path / "run"))
    with pytest.raises(CheckpointError, match="does not fit this model"):
        Trainer(TinyLM(dim=8), CONFIG, tc).train(lm_samples(), resume_from=r["checkpoint_path"])


def test_an_unwritable_checkpoint_dir_is_refused_before_the_first_step(tmp_path):
    from trainyard import TrainingHooks

    class Count(TrainingHooks):
        batches = 0

        def on_batch_begin(self, trainer, batch):
            Count.batches += 1

    (tmp_path / "a_file").write_text("not a directory")
    tc = TrainingConfig(epochs=1, checkpoint_dir=str(tmp_path / "a_file" / "run"))
    with pytest.raises(ValueError, match=r"checkpoint_dir .*a_file/run cannot be written \(.*\): choose a checkpoint_dir"):
        Trainer(lm_factory(), CONFIG, tc, hooks=Count()).train(lm_samples())
    assert Count.batches == 0


def test_a_new_run_folder_is_owner_only_and_an_existing_one_keeps_its_mode(tmp_path):
    import stat

    finished_run(tmp_path / "run", epochs=1)
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o700
    (tmp_path / "team").mkdir(mode=0o750)
    finished_run(tmp_path / "team", epochs=1)
    assert stat.S_IMODE((tmp_path / "team").stat().st_mode) == 0o750


def test_what_a_killed_save_left_is_tidied_when_the_run_is_resumed(tmp_path):
    r = finished_run(tmp_path / "run", epochs=1)
    run, newest = tmp_path / "run", ck.Path(r["checkpoint_path"])
    (run / ".tmp-checkpoint_e0002_b0000001-0123abcd").mkdir()  # killed while writing
    moved = run / f".tmp-old-{newest.name}-89abcdef"  # killed between moving the old copy aside and renaming the new one
    newest.rename(moved)
    tc = TrainingConfig(epochs=2, checkpoint_dir=str(run))
    resumed = Trainer(lm_factory(), CONFIG, tc).train(lm_samples(), resume_from=str(run))
    assert list(resumed["metrics_summary"]["epoch"]) == [1, 2]  # resumed from the epoch-1 checkpoint, put back
    assert not [p.name for p in run.iterdir() if p.name.startswith(".tmp-")]
    assert ck.verify(newest)


def test_resuming_says_when_the_run_is_finished_and_what_changed(tmp_path, caplog):
    import logging

    finished_run(tmp_path / "run", epochs=1, learning_rate=1e-3)
    with caplog.at_level(logging.INFO, logger="trainyard"):
        again = Trainer(lm_factory(), CONFIG, TrainingConfig(epochs=1, checkpoint_dir=str(tmp_path / "run"), learning_rate=1e-3)).train(
            lm_samples(), resume_from=str(tmp_path / "run"))
    assert "is the end of a finished run: all 1 epochs are trained, nothing is left to do (raise epochs to train further)" in caplog.text
    assert len(again["loss_history"]) == 6 and "changed since" not in caplog.text
    caplog.clear()
    tc = TrainingConfig(epochs=2, checkpoint_dir=str(tmp_path / "run"), learning_rate=5e-2, weight_decay=0.5)
    with caplog.at_level(logging.INFO, logger="trainyard"):
        trainer = Trainer(lm_factory(), CONFIG, tc)
        trainer.train(lm_samples()[:12], resume_from=str(tmp_path / "run"))
    text = caplog.text
    assert "epochs 1 -> 2: the run now ends after epoch 2 and the learning-rate schedule is recomputed" in text
    assert "learning_rate 0.001 -> 0.05: the remaining steps use the new rate (on the schedule)" in text
    assert "weight_decay 0.01 -> 0.5 is not applied" in text
    assert "training samples 24 -> 12" in text
    # what the messages claim: the new rate is the one used, the old weight decay the one kept
    from trainyard.engine.step import learning_rate

    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(learning_rate(tc, trainer.state.global_step - 1, trainer.batches_per_epoch))
    assert trainer.optimizer.param_groups[0]["weight_decay"] == 0.01


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 2 MB filesystem (tmpfs), so a save meets a real full disk; where mounting is
    not allowed (not root), the test skips."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_stops_the_run_naming_the_folder_and_its_last_good_checkpoint(tiny_disk):
    """PyTorch's own words for it were '[enforce fail at inline_container.cc:672] . unexpected pos'."""
    from trainyard import TrainingHooks

    class FillTheDisk(TrainingHooks):
        def on_checkpoint(self, trainer, path):
            if not (tiny_disk / "filler").exists():
                with open(tiny_disk / "filler", "wb") as f:
                    try:
                        while True:
                            f.write(b"\0" * 65536)
                            f.flush()
                    except OSError:
                        pass

    run = tiny_disk / "run"
    tc = TrainingConfig(epochs=3, checkpoint_dir=str(run))
    with pytest.raises(CheckpointError, match=rf"checkpoint {run}/checkpoint_e0002_\w+ could not be written: no space left on the device "
                                              rf"holding {run} \(0\.\d MB free\); free some space.*The run stopped at epoch 2, step \d+: "
                                              rf"its last good checkpoint is {run}/checkpoint_e0001_\w+, which a rerun resumes from"):
        Trainer(lm_factory(), CONFIG, tc, hooks=FillTheDisk()).train(lm_samples())
    (tiny_disk / "filler").unlink()
    assert [p.name for p in run_folder.list_checkpoints(run)] == ["checkpoint_e0001_b0000006"] and not list(run.glob(".tmp-*"))
    ck.verify(run / "checkpoint_e0001_b0000006")


def _edit_and_resign(path, fname, edit):
    """Change one file of a checkpoint and sign the marker again: the files verify, the
    contents are wrong (what an edit, or a fault before the save signed them, leaves)."""
    edit(path / fname)
    marker = json.loads((path / ck.MARKER).read_text())
    marker["files"][fname] = ck.describe(path / fname)
    (path / ck.MARKER).write_text(json.dumps(marker))


def _state_edit(change):
    def edit(file):
        state = json.loads(file.read_text())
        change(state)
        file.write_text(json.dumps(state))
    return edit


def _wrong_shape(file):
    state = torch.load(file, weights_only=True)
    name = next(iter(state))
    state[name] = torch.zeros(3, 3)
    torch.save(state, file)


@pytest.mark.parametrize(("fname", "edit", "message"), [
    (ck.STATE_JSON, _state_edit(lambda s: s["position"].update(extra=1)), r"file trainer_state\.json: position holds \['batch_in_epoch', 'epoch', 'epoch_complete', 'extra'"),
    (ck.STATE_JSON, _state_edit(lambda s: s.update(rng="x")), r"its random states \(rng in trainer_state\.json and state\.pt\) cannot be restored"),
    (ck.STATE_JSON, lambda f: f.write_text("{not json"), r"file trainer_state\.json is not valid JSON"),
    (ck.STATE_JSON, _state_edit(lambda s: s.update(train_size="many")), r"file trainer_state\.json: train_size is 'many', not a int"),
    ("model.pt", _wrong_shape, r"does not fit this model: .*size mismatch"),
], ids=["extra-position-key", "rng", "json", "train-size", "tensor-shape"])
def test_contents_that_verify_but_are_wrong_are_named_and_a_run_directory_falls_back(tmp_path, caplog, fname, edit, message):
    """They ended in a TypeError somewhere in the restore, and a resume from the run
    directory picked the broken checkpoint anyway."""
    whole = finished_run(tmp_path / "run", epochs=3)
    newest = run_folder.list_checkpoints(tmp_path / "run")[-1]
    _edit_and_resign(newest, fname, edit)
    tc = TrainingConfig(epochs=3, checkpoint_dir=str(tmp_path / "run"), keep_last_n_checkpoints=None)
    with pytest.raises(CheckpointError, match=rf"checkpoint {newest}.*{message}"):
        Trainer(lm_factory(), CONFIG, tc).train(lm_samples(), resume_from=newest)
    with caplog.at_level(logging.WARNING, logger="trainyard"):  # epoch 2's checkpoint, and epoch 3 trained again
        resumed = Trainer(lm_factory(), CONFIG, tc).train(lm_samples(), resume_from=tmp_path / "run")
    assert f"skipping checkpoint {newest}" in caplog.text and "falling back to an older checkpoint" in caplog.text
    assert resumed["loss_history"] == whole["loss_history"]
