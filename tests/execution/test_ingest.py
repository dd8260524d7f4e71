"""Data on Ray: Ray Datasets and files stream from the object store to the workers in an
order that is a function of (seed, epoch), so every sample is trained once per epoch and a
run killed mid-epoch resumes sample-exact."""

import json
import math
from collections import Counter
from types import SimpleNamespace

import pytest
from trainyard import Trainer, TrainingConfig

from tests.data.test_streaming import write_parquet
from tests.execution.hooks import FailOnce, RecordRows
from tests.helpers import VOCAB, lm_factory, lm_samples

pytestmark = pytest.mark.slow

CONFIG = SimpleNamespace(vocab_size=VOCAB)
DATA = lm_samples(54, length=6, seed=5)  # chunks of 10 rows: 6 chunks, the last short


def settings(**overrides):
    base = dict(learning_rate=1e-2, batch_size=4, epochs=2, random_seed=3, shuffle_chunk_rows=10)
    base.update(overrides)
    return TrainingConfig(**base)


def ray_dataset(samples, blocks=4):
    import ray

    return ray.data.from_items([{"input_ids": s.tolist()} for s in samples], override_num_blocks=blocks)


def run_config(tmp_path, max_failures=0):
    import ray.train

    return ray.train.RunConfig(storage_path=str(tmp_path / "storage"), failure_config=ray.train.FailureConfig(max_failures=max_failures))


@pytest.fixture(scope="module")
def in_process_batch_8(tmp_path_factory):
    ck = tmp_path_factory.mktemp("local")
    return Trainer(lm_factory(dropout=0.0), CONFIG, settings(batch_size=8, checkpoint_dir=str(ck))).train(DATA)


def test_the_same_samples_train_alike_as_a_ray_dataset_a_parquet_path_or_in_memory(ray_session, in_process_batch_8, tmp_path):
    folder = str(write_parquet(tmp_path / "data", DATA, files=2, row_group=8))
    for i, data in enumerate((ray_dataset(DATA), folder)):  # loader worker processes: Parquet is read in them, the object store is not
        config = settings(batch_size=8, num_workers=2, checkpoint_dir=str(tmp_path / f"ck{i}"))
        results = Trainer(lm_factory(dropout=0.0), CONFIG, config).train(data)
        assert results["loss_history"] == pytest.approx(in_process_batch_8["loss_history"], abs=1e-6)


def test_two_workers_on_uneven_parquet_train_every_sample_once_but_one_and_never_hang(ray_session, tmp_path):
    data = DATA[:53]
    (tmp_path / "rows").mkdir()
    results = Trainer(
        lm_factory(dropout=0.0), CONFIG, settings(), hooks=RecordRows(str(tmp_path / "rows")), scaling=2, run_config=run_config(tmp_path),
    ).train(str(write_parquet(tmp_path / "data", data, files=3, row_group=5)))
    assert len(results["loss_history"]) == 2 * 7  # 26 rows a rank: batches of 4, 4, 4, 4, 4, 4, 2
    rows = [json.loads(line) for f in sorted((tmp_path / "rows").iterdir()) for line in f.read_text().splitlines()]
    everything = Counter(tuple(s.tolist()) for s in data)
    dropped = []
    for epoch in (1, 2):
        trained = Counter(tuple(row) for e, _, row in rows if e == epoch)
        assert max(trained.values()) == 1 and not trained - everything and sum(trained.values()) == 52  # each once, one left out
        assert Counter(rank for e, rank, _ in rows if e == epoch) == {0: 26, 1: 26}
        dropped.append(everything - trained)
    assert dropped[0] != dropped[1]  # not the same row every epoch


