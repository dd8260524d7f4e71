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

# legacy module -> (trainyard modules whose public names it forwards, replacement if deprecated)
LEGACY_MODULES: dict[str, tuple[tuple[str, ...], str | None]] = {
    # seeds/000_58747ee384e977e5.txt
    "utils": ((), None),
    "utils.training": (("trainyard.engine",), None),
    "utils.tier3_training_utilities": (("trainyard.compat.legacy",), None),
    "utils.training.engine": (("trainyard.engine",), None),
    "utils.training.engine.trainer": (("trainyard.engine.trainer", "trainyard.engine.hooks"), None),
    "utils.training.training_config": (("trainyard.engine.config",), None),
    "utils.training.task_spec": (("trainyard.engine.task",), None),
    # seeds/004_4c30e7897144f129.txt (so far: the data and cross-validation paths)
    "training": ((), None),
    "training.core": ((), None),
    "training.core.cv_utils": (("trainyard.data.splits",), None),
    "data": ((), None),
    "data.loaders": (("trainyard.data.loaders",), None),
    "training.cv_utils": (("trainyard.data.splits",), "training.core.cv_utils"),
    "training.data": (("trainyard.data.loaders",), "data.loaders"),
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
        names: list[str] = []
        for target in targets:
            source = importlib.import_module(target)
            public = getattr(source, "__all__", None) or [n for n in vars(source) if not n.startswith("_")]
            for name in public:
                setattr(module, name, getattr(source, name))
                names.append(name)
        module.__all__ = names
        module.__doc__ = f"Legacy path, forwarded to {', '.join(targets) or 'trainyard'} by trainyard.compat."


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
