"""Sharded checkpoint state (DCP): reads back whole, and its pickled index cannot run code."""

import os
import pickle

import pytest
import torch

from trainyard.engine import shards
from trainyard.engine.checkpoint import CheckpointError
from trainyard.models import GPT

CONFIG = {"vocab_size": 23, "max_seq_len": 8, "d_model": 16, "n_layers": 2, "n_heads": 2}


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