def test_parquet_in_object_storage_is_read_by_each_worker_itself_and_trains_alike(ray_session, in_process_batch_8, tmp_path, bucket):
    from trainyard.engine.data.rows import ParquetSource
    from trainyard.execution.ingest import run_inputs

    folder = write_parquet(tmp_path / "data", DATA, files=2, row_group=8)
    for f in sorted(folder.iterdir()):
        bucket.client.upload_file(str(f), bucket.name, f"data/{f.name}")
    # Nothing goes into the object store: the workers get where the row groups are.
    train, _ = run_inputs(bucket.uri("data"), None, CONFIG, on_ray=True)
    assert isinstance(train, ParquetSource) and {f for f, _, _ in train.pieces} == {bucket.uri("data", f.name) for f in folder.iterdir()}
    # The checkpoints go to the bucket too: every 3 steps and at epoch ends, the newest 2 kept.
    import ray.train

    run = ray.train.RunConfig(storage_path=bucket.uri("runs"), name="streamed", checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2))
    results = Trainer(lm_factory(dropout=0.0), CONFIG, settings(checkpoint_every_n_steps=3), scaling=2, run_config=run).train(bucket.uri("data"))
    assert results["loss_history"] == pytest.approx(in_process_batch_8["loss_history"], abs=1e-6)
    kept = sorted({k.split("/")[2] for k in bucket.keys("runs/streamed/") if "/checkpoint_e" in k})
    assert kept == ["checkpoint_e0002_b0000005", "checkpoint_e0002_b0000007"], kept  # step 12 (5th of epoch 2's 7) and the run's end
    assert all(f"runs/streamed/{c}/COMPLETE" in bucket.keys("runs/streamed/") for c in kept)


def test_a_worker_killed_mid_epoch_resumes_sample_exact(ray_session, in_process_batch_8, tmp_path):
    hook = FailOnce(str(tmp_path / "marker"), rank=1, epoch=2, step=10)  # step 10 = 3rd of epoch 2's 7
    results = Trainer(
        lm_factory(dropout=0.0), CONFIG, settings(checkpoint_every_n_steps=2), hooks=hook, scaling=2,
        run_config=run_config(tmp_path, max_failures=1),
    ).train(ray_dataset(DATA))
    assert (tmp_path / "marker").exists(), "the failure happened"
    assert len(results["loss_history"]) == 14
    assert results["loss_history"] == pytest.approx(in_process_batch_8["loss_history"], abs=1e-6)


def test_bad_data_is_refused_before_any_worker_starts(ray_session, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    def train(data, config=CONFIG):
        return Trainer(lm_factory(), config, settings(), scaling=2, run_config=run_config(tmp_path)).train(data)

    with pytest.raises(FileNotFoundError, match=r"train_data: the pattern .*none-\*\.jsonl matches no files"):
        train(str(tmp_path / "none-*.jsonl"))
    with pytest.raises(ValueError, match=r"no 'input_ids' column; its columns are \['label', 'tokens'\]"):
        train(ray.data.from_items([{"tokens": [1, 2], "label": 0}]))
    ragged = ray.data.from_items([{"input_ids": list(range(3, 3 + n))} for n in (2, 5, 3)])
    with pytest.raises(ValueError, match=r"different lengths \(2 to 5 tokens\) and no pad_token_id .*pack"):
        train(ragged)
    with pytest.raises(ValueError, match=r"up to 6 tokens are longer than the model's context of 4"):
        train(ray_dataset(DATA), SimpleNamespace(vocab_size=VOCAB, max_seq_len=4))
    (tmp_path / "bad").mkdir()
    pq.write_table(pa.table({"input_ids": [[1, 2]]}), tmp_path / "bad" / "good.parquet")
    (tmp_path / "bad" / "broken.parquet").write_bytes(b"PAR1 this is not a parquet file")
    with pytest.raises(ValueError, match=r"train_data: cannot read .*broken\.parquet as Parquet"):
        train(str(tmp_path / "bad"))
    assert not (tmp_path / "storage").exists() or not any((tmp_path / "storage").iterdir()), "no Ray Train run started"


def text_spec(tmp_path, **data):
    texts = [f"sample {i} says hello " * (1 + i % 3) for i in range(40)]
    (tmp_path / "texts.jsonl").write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(texts)))
    spec = {
        "model": {"name": "gpt", "d_model": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 32},
        "data": {"train": str(tmp_path / "texts.jsonl"), "text_column": "text", **data},
        "training": {"epochs": 1, "batch_size": 4, "checkpoint_dir": str(tmp_path / "ck")},
    }
    return spec, texts


