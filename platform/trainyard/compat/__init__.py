"""Compatibility with the older APIs of `seeds/`: translation and forwarding only.

    import trainyard.compat; trainyard.compat.enable_legacy_imports()
    from utils.tier3_training_utilities import test_fine_tuning      # runs on trainyard

Importing this package is light (no torch, Ray or Optuna); the legacy functions load on use.
"""

from typing import TYPE_CHECKING

from trainyard.compat.imports import LEGACY_MODULES, disable_legacy_imports, enable_legacy_imports

__all__ = ["LEGACY_MODULES", "disable_legacy_imports", "enable_legacy_imports", "test_fine_tuning", "test_hyperparameter_search"]


def __getattr__(name: str):
    if name in ("test_fine_tuning", "test_hyperparameter_search"):
        from trainyard.compat import legacy

        return getattr(legacy, name)
    raise AttributeError(f"module 'trainyard.compat' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from trainyard.compat.legacy import test_fine_tuning, test_hyperparameter_search
