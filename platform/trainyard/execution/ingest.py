"""Data on Ray: whatever form a run's data takes, workers and trials read it from the object
store, never from a pickled payload.

    train, val = run_inputs(train, val, model_config, task_spec, on_ray=True)   # on the driver
    data = resolve(source)                  # in a worker or trial: what the engine trains on

- Parquet (a path, folder or local glob; local, NFS, `s3://`, `gs://` ...) is streamed: the
  engine's `ParquetSource` travels to the workers, and each rank reads the row groups its
  batches lie in itself. Nothing is put into the object store (`stream`).
- Text (`text_column=`), and instruction or chat rows (`prompt`/`response`, `messages`: the
  prompt masked), are tokenized, cut or packed into `seq_len` blocks by Ray Data
  transforms: for a run on Ray, once, written as Parquet under the run's storage
  (`datasets/tokens-<digest>/`, `prepare`) and streamed from there by this and later runs.
- A `ray.data.Dataset`, or a JSON lines / CSV path, directory or glob (read by Ray Data on
  its own CPU tasks, never loaded whole on the driver): executed once into Arrow blocks in
  the object store, in a fixed order, and handed to the engine as a `BlockSource`, which
  reads the rows a batch needs straight from those blocks (zero-copy). Every rank and every
  trial reads the same blocks.
- In-memory columns (tensors, dicts, Arrow, HF datasets): validated here, then put into the
  object store once as Arrow blocks, read like a Ray Dataset's. A map-style dataset of the
  user's own is put there as one pickled copy (`Shared`), which each worker fetches.

Why not Ray Train's `get_dataset_shard`: its `streaming_split` hands blocks to whichever
rank asks first, so which rank trains on which sample, and where a resumed run stands,
is not reproducible. Here the rows of a rank's batch are the engine's function of
`(seed, epoch, rank)` (`engine.data.order.iter_epoch_batches`), so a mid-epoch resume is
sample-exact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from trainyard._logging import get_logger, say_if_slow
from trainyard.data.files import DataFiles
from trainyard.data.instructions import has_instruction_columns, pack_rows, tokenize_instructions
from trainyard.engine.config import SHUFFLE_CHUNK_ROWS
from trainyard.engine.data.inputs import as_dataset
from trainyard.engine.data.rows import PARQUET, ParquetSource, RowSource, is_list_type, local_paths, parquet_files
from trainyard.engine.data.samples import ALIASES, KNOWN_KEYS, ColumnDataset, IdRange, check_columns
from trainyard.engine.model_config import model_config_value
from trainyard.engine.task import as_task_spec
from trainyard.execution.ray_env import ensure_ray, verbose
from trainyard.storage import default_storage, files_under, is_local, is_uri, join, open_input, read_text, suffix, write_text

log = get_logger("trainyard.execution")
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


class BlockSource(RowSource):
    """Rows held as Arrow blocks in Ray's object store (a materialized Ray Dataset). Read in
    the training process itself (`num_workers` is not used: Ray's client does not survive a
    fork, and reading a batch from the object store costs little)."""

    forks = False

    def __init__(self, refs: list[Any], counts: list[int], columns: list[str], name: str, id_range: IdRange | None = None):
        super().__init__(name)
        self.refs, self.columns = refs, columns
        self.firsts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._id_range = id_range  # from the block statistics, computed where the blocks are

    def __len__(self) -> int:
        return int(self.firsts[-1])

    def id_range(self) -> IdRange | None:
        return self._id_range

    def read(self, start: int, stop: int) -> Any:
        import ray

        first = int(np.searchsorted(self.firsts, start, side="right")) - 1
        last = int(np.searchsorted(self.firsts, stop, side="left"))
        blocks = ray.get(self.refs[first:last])  # zero-copy views of the object store
        table = pa.concat_tables([b.select(self.columns) for b in blocks])
        return table.slice(start - int(self.firsts[first]), stop - start)


@dataclass
class Shared:
    """A map-style dataset of the user's own, put into the object store once; every worker
    and trial fetches (unpickles) it."""

    ref: Any


def ingest(data: Any, name: str, pad_token_id: int | None = None, context: int | None = None, prepared: str | None = None) -> Any:
    """`data` in the form workers read it (see the module docstring); None stays None.
    `pad_token_id` and `context` (the model's longest sequence) let bad data fail here,
    before any worker starts. `prepared`: where text files, once tokenized, are kept as
    Parquet for every later run to stream (else their tokens go into the object store)."""
    import ray

    if data is None or isinstance(data, (RowSource, Shared)):
        return data
    files = streamed_files(data, name)
    if files is not None:
        return stream(files, name, context)
    if isinstance(data, DataFiles):
        dataset = read(data.paths, name, data.format)
        if data.tokenizer is not None:
            tokenized = tokenize(dataset, name, data.tokenizer, data.text_column, data.seq_len, data.pack)
            if prepared is not None and tokenized is not dataset:
                return prepare(tokenized, join(prepared, prepared_key(data, name)), name, context)
            dataset = tokenized
        return blocks(dataset, name, pad_token_id, context)
    if _is_paths(data):
        data = read(data, name)
    if isinstance(data, ray.data.Dataset):
        return blocks(data, name, pad_token_id, context)
    local = as_dataset(data, name)
    table = local.to_arrow() if isinstance(local, ColumnDataset) else None
    if table is None:  # not columns: one pickled copy in the object store
        return Shared(ray.put(local))
    return _put_blocks(table, name, local.id_range())


def streamed_files(data: Any, name: str) -> list[str] | None:
    """The Parquet files of `data` when every rank can read them itself, as they are (a path,
    folder, glob or URI, or a list of them; `DataFiles` with nothing to tokenize); else None."""
    paths = data.paths if isinstance(data, DataFiles) else data
    if not _is_paths(paths) or (isinstance(data, DataFiles) and data.format not in (None, "parquet")):
        return None
    files = _expand(paths, name)
    if any(suffix(f) not in PARQUET for f in files):
        try:
            files = [f for p in files for f in parquet_files(p, name)]
        except (FileNotFoundError, ValueError):  # other formats, or nothing: Ray Data says which
            return None
    if isinstance(data, DataFiles) and data.tokenizer is not None:  # as `tokenize` decides: a text column, or instruction rows
        if data.text_column is not None or has_instruction_columns(pq.read_schema(open_input(files[0])).names):
            return None  # text to tokenize first
    return files


def stream(files: list[str], name: str, context: int | None = None) -> ParquetSource:
    """Parquet files every rank reads itself, row group by row group, in the engine's order:
    nothing is put into the object store, and training starts once the footers are read.
    What the footers and the first rows tell is checked here (the rest as each batch is read:
    unequal lengths without a pad token, a longer sequence further on)."""
    source = ParquetSource(files, name)
    if len(source) == 0:
        raise ValueError(f"{name} is empty: it needs at least one sample")
    first = source.read(0, min(len(source), 1024))  # the first row group's worth: not a chunk (it may be gigabytes of long rows)
    longest = _block_stats(first)[2]
    if context is not None and longest > context:
        raise ValueError(f"{name}: sequences of up to {longest} tokens are longer than the model's context of {context}: cut them (seq_len: {context}) or use a model with a longer context")
    return source


def prepare(dataset: Any, folder: str, name: str, context: int | None = None) -> ParquetSource:
    """Tokenized rows written once as Parquet into `folder` (by a Ray Data job, in their
    order), then streamed; a later run whose inputs give the same folder streams them at once.
    The folder counts once its `COMPLETE.json` (written last) lists the files: runs that
    prepare it at the same time each write their own subfolder, and the last marker wins."""
    done = read_text(join(folder, PREPARED_MARKER))
    if done is not None:
        log.info("%s: streaming the tokens prepared before in %s", name, folder)
        return stream([join(folder, f) for f in json.loads(done)["files"]], name, context)
    attempt = uuid.uuid4().hex[:12]
    dataset.context.execution_options.preserve_order = True  # files named in the rows' order (by write task)
    with say_if_slow(f"{name}: tokenizing once into {folder}"):
        try:
            _quiet(dataset).write_parquet(join(folder, attempt))
        except Exception as e:  # noqa: BLE001 - Ray Data wraps the reader's error; name it
            raise ValueError(f"{name}: reading or tokenizing the data failed: {_root_cause(e)}") from e
    files = [f"{attempt}/{f.rsplit('/', 1)[-1]}" for f in files_under(join(folder, attempt), PARQUET, name)]
    source = stream([join(folder, f) for f in files], name, context)
    write_text(join(folder, PREPARED_MARKER), json.dumps({"files": files, "rows": len(source)}))
    return source


PREPARED_MARKER = "COMPLETE.json"


def prepared_key(data: DataFiles, name: str) -> str:
    """The folder name of `data`'s tokens: a digest of its files (names, sizes, modification
    times: not their bytes, which may be terabytes), how they are read, and the tokenizer."""
    import pyarrow.fs

    entries = []
    for p in _expand(data.paths, name):
        fs, path = pyarrow.fs.FileSystem.from_uri(p) if is_uri(p) else (pyarrow.fs.LocalFileSystem(), p)
        info = fs.get_file_info(path)
        found = [info] if info.type == pyarrow.fs.FileType.File else fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True))
        entries += sorted((i.path, i.size, i.mtime_ns) for i in found if i.type == pyarrow.fs.FileType.File)
    how = {"files": entries, "format": data.format, "text_column": data.text_column, "seq_len": data.seq_len, "pack": data.pack,
           "tokenizer": tokenizer_identity(data.tokenizer)}
    return "tokens-" + hashlib.sha256(json.dumps(how, default=str).encode()).hexdigest()[:24]


def tokenizer_identity(tokenizer: Any) -> str:
    """A digest of what a tokenizer makes of text: a Hugging Face fast tokenizer's whole
    definition, else its pickle; its chat template and special ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    try:
        body = backend.to_str() if backend is not None else hashlib.sha256(pickle.dumps(tokenizer)).hexdigest()
    except Exception:  # noqa: BLE001 - a tokenizer that does not pickle: its type and vocabulary size
        body = f"{len(tokenizer.get_vocab()) if hasattr(tokenizer, 'get_vocab') else '?'}"
    parts = [type(tokenizer).__qualname__, body, str(getattr(tokenizer, "chat_template", None))]
    parts += [str(getattr(tokenizer, k, None)) for k in ("bos_token_id", "eos_token_id", "pad_token_id")]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _put_blocks(table: Any, name: str, id_range: IdRange | None, rows: int = SHUFFLE_CHUNK_ROWS) -> "BlockSource":
    """A table put into the object store in blocks, once: every worker and trial reads them
    (a block per shuffle chunk, so reading a chunk touches one block)."""
    import ray

    parts = [table.slice(i, rows) for i in range(0, table.num_rows, rows)]
    return BlockSource([ray.put(p) for p in parts], [p.num_rows for p in parts], table.schema.names, name, id_range)


