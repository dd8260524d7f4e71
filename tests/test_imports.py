"""Import hygiene: `import trainyard` is light, and training in-process never loads Ray or
Optuna. (That the engine never imports them, even inside a function, is checked
statically by tests/test_layering.py.)"""

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


def test_public_names():
    import trainyard
    from trainyard.trainer import Trainer

    assert trainyard.Trainer is Trainer
    assert {"Trainer", "TrainingConfig", "TaskSpec", "TrainingHooks"} <= set(trainyard.__all__)


def test_platform_is_a_source_root_not_a_package():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    assert not (root / "platform" / "__init__.py").exists()
    import platform

    assert hasattr(platform, "python_version")  # the stdlib module, not our folder


def test_training_in_process_never_imports_ray(tmp_path):
    code = (
        "import sys, torch\n"
        "from trainyard import Trainer, TrainingConfig\n"
        "data = [torch.randint(0, 10, (6,)) for _ in range(8)]\n"
        f"Trainer(lambda: torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10)), {{'vocab_size': 10}},"
        f" TrainingConfig(epochs=1, checkpoint_dir={str(tmp_path / 'ck')!r})).train(data)\n"
        "print(sorted(m for m in ('ray', 'optuna') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
