"""Import hygiene: `import trainyard` is light, the engine never pulls Ray or Optuna."""

import subprocess
import sys

HEAVY = ("ray", "optuna", "wandb", "onnx")


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(','.join(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.strip().split(","))


def test_import_trainyard_pulls_no_heavy_library():
    loaded = _modules_after("import trainyard")
    assert not loaded & {*HEAVY, "torch", "pandas"}


def test_engine_stays_free_of_ray_and_optuna():
    loaded = _modules_after("import trainyard.engine; from trainyard import Trainer, TrainingConfig, TaskSpec, TrainingHooks")
    assert not loaded & set(HEAVY)


def test_public_names():
    import trainyard
    from trainyard.engine import Trainer

    assert trainyard.Trainer is Trainer
    assert {"Trainer", "TrainingConfig", "TaskSpec", "TrainingHooks"} <= set(trainyard.__all__)


def test_platform_is_a_source_root_not_a_package():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    assert not (root / "platform" / "__init__.py").exists()
    import platform

    assert hasattr(platform, "python_version")  # the stdlib module, not our folder
