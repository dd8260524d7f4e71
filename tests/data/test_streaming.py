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