def test_text_files_are_tokenized_and_packed_into_seq_len_blocks_by_ray_data(ray_session, tmp_path):
    from trainyard.execution.ingest import ingest
    from trainyard.experiment import build

    spec, texts = text_spec(tmp_path, seq_len=16, pack=True)
    exp = build(spec)
    source = ingest(exp.train_data, "train_data")
    tokens = [t for text in texts for t in exp.tokenizer.encode(text, add_bos=True, add_eos=True)]
    assert len(source) == len(tokens) // 16
    rows = source.__getitems__(list(range(len(source))))["input_ids"]
    assert rows.shape == (len(tokens) // 16, 16)  # no padding anywhere: every position is a real token
    assert rows.flatten().tolist() == tokens[: rows.numel()]
    results = exp.trainer().train(exp.train_data)
    assert results["metrics_summary"]["throughput/tokens_per_s"].iloc[0] > 0
    assert math.isfinite(results["final_loss"])


def test_text_is_tokenized_once_into_the_storage_and_later_runs_stream_it(ray_session, tmp_path, bucket):
    import dataclasses

    import torch
    from trainyard.engine.data.rows import ParquetSource
    from trainyard.execution.ingest import ingest, run_inputs
    from trainyard.experiment import build

    spec, _ = text_spec(tmp_path, seq_len=16, pack=True)
    exp = build(spec)
    in_store = ingest(exp.train_data, "train_data")  # the tokens put into the object store
    expected = in_store.__getitems__(list(range(len(in_store))))["input_ids"]
    for storage in (str(tmp_path / "runs"), bucket.uri("runs")):
        first, _ = run_inputs(exp.train_data, None, exp.model_config, on_ray=True, storage=storage)
        assert isinstance(first, ParquetSource) and all(f.startswith(f"{storage}/datasets/tokens-") for f, _, _ in first.pieces)
        assert torch.equal(first.__getitems__(list(range(len(first))))["input_ids"], expected)  # the same rows, in order
        again, _ = run_inputs(exp.train_data, None, exp.model_config, on_ray=True, storage=storage)
        assert again.pieces == first.pieces  # the files written before: nothing tokenized again
    assert [p.name for p in (tmp_path / "runs" / "datasets").iterdir()] == [first.pieces[0][0].split("/")[-3]]
    shorter, _ = run_inputs(dataclasses.replace(exp.train_data, seq_len=8), None, exp.model_config, on_ray=True, storage=str(tmp_path / "runs"))
    assert len(list((tmp_path / "runs" / "datasets").glob("tokens-*/COMPLETE.json"))) == 2  # other options: other tokens
    assert shorter.__getitems__([0])["input_ids"].shape == (1, 8)


def test_unpacked_text_is_cut_at_seq_len_and_padded_and_seq_len_must_fit_the_model(ray_session, tmp_path):
    from trainyard.execution.ingest import ingest
    from trainyard.experiment import build

    spec, texts = text_spec(tmp_path, seq_len=24, pack=False)
    exp = build(spec)
    source = ingest(exp.train_data, "train_data", pad_token_id=exp.tokenizer.pad_token_id)
    assert len(source) == len(texts)
    first = [source[i]["input_ids"].tolist() for i in range(3)]
    assert first == [exp.tokenizer.encode(t, add_bos=True, add_eos=True)[:24] for t in texts[:3]]
    assert exp.trainer().train(exp.train_data)["metrics_summary"]["train/loss"].iloc[0] > 0
    spec["data"]["seq_len"] = 64
    with pytest.raises(ValueError, match=r"seq_len=64 is longer than the model's context \(max_seq_len=32\)"):
        build(spec)


def test_a_sweep_reads_a_ray_dataset_and_a_parquet_path_from_one_copy(ray_session, tmp_path):
    from trainyard.hpo import sweep

    val = lm_samples(12, length=6, seed=8)
    space = {"metric": "val/loss", "mode": "min", "params": {"learning_rate": {"choice": [1e-2]}}}
    base = settings(batch_size=8, epochs=1)
    result = sweep(lm_factory(dropout=0.0), CONFIG, ray_dataset(DATA), str(write_parquet(tmp_path / "val", val, files=2, row_group=4)),
                   space=space, training_config=base, num_samples=2, scheduler="none", storage_path=tmp_path, name="data")  # fmt: skip
    expected = Trainer(lm_factory(dropout=0.0), CONFIG, base.replace(checkpoint_dir=str(tmp_path / "ck"))).train(DATA, val)
    losses = result.dataframe["val/loss"].tolist()
    assert losses == pytest.approx([expected["metrics_summary"]["val/loss"].iloc[0]] * 2, abs=1e-6)


def test_a_hugging_face_tokenizer_tokenizes_text_in_ray_data(ray_session):
    pytest.importorskip("transformers")
    import ray
    from tokenizers import Tokenizer, models, pre_tokenizers
    from trainyard.execution.ingest import blocks, tokenize
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "sample", "says", "hello", *map(str, range(40))]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")  # built here: nothing downloaded
    texts = [f"sample {i} says hello " * (1 + i % 3) for i in range(40)]
    source = blocks(tokenize(ray.data.from_items([{"text": t} for t in texts]), "train_data", tokenizer, "text", seq_len=8, pack=True), "train_data")
    tokens = [t for text in texts for t in tokenizer(text)["input_ids"]]
    rows = source.__getitems__(list(range(len(source))))["input_ids"]
    assert rows.shape == (len(tokens) // 8, 8) and rows.flatten().tolist() == tokens[: rows.numel()]
    assert 1 not in tokens  # every word known: no [UNK]


def test_the_seed_004_train_model_takes_a_ray_dataset(ray_session, tmp_path):
    from trainyard.compat.training import train_model

    spec = {"model": {"name": "gpt", "d_model": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 32},
            "training": {"epochs": 1, "batch_size": 8, "random_seed": 3, "shuffle_chunk_rows": 10, "checkpoint_dir": str(tmp_path / "ck")}}  # fmt: skip
    results = train_model(spec, dataset=ray_dataset(DATA), output_dir=tmp_path / "out")
    assert len(results["loss_history"]) == 7  # 54 rows in batches of 8
    assert math.isfinite(results["final_loss"])


def test_instruction_files_train_as_the_same_rows_in_memory_do_and_pack_with_their_labels(ray_session, tmp_path):
    """prompt/response and messages rows in JSON lines and Parquet, tokenized by Ray Data
    with the prompt masked: unpacked, the very rows (and losses) of the in-memory path."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from trainyard.data.instructions import tokenize_instructions
    from trainyard.execution.ingest import ingest
    from trainyard.experiment import build

    pairs = {"prompt": [f"{i}+{i + 1}=" for i in range(12)], "response": [str(2 * i + 1) for i in range(12)]}
    chats = [[{"role": "user", "content": p}, {"role": "assistant", "content": r}] for p, r in zip(pairs["prompt"], pairs["response"])]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in zip(*pairs.values())))
    pq.write_table(pa.table({"messages": chats}), tmp_path / "chats.parquet")
    model = {"name": "gpt", "d_model": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 32}
    training = {"epochs": 2, "batch_size": 4, "random_seed": 1, "learning_rate": 1e-2}

    def spec(train, **data):
        return {"model": model, "data": {"train": str(tmp_path / train), **data}, "training": {**training, "checkpoint_dir": str(tmp_path / train / "..")}}

    in_memory = build({"model": model, "training": training}, dataset=pairs)
    for name, rows in (("chats.parquet", {"messages": chats}), ("pairs.jsonl", pairs)):
        exp = build({**spec(name, pack=False), "training": {**training, "checkpoint_dir": str(tmp_path / f"run-{name}")}})
        source = ingest(exp.train_data, "train_data", pad_token_id=exp.tokenizer.pad_token_id)
        expected = tokenize_instructions(rows, exp.tokenizer, 32)
        got = [source[i] for i in range(len(source))]
        assert [r["input_ids"].tolist() for r in got] == expected["input_ids"] and [r["labels"].tolist() for r in got] == expected["labels"]
    from_file = exp.trainer().train(exp.train_data)  # the pairs' file
    memory = in_memory.trainer(in_memory.training_config.replace(checkpoint_dir=str(tmp_path / "memory"))).train(in_memory.train_data)
    assert from_file["loss_history"] == pytest.approx(memory["loss_history"], abs=1e-6)
    packed = build(spec("pairs.jsonl", seq_len=8))
    source = ingest(packed.train_data, "train_data")
    rows = source.__getitems__(list(range(len(source))))
    expected = tokenize_instructions(pairs, packed.tokenizer, None)
    flat_ids, flat_labels = sum(expected["input_ids"], []), sum(expected["labels"], [])
    assert rows["input_ids"].shape == (len(flat_ids) // 8, 8)  # blocks of seq_len, no padding
    assert rows["input_ids"].flatten().tolist() == flat_ids[: rows["input_ids"].numel()]
    assert rows["labels"].flatten().tolist() == flat_labels[: rows["labels"].numel()]  # the prompts still masked, in place
