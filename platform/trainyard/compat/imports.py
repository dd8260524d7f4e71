"""Legacy import paths, forwarded to trainyard by a finder placed last on sys.meta_path.

Being last, it is asked only for modules nothing else on sys.path provides, so a user's own
module of the same name (a `utils` or `data` package) always wins. Deprecated paths warn
with the exact path to use instead.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

# Groups of seeds/004 names, forwarded from `trainyard.compat.seed004` (which knows their
# homes) on first use, so `import training` pulls in neither torch, Ray nor Optuna. A
# target "module:a,b" forwards those names lazily; a bare "module" forwards every public
# name of that module, loaded at import.
_SEED004 = "trainyard.compat.seed004:"
_CORE = (_SEED004 + "train_model,create_model_and_tokenizer,compute_metrics,evaluate_model",)
_HPO = (_SEED004 + "create_search_space,run_local_hpo_sweep,extract_best_config_from_study",)
_FINAL = (_SEED004 + "execute_final_training,extract_lineage_from_best_model",)
_CONTEXT = (_SEED004 + "create_run_context",)
_CONFIG = (_SEED004 + "build_training_config",)
_CV = (_SEED004 + "create_kfold_splits",)
_LOADERS = (_SEED004 + "load_dataset",)

# legacy module -> (targets it forwards, the path to use instead if it is deprecated)
LEGACY_MODULES: dict[str, tuple[tuple[str, ...], str | None]] = {
    # seeds/000_58747ee384e977e5.txt
    "utils": ((), None),
    "utils.training": (("trainyard.engine", "trainyard.trainer"), None),
    "utils.tier3_training_utilities": (("trainyard.compat.legacy",), None),
    "utils.training.engine": (("trainyard.engine", "trainyard.trainer"), None),
    "utils.training.engine.trainer": (("trainyard.trainer", "trainyard.engine.hooks"), None),
    "utils.training.training_config": (("trainyard.engine.config",), None),
    "utils.training.task_spec": (("trainyard.engine.task",), None),
    "utils.training.job_queue": (("trainyard.job_queue:JobQueue,JobConfig,JobRecord,JOB_STATES",), None),
    # seeds/004_4c30e7897144f129.txt: the new layout ...
    "training": (_CORE + _HPO + _FINAL + _CONTEXT + _CONFIG, None),
    "training.core": (_CORE + _CV, None),
    "training.core.trainer": ((_SEED004 + "train_model",), None),
    "training.core.model": ((_SEED004 + "create_model_and_tokenizer",), None),
    "training.core.metrics": ((_SEED004 + "compute_metrics",), None),
    "training.core.evaluator": ((_SEED004 + "evaluate_model",), None),
    "training.core.cv_utils": (_CV, None),
    "training.hpo": (_HPO, None),
    "training.execution": (_FINAL + _CONTEXT, None),
    "training.cli": (("trainyard.cli.main:main",), None),
    "training.config": (_CONFIG, None),
    "data": ((), None),
    "data.loaders": (_LOADERS, None),
    # ... and its deprecated paths, each naming the path to use
    "training.trainer": ((_SEED004 + "train_model",), "training.core.trainer"),
    "training.model": ((_SEED004 + "create_model_and_tokenizer",), "training.core.model"),
    "training.metrics": ((_SEED004 + "compute_metrics",), "training.core.metrics"),
    "training.evaluator": ((_SEED004 + "evaluate_model",), "training.core.evaluator"),
    "hpo": (_HPO, "training.hpo"),
    "training_exec": (_FINAL, "training.execution"),
    "training.distributed": (_CONTEXT, "training.execution"),
    "training.cv_utils": (_CV, "training.core.cv_utils"),
    "training.data": (_LOADERS, "data.loaders"),
}


class LegacyFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None):
        if fullname not in LEGACY_MODULES:
            return None
        is_package = any(other.startswith(fullname + ".") for other in LEGACY_MODULES)
        return importlib.machinery.ModuleSpec(fullname, self, is_package=is_package)

    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module: types.ModuleType) -> None:
        targets, replacement = LEGACY_MODULES[module.__name__]
        if replacement:
            warnings.warn(
                f"Importing from '{module.__name__}' is deprecated. Please use '{replacement}' instead. "
                "This shim will be removed in a future release.",
                DeprecationWarning,
                stacklevel=2,
            )
        if module.__spec__.submodule_search_locations is not None:
            module.__path__ = []
        lazy: dict[str, str] = {}  # name -> the trainyard module holding it
        names: list[str] = []
        for target in targets:
            source_name, _, listed = target.partition(":")
            if listed:
                for name in listed.split(","):
                    lazy[name] = source_name
                    names.append(name)
                continue
            source = importlib.import_module(source_name)
            public = getattr(source, "__all__", None) or [n for n in vars(source) if not n.startswith("_")]
            for name in public:
                setattr(module, name, getattr(source, name))
                names.append(name)
        module.__all__ = names
        module.__doc__ = f"Legacy path, forwarded to {', '.join(t.partition(':')[0] for t in targets) or 'trainyard'} by trainyard.compat."
        if lazy:
            module.__getattr__ = _lazy_getattr(module.__name__, lazy)


def _lazy_getattr(module_name: str, lazy: dict[str, str]):
    def __getattr__(name: str) -> Any:
        if name not in lazy:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(lazy[name]), name)
        setattr(sys.modules[module_name], name, value)  # found directly next time
        return value

    return __getattr__


def enable_legacy_imports() -> None:
    """Make the legacy module paths importable (idempotent)."""
    if not any(isinstance(f, LegacyFinder) for f in sys.meta_path):
        sys.meta_path.append(LegacyFinder())


def disable_legacy_imports() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, LegacyFinder)]
    for name in list(sys.modules):
        if name in LEGACY_MODULES and isinstance(getattr(sys.modules[name], "__spec__", None), importlib.machinery.ModuleSpec):
            if isinstance(sys.modules[name].__spec__.loader, LegacyFinder):
                del sys.modules[name]
