"""Experiments: config file -> spec -> model and data recipe -> trainer.

    spec.py     ExperimentSpec: load_spec, as_spec, parse_spec (the one check), apply_overrides
    recipe.py   model_recipe, data_recipe (what the spec builds), the model and data checks
    build.py    build -> Experiment (its `.trainer()`)
"""

from trainyard.experiment.build import Experiment, build
from trainyard.experiment.recipe import model_recipe
from trainyard.experiment.spec import SECTIONS, ExperimentSpec, apply_overrides, as_spec, load_spec, parse_spec

__all__ = [
    "SECTIONS", "Experiment", "ExperimentSpec", "apply_overrides", "as_spec", "build", "load_spec",
    "model_recipe", "parse_spec",
]
