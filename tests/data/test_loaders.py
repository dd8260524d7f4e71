import json

import pytest
import torch
from trainyard.data.loaders import load_dataset
from trainyard.data.splits import create_kfold_splits

ROWS = [{"input_ids": [1, 2, 3], "labels": 0}, {"input_ids": [4, 5, 6], "labels": 1}]


def test_every_format_loads_the_same_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    expected = {"input_ids": [[1, 2, 3], [4, 5, 6]], "labels": [0, 1]}
    pq.write_table(pa.table(expected), tmp_path / "d.parquet")
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    (tmp_path / "d.csv").write_text('input_ids,labels\n"[1, 2, 3]",0\n"[4, 5, 6]",1\n')
    torch.save(expected, tmp_path / "d.pt")
    for name in ("d.parquet", "d.jsonl", "d.csv", "d.pt"):
        assert load_dataset(tmp_path / name) == expected, name


def test_bad_assets_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_dataset(tmp_path / "missing.jsonl")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ValueError, match="unsupported data format '.txt'"):
        load_dataset(tmp_path / "d.txt")
    (tmp_path / "ragged.jsonl").write_text('{"input_ids": [1]}\n{"text": "a"}\n')
    with pytest.raises(ValueError, match="row 1 has columns"):
        load_dataset(tmp_path / "ragged.jsonl")


@pytest.mark.parametrize("n, k", [(10, 3), (7, 7), (100, 5)])
def test_kfold_folds_are_disjoint_and_cover_every_index(n, k):
    splits = create_kfold_splits(list(range(n)), k, seed=1)
    assert len(splits) == k
    folds = [set(val) for _, val in splits]
    assert set().union(*folds) == set(range(n)) and sum(len(f) for f in folds) == n
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    for train, val in splits:
        assert set(train).isdisjoint(val) and set(train) | set(val) == set(range(n))
    assert create_kfold_splits(n, k, seed=1) == splits and create_kfold_splits(n, k, seed=2) != splits


def test_kfold_rejects_impossible_k():
    with pytest.raises(ValueError, match="2 <= k <= the number of samples"):
        create_kfold_splits(list(range(3)), 4)