def run_inputs(train_data: Any, val_data: Any, config: Any, task_spec: Any = None, *, on_ray: bool, storage: str | None = None) -> tuple[Any, Any]:
    """(train, val) as a run reads them, bad data refused before anything starts (checked
    against the model config's or TaskSpec's pad token and the model's context). `on_ray`:
    the run's processes are Ray's (Train workers, Tune trials): Parquet they stream
    themselves, text is tokenized once into `storage`'s `datasets/` (default: the default
    storage) and streamed from there, the rest is read from the object store; else the run is
    in this process, and only what Ray must read (`is_ray_data`) is read by Ray Data, the
    rest trained on as it is."""
    needs_ray = on_ray or any(is_ray_data(d) for d in (train_data, val_data))
    if not needs_ray:
        return train_data, val_data
    ensure_ray()
    checks = data_checks(config, task_spec)
    if on_ray:
        checks["prepared"] = join(storage or default_storage(), "datasets")
    read = (lambda d: True) if on_ray else is_ray_data
    with say_if_slow("reading the data" + (" and tokenizing its text" if any(getattr(d, "text_column", None) for d in (train_data, val_data)) else "")):
        train_data = ingest(train_data, "train_data", **checks) if read(train_data) else train_data
        return train_data, (ingest(val_data, "val_data", **checks) if read(val_data) else val_data)


