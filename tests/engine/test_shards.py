"""Sharded checkpoint state (DCP): reads back whole, and its pickled index cannot run code."""

import json
import os
import pickle

import pytest
import torch
from trainyard.engine import shards
from trainyard.engine.checkpoint import MARKER, CheckpointError, describe
from trainyard.models import GPT

from tests.helpers import VOCAB

CONFIG = {"vocab_size": VOCAB, "max_seq_len": 8, "d_model": 16, "n_layers": 2, "n_heads": 2}


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_an_index_that_would_run_code_is_refused(tmp_path):
    (tmp_path / ".metadata").write_bytes(pickle.dumps(RunsCode(tmp_path / "ran")))
    with pytest.raises(CheckpointError, match=r"refers to posix\.system.*refusing to load it"):
        shards.full_model_state(tmp_path, GPT(CONFIG))
    assert not (tmp_path / "ran").exists()


def test_a_sharded_save_reads_back_whole_in_one_process(tmp_path, process_group_of_one):
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = GPT(CONFIG)
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 23, (2, 8))).sum().backward()
    optimizer.step()
    shards.save_state(tmp_path, model, optimizer, grads=False)
    expected = {k: v.full_tensor() for k, v in model.state_dict().items()}
    assert (tmp_path / ".metadata").exists() and (tmp_path / "__0_0.distcp").exists()
    whole = shards.full_model_state(tmp_path, GPT(CONFIG))
    assert set(whole) == set(expected) and all(torch.equal(whole[k], v) for k, v in expected.items())


def test_a_shard_entry_that_would_run_code_is_refused(tmp_path, process_group_of_one):
    """DCP's default planner unpickles a shard's non-tensor entries with weights_only=False;
    an optimizer hyperparameter replaced by a payload must not run."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.fsdp import fully_shard

    model = GPT(CONFIG)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 23, (2, 8))).sum().backward()
    optimizer.step()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    optim_sd["param_groups"][0]["lr"] = RunsCode(tmp_path / "ran")
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(tmp_path / "ckpt"))
    assert not (tmp_path / "ran").exists()
    with pytest.raises(CheckpointError, match=r"entry 'optimizer\.param_groups\..*lr' is not plain data.*refusing to load it"):
        shards.load_state(tmp_path / "ckpt", model, optimizer, grads=False)
    assert not (tmp_path / "ran").exists()


# -- hand-made index pickles: the shapes an attacker can write, in every pickle protocol --------

def _text(value: str) -> bytes:
    return pickle.UNICODE + value.encode("raw_unicode_escape") + b"\n"  # readable by every protocol


def _global(proto: int, module: str, name: str) -> bytes:
    if proto >= 4:  # STACK_GLOBAL: the form whose dotted names resolve through a module's imports
        return _text(module) + _text(name) + pickle.STACK_GLOBAL
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _payload(proto: int, module: str, name: str, arg: str, how: str = "reduce") -> bytes:
    """A pickle that calls module.name(arg): by REDUCE, NEWOBJ (protocol 2+), or INST/OBJ
    (the protocol 0/1 forms, which look the global up too)."""
    head = pickle.PROTO + bytes([proto]) if proto >= 2 else b""
    if how == "inst":
        body = pickle.MARK + _text(arg) + pickle.INST + f"{module}\n{name}\n".encode()
    elif how == "obj":
        body = pickle.MARK + _global(proto, module, name) + _text(arg) + pickle.OBJ
    elif how == "newobj":
        body = _global(proto, module, name) + pickle.MARK + _text(arg) + pickle.TUPLE + pickle.NEWOBJ
    else:
        body = _global(proto, module, name) + pickle.MARK + _text(arg) + pickle.TUPLE + pickle.REDUCE
    return head + body + pickle.STOP


ESCAPES = [
    ("torch.distributed.checkpoint.metadata", "os.system"),  # the reported one (protocol 4)
    ("torch.distributed.checkpoint.metadata", "os"),  # names the module imports, not defines
    ("torch.distributed.checkpoint.metadata", "torch"),
    ("torch.distributed.checkpoint.metadata", "dataclass"),
    ("torch.distributed.checkpoint.metadata", "Metadata.__init__.__globals__"),
    ("torch", "os.system"),
    ("torch", "float32.__class__"),
    ("torch.serialization", "os.system"),
    ("pathlib", "os.system"),
    ("posix", "system"),
    ("builtins", "eval"),
]


@pytest.mark.parametrize("proto", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("module,name", ESCAPES, ids=[f"{m}:{n}" for m, n in ESCAPES])
def test_no_global_outside_the_index_classes_is_reachable(tmp_path, proto, module, name):
    marker = tmp_path / "x_was_here"
    hows = ["reduce", "inst", "obj"] + (["newobj"] if proto >= 2 else [])
    for how in hows:
        with pytest.raises(CheckpointError, match=r"refers to .*refusing to load it \(it could run code\)"):
            shards.read_metadata(_payload(proto, module, name, f"touch {marker}", how), "checkpoint c")
    assert not marker.exists()


def test_the_reported_payload_runs_nothing(tmp_path):
    s = lambda t: pickle.SHORT_BINUNICODE + bytes([len(t)]) + t.encode()  # noqa: E731 - the issue's own payload
    p = (pickle.PROTO + b"\x04" + s("torch.distributed.checkpoint.metadata") + s("os.system")
         + pickle.STACK_GLOBAL + s(f"touch {tmp_path / 'x_was_here'}") + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP)
    import io

    with pytest.raises(CheckpointError, match=r"torch\.distributed\.checkpoint\.metadata\.os\.system"):
        shards._MetadataUnpickler(io.BytesIO(p)).load()
    assert not (tmp_path / "x_was_here").exists()


ALLOWED = sorted(shards._ALLOWED) + [("torch", "float32"), ("torch", "bfloat16")]


@pytest.mark.parametrize("module,name", ALLOWED, ids=[f"{m}:{n}" for m, n in ALLOWED])
@pytest.mark.parametrize("how", ["reduce", "newobj", "inst", "obj"])
def test_calling_an_allowed_global_yields_no_index_and_runs_nothing(tmp_path, module, name, how):
    """Every global an index may name, called every way pickle can call it: whatever it builds
    is not DCP's Metadata (or the call fails), and either way the load is a CheckpointError."""
    marker = tmp_path / "x_was_here"
    with pytest.raises(CheckpointError, match=r"checkpoint c: its DCP index \(\.metadata\) (cannot be read|holds a)"):
        shards.read_metadata(_payload(2, module, name, f"touch {marker}", how), "checkpoint c")
    assert not marker.exists()


