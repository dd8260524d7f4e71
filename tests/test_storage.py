"""Locations: a local path (relative, `~`, `file://`) or a URI, told apart in one place."""

import os
from pathlib import Path

from trainyard import storage


def test_uris_are_remote_and_everything_else_is_a_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for uri in ("s3://bucket/runs", "gs://b/p", "hdfs://namenode:8020/x"):
        assert storage.is_uri(uri) and storage.absolute(uri) == uri and storage.relative_to("/somewhere", uri) == uri
    assert storage.is_local("runs") and storage.is_local(Path("a/b")) and storage.is_local("file:///tmp/x")
    assert storage.absolute("runs") == str(tmp_path / "runs")
    assert storage.absolute("file:///tmp/x") == str(Path("/tmp/x").resolve())
    assert storage.absolute("~/x") == str(Path(os.path.expanduser("~/x")).resolve())


def test_a_path_in_a_file_is_relative_to_that_files_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.relative_to("configs", "../data/train.parquet") == str(tmp_path / "data" / "train.parquet")
    assert storage.relative_to("configs", "/abs/train.parquet") == "/abs/train.parquet"


def test_suffix_of_paths_and_uris():
    assert storage.suffix("s3://bucket/dir/part-0.PARQUET") == ".parquet"
    assert storage.suffix("s3://bucket/dir/") == "" and storage.suffix("data/x.jsonl") == ".jsonl"
    assert storage.suffix("gs://b/x.csv?generation=3") == ".csv"


def test_a_run_name_is_one_folder_and_never_a_path():
    import pytest

    for good in ("addition-7afa0610", "final", "sweep.v2", "my_run"):
        assert storage.folder_name(good) == good
    for bad in ("../../x", "/abs", "a/b", "a\\b", "..", ".", "", " ", "x\x00"):
        with pytest.raises(ValueError, match=r"must be one folder name .* not a path: the run writes in <storage>/<name>"):
            storage.folder_name(bad)


def test_a_small_file_is_written_whole_and_read_back(tmp_path):
    target = tmp_path / "deeper" / "state.json"
    assert storage.read_text(target) is None  # nothing there yet: None, not an error
    storage.write_text(target, "old")
    storage.write_text(str(target), "new")
    assert storage.read_text(f"file://{target}") == "new"
    assert [p.name for p in target.parent.iterdir()] == ["state.json"]  # the temporary file was renamed, not left


def test_a_location_joins_as_a_uri_or_as_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.join("s3://bucket/runs/", "x", "final") == "s3://bucket/runs/x/final"
    assert storage.join("runs", "x") == str(tmp_path / "runs" / "x")


def test_trainyard_storage_is_every_commands_default(monkeypatch):
    monkeypatch.setenv("TRAINYARD_STORAGE", "s3://team-bucket/runs")
    assert storage.default_storage() == "s3://team-bucket/runs"
    monkeypatch.setenv("TRAINYARD_STORAGE", "  ")
    assert storage.default_storage() == "runs"
    monkeypatch.delenv("TRAINYARD_STORAGE")
    assert storage.default_storage() == "runs"


def test_what_ray_reports_as_filesystem_and_path_is_a_location_again():
    import pyarrow.fs

    s3 = pyarrow.fs.S3FileSystem(region="us-east-1", endpoint_override="http://127.0.0.1:9")
    assert storage.uri(s3, "bucket/runs/x/checkpoint_e0001") == "s3://bucket/runs/x/checkpoint_e0001"
    assert storage.uri(pyarrow.fs.SubTreeFileSystem("bucket/runs", s3), "x") == "s3://bucket/runs/x"
    assert storage.uri(pyarrow.fs.LocalFileSystem(), "/tmp/runs/x") == "/tmp/runs/x"


def test_folders_go_to_object_storage_whole_and_come_back(bucket, tmp_path):
    import pytest

    where = bucket.uri("runs", "x", "export")
    with storage.staged(where) as out:
        (out / "model.pt").write_bytes(b"\x00weights")
        (out / "torchserve").mkdir()
        (out / "torchserve" / "handler.py").write_text("pass\n")
    assert bucket.keys("runs/") == ["runs/x/export/model.pt", "runs/x/export/torchserve/handler.py"]
    assert storage.exists(where) and storage.exists(f"{where}/model.pt") and not storage.exists(bucket.uri("runs", "y"))

    with pytest.raises(RuntimeError), storage.staged(bucket.uri("runs", "half")) as out:
        (out / "a.bin").write_bytes(b"1")
        raise RuntimeError("the export failed half way")
    assert not storage.exists(bucket.uri("runs", "half")), "a failed block uploads nothing"

    with storage.downloaded(bucket.uri("runs", "x"), keep=lambda rel: rel.endswith(".py")) as local:
        assert [p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()] == ["export/torchserve/handler.py"]
        assert (local / "export" / "torchserve" / "handler.py").read_text() == "pass\n"
    assert not local.exists(), "the download is temporary"

    storage.write_text(bucket.uri("runs", "x", "pipeline.json"), '{"stages": {}}')
    assert storage.read_text(bucket.uri("runs", "x", "pipeline.json")) == '{"stages": {}}'
    assert storage.read_text(bucket.uri("runs", "x", "nothing.json")) is None
    with pytest.raises(FileNotFoundError, match=r"s3://.*/runs/none: nothing is there \(check the URI, and AWS_ENDPOINT_URL"):
        with storage.downloaded(bucket.uri("runs", "none")):
            pass


def test_local_folders_are_used_in_place(tmp_path):
    with storage.staged(tmp_path / "new" / "export") as out:
        (out / "a.txt").write_text("a")
    assert out == tmp_path / "new" / "export" and (out / "a.txt").read_text() == "a"
    with storage.downloaded(tmp_path / "new") as local:
        assert local == tmp_path / "new"
    assert (tmp_path / "new" / "export" / "a.txt").is_file()


def test_an_experiment_config_in_object_storage_loads(bucket):
    from trainyard.experiment import load_spec

    text = (Path(__file__).resolve().parents[1] / "jobs" / "configs" / "addition.yaml").read_text()
    storage.write_text(bucket.uri("sweep", "best_config.yaml"), text)
    spec = load_spec(bucket.uri("sweep", "best_config.yaml"), ["epochs=3"])
    assert spec.training.epochs == 3
    import pytest

    with pytest.raises(FileNotFoundError, match=r"experiment config s3://.*/sweep/missing.yaml not found"):
        load_spec(bucket.uri("sweep", "missing.yaml"))


def test_a_run_in_this_process_refuses_object_storage_and_says_what_works(bucket, capsys):
    from trainyard.cli.main import main

    assert main(["train", str(Path(__file__).resolve().parents[1] / "jobs" / "configs" / "addition.yaml"), "--storage", bucket.uri("runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"trainyard: error: storage {bucket.uri('runs')}: a run in this process writes its checkpoints to local disk; "
                          "train on Ray workers (--workers N)")
    assert bucket.keys() == []


def test_the_job_queue_refuses_object_storage_and_says_what_works(tmp_path, monkeypatch):
    import pytest
    from trainyard.job_queue import JobQueue

    with pytest.raises(ValueError, match=r"storage s3://b/jobs: the job queue keeps each job's log and checkpoints on a filesystem"):
        JobQueue(f"sqlite:///{tmp_path}/jobs.db", storage_path="s3://b/jobs")
    monkeypatch.setenv("TRAINYARD_STORAGE", str(tmp_path / "shared"))
    assert JobQueue(f"sqlite:///{tmp_path}/jobs.db").storage_path == str(tmp_path / "shared" / "jobs")