def data_checks(config: Any, task_spec: Any = None) -> dict[str, Any]:
    """What `ingest` checks data against: the pad token (the TaskSpec's, else the model
    config's) and the model's context (its longest sequence), where they are known."""
    spec = as_task_spec(task_spec)
    pad = spec.preprocessing_config.get("pad_token_id") if spec is not None else None
    context = next((model_config_value(config, k) for k in CONTEXT_KEYS if model_config_value(config, k)), None)
    return {"pad_token_id": pad if pad is not None else model_config_value(config, "pad_token_id"), "context": context}


CONTEXT_KEYS = ("max_seq_len", "n_positions", "max_position_embeddings", "block_size", "context_length")


def resolve(data: Any) -> Any:
    """In a worker: a `Shared` fetched from the object store; anything else as it is."""
    if isinstance(data, Shared):
        import ray

        return ray.get(data.ref)
    return data


def is_ray_data(data: Any) -> bool:
    """Whether `data` is read through Ray (a Ray Dataset, `DataFiles`, a JSON lines / CSV path,
    a folder in object storage) rather than by the engine itself (in memory; a Parquet file
    or a local Parquet folder, which the engine reads by row group)."""
    if type(data).__module__.startswith("ray.data") or isinstance(data, DataFiles):
        return True
    if isinstance(data, (list, tuple)) and _is_paths(data):  # several paths: Ray Data reads them together
        return True
    if isinstance(data, (str, os.PathLike)):
        text = os.fspath(data)
        if is_uri(text):  # Parquet is streamed by the engine; a folder may hold any format
            return suffix(text) not in PARQUET and streamed_files(text, "data") is None
        return os.path.splitext(text.rstrip("*"))[1].lower() in (".jsonl", ".json", ".csv")
    return False


