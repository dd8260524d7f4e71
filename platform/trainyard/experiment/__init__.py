"""Experiments: config file -> spec -> model and data recipe -> trainer.

    spec.py     load_spec, apply_overrides, as_spec (the YAML sections and `key=value`)
    recipe.py   model_recipe, data_recipe, validate (what the spec builds)
    build.py    build -> Experiment (its `.trainer()`), build_training_config (a config dir)
    train.py    train_model, create_model_and_tokenizer (seed 004's entry points)
"""

from trainyard.experiment.build import Experiment, build, build_training_config
from trainyard.experiment.recipe import model_recipe, validate
from trainyard.experiment.spec import SECTIONS, apply_overrides, as_spec, load_spec

__all__ = [
    "SECTIONS", "Experiment", "apply_overrides", "as_spec", "build", "build_training_config", "load_spec", "model_recipe", "validate",
]
