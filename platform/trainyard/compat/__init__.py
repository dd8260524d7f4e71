"""Compatibility with the older APIs of `seeds/`: translation and forwarding only.

    import trainyard.compat; trainyard.compat.enable_legacy_imports()
    from utils.tier3_training_utilities import test_fine_tuning      # runs on trainyard
"""

from trainyard.compat.imports import LEGACY_MODULES, disable_legacy_imports, enable_legacy_imports
from trainyard.compat.legacy import test_fine_tuning, test_hyperparameter_search

__all__ = ["LEGACY_MODULES", "disable_legacy_imports", "enable_legacy_imports", "test_fine_tuning", "test_hyperparameter_search"]