def read(paths: Any, name: str, format: str | None = None) -> Any:
    """A lazy Ray Dataset of the files `paths` names (a path, directory, glob, URI, or a
    list of them); a clear error for a pattern that matches nothing or an unknown format."""
    import ray

    files = _expand(paths, name)
    format = format or _format(files, name)
    readers = {"parquet": ray.data.read_parquet, "json": ray.data.read_json, "csv": ray.data.read_csv}
    if format not in readers:
        raise ValueError(f"{name}: format={format!r} is not one of {sorted(readers)}")
    try:
        return readers[format](files)
    except Exception as e:  # noqa: BLE001 - the reader's own error rarely names the file
        raise ValueError(f"{name}: reading the data failed: {_bad_file(files, format) or ''}{_root_cause(e)}") from e


def tokenize(dataset: Any, name: str, tokenizer: Any, text_column: str | None = "text", seq_len: int | None = None, pack: bool = True) -> Any:
    """Tokens from a text column, or from instruction or chat columns (`prompt`/`response`,
    `messages`: `labels` -100 over the prompt), as Ray Data transforms. Each text becomes
    its tokens (with <bos>/<eos> where the tokenizer has them); packed, the rows of a batch are
    concatenated and cut into `seq_len` blocks (the batch's last partial block is dropped,
    as LLM pretraining does); unpacked, each is cut at `seq_len`. Files that hold `input_ids`
    already, and no `text_column`, are left as they are."""
    found = _quiet(dataset).schema().names  # reading the schema runs the dataset's first block
    instructions = has_instruction_columns(found)
    if text_column is None and not instructions:
        return dataset
    if pack and not seq_len:
        raise ValueError(f"{name}: packing cuts the {'rows' if instructions else 'text'} into blocks of seq_len tokens; "
                         "set seq_len (e.g. seq_len: 128), or pack: false")
    if instructions:
        options = {"tokenizer": tokenizer, "seq_len": seq_len, "pack": pack}
        return dataset.map_batches(_tokenize_instruction_batch, fn_kwargs=options, batch_format="pyarrow", batch_size=1024)
    if text_column not in found:
        raise ValueError(f"{name}: no text column {text_column!r}; the columns are {sorted(found)} (set text_column)")
    options = {"tokenizer": tokenizer, "text_column": text_column, "seq_len": seq_len, "pack": pack}
    return dataset.map_batches(_tokenize_batch, fn_kwargs=options, batch_format="pyarrow", batch_size=1024)


def _tokenize_instruction_batch(batch: Any, tokenizer: Any, seq_len: int | None, pack: bool) -> Any:
    columns = [c for c in ("prompt", "response", "messages") if c in batch.schema.names]
    rows = tokenize_instructions({c: batch.column(c).to_pylist() for c in columns}, tokenizer, None if pack else seq_len)
    ids, labels = pack_rows(rows["input_ids"], rows["labels"], seq_len) if pack else (rows["input_ids"], rows["labels"])
    return pa.table({"input_ids": pa.array(ids, pa.list_(pa.int64())), "labels": pa.array(labels, pa.list_(pa.int64()))})


def _tokenize_batch(batch: Any, tokenizer: Any, text_column: str, seq_len: int | None, pack: bool) -> Any:
    # The built-in tokenizers add <bos>/<eos>; a Hugging Face one, the specials it was configured with.
    ids = [list(tokenizer(str(t))["input_ids"]) for t in batch.column(text_column).to_pylist()]
    if pack:
        flat = np.fromiter((i for seq in ids for i in seq), dtype=np.int64)
        rows = len(flat) // seq_len
        values = pa.array(flat[: rows * seq_len])
        return pa.table({"input_ids": pa.FixedSizeListArray.from_arrays(values, seq_len)})
    return pa.table({"input_ids": [seq[:seq_len] if seq_len else seq for seq in ids]})


