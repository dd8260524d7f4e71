"""A sweep of an experiment: its model, data and training config searched over a space,
leaving `best_config.yaml` (the experiment with the winner's values) in the sweep folder.

    result = sweep_experiment(load_spec("jobs/configs/addition.yaml"), load_search_space(path), num_samples=6)

`trainyard tune`, the main job's sweep stage and seed 004's `run_local_hpo_sweep` are this.
"""

from __future__ import annotations

from typing import Any

from trainyard.data.fingerprint import fingerprint
from trainyard.experiment import build
from trainyard.hpo.report import write_best_experiment
from trainyard.hpo.runner import SweepResult, sweep
from trainyard.hpo.space import ADAPTER_PREFIX, SearchSpace, load_search_space


def sweep_experiment(spec: Any, space: Any, dataset: Any = None, **options: Any) -> SweepResult:
    """Sweep the experiment `spec` (an ExperimentSpec, or anything `build` takes) over
    `space`; `dataset` replaces its data section; `options` are `sweep`'s (num_samples,
    scheduler, storage_path, name, ...). The result carries the data's fingerprint."""
    exp = build(spec, dataset)
    space = space if isinstance(space, SearchSpace) else load_search_space(space)
    searched = [p.name for p in space.params if p.name.startswith(ADAPTER_PREFIX)]
    if searched and exp.spec.peft is None:
        raise ValueError(f"the space searches {searched[0]!r}, but the experiment has no peft section: add one "
                         "(e.g. peft: {method: lora, r: 8, target_modules: [...]}) or drop the peft.* parameters")
    result = sweep(
        exp.model_builder, exp.model_config, exp.train_data, exp.val_data,
        space=space, training_config=exp.training_config, task_spec=exp.task_spec, **options,
    )
    write_best_experiment(result, exp.spec)
    result.data_fingerprint = fingerprint((exp.train_data, exp.val_data))
    return result