def _sharded_checkpoint(tmp_path, process_group_of_one):
    """A real sharded (FSDP) checkpoint, written by the engine on a process group of one."""
    from trainyard import Trainer, TrainingConfig
    from trainyard.execution.parallel import ProcessGroupContext

    from tests.helpers import lm_samples

    cfg = TrainingConfig(batch_size=4, epochs=1, parallelism="fsdp", checkpoint_dir=str(tmp_path / "run"))
    Trainer(lambda: GPT(CONFIG), CONFIG, cfg).run(ProcessGroupContext(cfg), lm_samples(8))
    (ckpt,) = (tmp_path / "run").glob("checkpoint_*")
    return ckpt


def _replace_index(ckpt, data: bytes) -> None:
    """Swap in another `.metadata` and re-sign the marker, as whoever can write the folder can."""
    (ckpt / ".metadata").write_bytes(data)
    marker = json.loads((ckpt / MARKER).read_text())
    marker["files"][".metadata"] = describe(ckpt / ".metadata")
    (ckpt / MARKER).write_text(json.dumps(marker))


def test_resuming_from_a_resigned_sharded_checkpoint_with_a_payload_runs_nothing(tmp_path, process_group_of_one):
    from trainyard import Trainer, TrainingConfig

    from tests.helpers import lm_samples

    ckpt = _sharded_checkpoint(tmp_path, process_group_of_one)
    ran = tmp_path / "x_was_here"
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        _replace_index(ckpt, _payload(proto, "torch.distributed.checkpoint.metadata", "os.system", f"touch {ran}"))
        cfg = TrainingConfig(batch_size=4, epochs=2, checkpoint_dir=str(tmp_path / "resumed"))
        with pytest.raises(CheckpointError, match=rf"checkpoint {ckpt}: its DCP index \(\.metadata\) refers to .*os\.system"):
            Trainer(lambda: GPT(CONFIG), CONFIG, cfg).train(lm_samples(8), resume_from=str(ckpt))
        with pytest.raises(CheckpointError, match=r"refusing to load it"):  # what the driver reads after an FSDP run
            shards.full_model_state(ckpt, GPT(CONFIG))
        assert not ran.exists()


def test_an_index_pointing_outside_the_checkpoint_is_refused(tmp_path, process_group_of_one):
    """An entry's file is joined to the checkpoint folder: `../secret` would read another file
    into the model."""
    ckpt = _sharded_checkpoint(tmp_path, process_group_of_one)
    metadata = shards.read_metadata((ckpt / ".metadata").read_bytes(), "c")
    (tmp_path / "secret.distcp").write_bytes((ckpt / "__0_0.distcp").read_bytes())
    for info in metadata.storage_data.values():
        info.relative_path = "../secret.distcp"
    _replace_index(ckpt, pickle.dumps(metadata))
    with pytest.raises(CheckpointError, match=r"points an entry at '\.\./secret\.distcp', which is not one of the checkpoint's own shard files"):
        shards.full_model_state(ckpt, GPT(CONFIG))