def blocks(dataset: Any, name: str, pad_token_id: int | None = None, context: int | None = None) -> BlockSource:
    """Execute `dataset` into the object store, in its order, and check what training needs
    to know before any worker starts."""
    import ray

    dataset.context.execution_options.preserve_order = True  # the same rows in the same order, every time
    _quiet(dataset)
    try:
        refs = dataset.to_arrow_refs()
    except Exception as e:  # noqa: BLE001 - Ray Data wraps the reader's error; name it
        raise ValueError(f"{name}: reading the data failed: {_root_cause(e)}") from e
    found = dataset.schema().names
    check_columns(found, name, "the data")
    columns = [c for c in found if ALIASES.get(c, c) in KNOWN_KEYS]
    stats_of = ray.remote(_block_stats)  # run where each block is, not here (a CPU each: a few workers, reused)
    stats = ray.get([stats_of.remote(ref) for ref in refs])
    counts = [s[0] for s in stats]
    if sum(counts) == 0:
        raise ValueError(f"{name} is empty: it needs at least one sample")
    lengths = [s[1:3] for s in stats if s[0]]
    shortest, longest = min(lo for lo, _ in lengths), max(hi for _, hi in lengths)
    if shortest != longest and pad_token_id is None:
        raise ValueError(
            f"{name}: sequences have different lengths ({shortest} to {longest} tokens) and no pad_token_id is known: "
            "set pad_token_id in the model config (or TaskSpec preprocessing_config), or pack the text into seq_len "
            "blocks (pack: true)"
        )
    if context is not None and longest > context:
        raise ValueError(f"{name}: sequences of up to {longest} tokens are longer than the model's context of {context}: cut them (seq_len: {context}) or use a model with a longer context")
    ranges = [s[3] for s in stats if s[3] is not None]
    id_range = IdRange(min(r.low for r in ranges), max(r.high for r in ranges), any(r.floating for r in ranges)) if ranges else None
    return BlockSource(refs, counts, columns, name, id_range)


def _quiet(dataset: Any) -> Any:
    """Ray Data logs every execution's plan and progress at INFO: turned down, unless verbose."""
    if not verbose():
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        dataset.context.enable_progress_bars = False
    return dataset


def _block_stats(table: Any) -> tuple[int, int, int, IdRange | None]:
    """(rows, shortest, longest input_ids, the range of their values) of one block."""
    column = table.column("input_ids") if "input_ids" in table.schema.names else None
    if column is None or table.num_rows == 0:
        return table.num_rows, 0, 0, None
    values = pc.list_flatten(column) if is_list_type(column.type) else column
    bounds = pc.min_max(values).as_py() if len(values) else {"min": None}
    found = None if bounds["min"] is None else IdRange(bounds["min"], bounds["max"], pa.types.is_floating(values.type))
    if not is_list_type(column.type):
        return table.num_rows, 0, 0, found
    lengths = pc.list_value_length(column)
    return table.num_rows, pc.min(lengths).as_py(), pc.max(lengths).as_py(), found


def _is_paths(data: Any) -> bool:
    """A path, or a non-empty list of them."""
    if isinstance(data, (list, tuple)):
        return bool(data) and all(isinstance(d, (str, os.PathLike)) for d in data)
    return isinstance(data, (str, os.PathLike))


def _expand(paths: Any, name: str) -> list[str]:
    """URIs as they are; local globs expanded and local paths checked (`local_paths`)."""
    out = []
    for p in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        out.extend([os.fspath(p)] if is_uri(p) else local_paths(p, name))
    return out


def _format(files: list[str], name: str) -> str:
    suffixes = set()
    for f in files:
        if suffix(f):
            suffixes.add(suffix(f))
        elif is_local(f) and Path(f).is_dir():
            suffixes |= {q.suffix.lower() for q in Path(f).rglob("*") if q.is_file() and q.suffix.lower() in FORMATS}
    formats = {FORMATS[s] for s in suffixes if s in FORMATS}
    if len(formats) != 1:
        raise ValueError(
            f"{name}: cannot tell the format of {files[:3]}{'...' if len(files) > 3 else ''} (found suffixes {sorted(suffixes)}); "
            "set format: parquet, json or csv"
        )
    return formats.pop()


def _bad_file(files: list[str], format: str) -> str | None:
    """`FILE: ` of the first local Parquet file that does not open (where a read failed)."""
    if format != "parquet":
        return None

    for path in files:
        for f in [path] if not Path(path).is_dir() else sorted(str(q) for q in Path(path).rglob("*") if q.is_file()):
            if is_uri(f):
                return None
            try:
                pq.ParquetFile(f)
            except Exception:  # noqa: BLE001 - any failure to open is the answer
                return f"{f} is not a readable Parquet file: "
    return None


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    return f"{type(e).__name__}: {e}"
