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
