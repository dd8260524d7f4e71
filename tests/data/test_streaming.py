"""Data read lazily from storage (Parquet row groups) trains exactly as the same samples in
memory: same order, same losses, and a sample-exact resume mid-epoch."""

from types import SimpleNamespace

import pytest
import torch
from trainyard import Trainer, TrainingConfig
from trainyard.engine.data.inputs import as_dataset
from trainyard.engine.data.rows import ParquetSource

from tests.engine.test_resume import CONFIG, StopAt, assert_same_run
from tests.helpers import lm_factory, lm_samples

DATA = lm_samples(53, length=6, seed=4)  # 53 rows in 3 files of row groups of 7: chunks cut across both


def write_parquet(folder, samples, files=3, row_group=7):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    per_file = -(-len(samples) // files)
    for f in range(files):
        part = samples[f * per_file : (f + 1) * per_file]
        table = pa.table({"input_ids": [s.tolist() for s in part]})
        pq.write_table(table, folder / f"part-{f:02d}.parquet", row_group_size=row_group)
    return folder


def train(data, ckdir, hooks=None, resume_from=None, **cfg):
    settings = dict(learning_rate=1e-2, batch_size=4, epochs=2, checkpoint_dir=str(ckdir), keep_last_n_checkpoints=None, shuffle_chunk_rows=10)
    settings.update(cfg)
    trainer = Trainer(lm_factory(dropout=0.2), CONFIG, TrainingConfig(**settings), hooks=hooks)
    return trainer.train(data, resume_from=resume_from), trainer.model


def test_a_parquet_directory_reads_lazily_and_trains_as_the_same_samples_in_memory(tmp_path):
    folder = write_parquet(tmp_path / "data", DATA)
    source = as_dataset(str(folder))
    assert isinstance(source, ParquetSource) and len(source) == 53 and len(source.pieces) == 9
    assert torch.equal(source[52]["input_ids"], DATA[52]) and torch.equal(source[-1]["input_ids"], DATA[52])
    assert_same_run(train(str(folder), tmp_path / "a"), train(DATA, tmp_path / "b"))
    assert_same_run(train(str(tmp_path / "data" / "part-*.parquet"), tmp_path / "c"), train(DATA, tmp_path / "d"))


def test_parquet_in_object_storage_streams_by_row_group_and_trains_as_the_same_files_here(tmp_path, bucket):
    folder = write_parquet(tmp_path / "data", DATA)
    for f in sorted(folder.iterdir()):
        bucket.client.upload_file(str(f), bucket.name, f"data/{f.name}")
    source = as_dataset(bucket.uri("data"))
    assert isinstance(source, ParquetSource) and len(source) == 53 and len(source.pieces) == 9
    assert not source.forks  # an S3 client is not safe across a fork: read in the training process
    assert torch.equal(source[52]["input_ids"], DATA[52])
    assert_same_run(train(bucket.uri("data"), tmp_path / "a"), train(str(folder), tmp_path / "b"))
    assert_same_run(train(bucket.uri("data", "part-01.parquet"), tmp_path / "c"), train(str(folder / "part-01.parquet"), tmp_path / "d"))
    with pytest.raises(FileNotFoundError, match=r"train_data: nothing at s3://.*/missing"):
        as_dataset(bucket.uri("missing"))
    with pytest.raises(ValueError, match=r"patterns are matched for local paths only; name the folder"):
        as_dataset(bucket.uri("data", "part-*.parquet"))


def test_a_parquet_source_holds_at_most_two_chunks(tmp_path):
    source = as_dataset(str(write_parquet(tmp_path / "data", DATA)))
    source.chunk_rows = 10
    for batch in ([0, 1, 2], [15, 3], [40, 41], [52]):
        rows = source.__getitems__(batch)
        assert torch.equal(rows["input_ids"], torch.stack([DATA[i] for i in batch]))
        assert len(source._chunks) <= 2


@pytest.mark.parametrize("accum, stop", [(1, (1, 5)), (3, (2, 4))])
def test_stop_mid_epoch_and_resume_from_parquet_is_bit_identical(tmp_path, accum, stop):
    folder = str(write_parquet(tmp_path / "data", DATA))
    full = train(folder, tmp_path / "full", gradient_accumulation_steps=accum)
    first, _ = train(folder, tmp_path / "part", hooks=StopAt(*stop), gradient_accumulation_steps=accum)
    assert first["stopped_early"] == "test"
    resumed = train(folder, tmp_path / "part", resume_from=first["checkpoint_path"], gradient_accumulation_steps=accum)
    assert_same_run(resumed, full)


def test_ragged_parquet_rows_are_padded_like_ragged_samples_in_memory(tmp_path):
    ragged = [s[: 3 + i % 4] for i, s in enumerate(DATA[:20])]
    folder = str(write_parquet(tmp_path / "data", ragged))
    cfg = SimpleNamespace(vocab_size=CONFIG.vocab_size, pad_token_id=0)
    runs = []
    for data in (folder, ragged):
        trainer = Trainer(lm_factory(), cfg, TrainingConfig(batch_size=4, epochs=1, learning_rate=1e-2, checkpoint_dir=str(tmp_path / str(len(runs)))))
        runs.append(trainer.train(data)["loss_history"])
    assert runs[0] == runs[1]


def test_bad_parquet_inputs_get_errors_naming_the_problem(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pytest.raises(FileNotFoundError, match=r"pattern .*nothing-\*\.parquet matches no files"):
        as_dataset(str(tmp_path / "nothing-*.parquet"))
    pq.write_table(pa.table({"tokens": [[1, 2]], "label": [0]}), tmp_path / "wrong.parquet")
    with pytest.raises(ValueError, match=r"no 'input_ids' column; its columns are \['label', 'tokens'\]"):
        as_dataset(str(tmp_path / "wrong.parquet"))
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "a.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match=r"cannot read .*corrupt/a\.parquet as Parquet"):
        as_dataset(str(tmp_path / "corrupt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="the directory .*empty holds no .parquet files"):
        as_dataset(str(tmp_path / "empty"))


def test_block_statistics_carry_the_range_of_token_ids():
    """What a Ray Dataset's blocks report (computed where each block is) lets the engine
    refuse ids the model cannot embed before the first step."""
    import pyarrow as pa
    from trainyard.engine.data.samples import IdRange
    from trainyard.execution.ingest import _block_stats

    rows, shortest, longest, found = _block_stats(pa.table({"input_ids": [[5, 2, 9], [1, 70]]}))
    assert (rows, shortest, longest, found) == (2, 2, 3, IdRange(1, 70, False))
    assert _block_stats(pa.table({"input_ids": [[0.5, 2.0]]}))[3] == IdRange(0.5, 2.0, True)
    assert _block_stats(pa.table({"x": [1]}))[3] is None


def test_a_ranks_memory_stays_flat_from_1x_to_10x_rows(tmp_path):
    """What a rank holds is two shuffle chunks, however many rows there are: its peak memory
    reading an epoch of 10x the rows is that of 1x (the allocator gives back each chunk's
    memory; before, it kept it, and the peak grew with the data)."""
    import json
    import subprocess
    import sys

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.conftest import ROOT

    grown = {}
    for rows in (20_000, 200_000):  # a rank reads half: 5 MB, then 50 MB of tokens
        folder = tmp_path / str(rows)
        folder.mkdir()
        ids = np.random.default_rng(0).integers(0, 100, size=(rows, 64))
        for f, part in enumerate(np.split(ids, 4)):
            pq.write_table(pa.table({"input_ids": pa.FixedSizeListArray.from_arrays(pa.array(part.ravel()), 64)}),
                           folder / f"part-{f}.parquet", row_group_size=5000)
        out = subprocess.run([sys.executable, str(ROOT / "tests" / "data" / "stream_memory.py"), str(folder), "5000"],
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert out.returncode == 0, out.stderr[-2000:]
        measured = json.loads(out.stdout)
        assert measured["rows"] == rows // 2
        grown[rows] = (measured["peak"] - measured["before"]) / 1024  # MB
    assert grown[200_000] < grown[20_000] + 8, grown  # the 45 MB more that it read are not held
