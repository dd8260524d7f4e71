import pytest
from trainyard import TrainingConfig
from trainyard.engine.config import FIELD_NAMES

REQUIRED_FIELDS = [
    "learning_rate", "batch_size", "epochs", "weight_decay", "max_grad_norm", "use_amp",
    "gradient_accumulation_steps", "random_seed", "deterministic", "use_lr_schedule",
    "warmup_steps", "compile_mode", "wandb_project", "export_bundle", "export_formats",
    "checkpoint_dir", "checkpoint_every_n_steps", "keep_last_n_checkpoints",
]


def test_every_field_is_defaulted_and_the_contract_fields_exist():
    cfg = TrainingConfig()
    for name in REQUIRED_FIELDS:
        assert name in FIELD_NAMES
        getattr(cfg, name)


@pytest.mark.parametrize(
    "old, new",
    [("n_epochs", "epochs"), ("gradient_clip_norm", "max_grad_norm"), ("use_wandb", "wandb_project")],
)
def test_old_parameter_names_raise_typeerror_naming_the_new_field(old, new):
    with pytest.raises(TypeError, match=rf"{old}.*renamed to '{new}'"):
        TrainingConfig(**{old: 1})


def test_unknown_keyword_raises_typeerror_with_a_suggestion():
    with pytest.raises(TypeError, match="learnig_rate.*did you mean 'learning_rate'"):
        TrainingConfig(learnig_rate=1e-3)
    with pytest.raises(TypeError, match="completely_unknown"):
        TrainingConfig(completely_unknown=1)


BAD_VALUES = [
    ("learning_rate", 0), ("learning_rate", -1e-3), ("learning_rate", float("nan")), ("learning_rate", "fast"),
    ("batch_size", 0), ("batch_size", 2.5), ("batch_size", True),
    ("epochs", 0), ("epochs", -1),
    ("weight_decay", -0.1),
    ("max_grad_norm", 0), ("max_grad_norm", -1.0),
    ("use_amp", "yes"), ("deterministic", 1), ("use_lr_schedule", None), ("export_bundle", "no"),
    ("amp_dtype", "int8"),
    ("gradient_accumulation_steps", 0),
    ("global_batch_size", 0), ("global_batch_size", 12.5),
    ("random_seed", -1), ("random_seed", 2**32),
    ("warmup_steps", -5),
    ("min_lr_ratio", 1.5),
    ("compile_mode", "fastest"),
    ("device", "tpu"), ("device", "cuda:x"), ("device", "cuda: 0"),
    ("num_workers", -1), ("shuffle_chunk_rows", 0), ("shuffle_chunk_rows", 1.5),
    ("wandb_project", ""), ("wandb_project", True),
    ("mlflow_experiment", " "), ("tensorboard_dir", 3),
    ("peak_flops", 0), ("peak_flops", float("inf")), ("peak_flops", "989e12"),
    ("parallelism", "zero3"), ("fsdp_wrap", []), ("fsdp_wrap", ["not a name"]), ("activation_checkpointing", "yes"),
    ("export_formats", ["pickle"]), ("export_tolerance", 0), ("export_tolerance", -1e-3), ("export_tolerance", "1e-3"),
    ("checkpoint_dir", ""), ("checkpoint_dir", "runs\x00/x"), ("tensorboard_dir", "tb\x00"),
    ("checkpoint_every_n_steps", 0),
    ("keep_last_n_checkpoints", 0),
    ("optimizer", 3), ("optimizer", "adamww"), ("optimizer", "lbfgs"), ("optimizer", "muon"), ("optimizer_kwargs", [0.9]), ("optimizer_kwargs", {"betas": {}}),
    ("lr_schedule", "exponential"), ("eval_every_n_steps", 0), ("train_metrics_every_n_steps", 0), ("early_stopping_metric", "val/bleu"),
    ("early_stopping_patience", 0), ("early_stopping_mode", "lowest"), ("early_stopping_min_delta", -0.1),
]


@pytest.mark.parametrize("field, value", BAD_VALUES)
def test_bad_values_raise_valueerror_naming_field_value_and_rule(field, value):
    with pytest.raises(ValueError) as info:
        TrainingConfig(**{field: value})
    message = str(info.value)
    assert field in message and repr(value) in message and "must" in message


def test_every_field_has_a_bad_value_case():
    tested = {f for f, _ in BAD_VALUES}
    assert tested == set(FIELD_NAMES), f"untested fields: {set(FIELD_NAMES) - tested}"


def test_numpy_numbers_are_accepted_and_stored_as_plain_numbers():
    import numpy as np

    cfg = TrainingConfig(batch_size=np.int64(8), epochs=np.int32(2), learning_rate=np.float32(1e-3), max_grad_norm=np.float64(1.0))
    assert (cfg.batch_size, cfg.epochs) == (8, 2) and type(cfg.batch_size) is int and type(cfg.epochs) is int
    assert type(cfg.learning_rate) is float and cfg.learning_rate == pytest.approx(1e-3)
    assert TrainingConfig.from_dict(cfg.to_dict()) == cfg
    TrainingConfig(device="cuda:1"), TrainingConfig(device="cpu")


def test_cross_field_rule_names_the_fix():
    with pytest.raises(ValueError, match="use_lr_schedule=True"):
        TrainingConfig(warmup_steps=10, use_lr_schedule=False)
    with pytest.raises(ValueError, match="export_formats"):
        TrainingConfig(export_bundle=True, export_formats=[])
    with pytest.raises(ValueError, match="has no effect with parallelism='ddp': set parallelism='fsdp'"):
        TrainingConfig(fsdp_wrap=["Block"])
    with pytest.raises(ValueError, match="amp_dtype='float16' is not supported with parallelism='fsdp'.*use amp_dtype='bfloat16'"):
        TrainingConfig(parallelism="fsdp", use_amp=True, amp_dtype="float16")
    TrainingConfig(parallelism="fsdp", fsdp_wrap=["Block"], use_amp=True, amp_dtype="bfloat16")
    TrainingConfig(activation_checkpointing=True, fsdp_wrap=["Block"])


def test_round_trips_through_dict_and_yaml(tmp_path):
    cfg = TrainingConfig(
        learning_rate=1e-3, batch_size=8, epochs=2, max_grad_norm=None, compile_mode="default",
        wandb_project="p", export_formats=["onnx", "torchscript"], checkpoint_dir=tmp_path / "x",
        checkpoint_every_n_steps=5, keep_last_n_checkpoints=None,
    )
    assert TrainingConfig.from_dict(cfg.to_dict()) == cfg
    path = tmp_path / "cfg.yaml"
    cfg.to_yaml(path)
    assert TrainingConfig.from_yaml(path) == cfg
    assert TrainingConfig.from_yaml(cfg.to_yaml()) == cfg
    assert cfg.checkpoint_dir == str(tmp_path / "x")


def test_from_dict_rejects_unknown_and_renamed_keys():
    with pytest.raises(TypeError, match="renamed to 'epochs'"):
        TrainingConfig.from_dict({"n_epochs": 3})


def test_replace_is_validated_and_config_is_frozen():
    cfg = TrainingConfig()
    assert cfg.replace(epochs=7).epochs == 7
    with pytest.raises(ValueError, match="epochs"):
        cfg.replace(epochs=0)
    with pytest.raises(TypeError, match="renamed"):
        cfg.replace(n_epochs=2)
    with pytest.raises(AttributeError):
        cfg.epochs = 5


def test_integer_learning_rate_is_accepted_as_float():
    assert TrainingConfig(learning_rate=1).learning_rate == 1.0


def test_yaml_scientific_notation_is_a_number():
    assert TrainingConfig.from_yaml("learning_rate: 1e-3\nweight_decay: 1E-2\n").learning_rate == 1e-3


def test_numpy_values_are_kept_as_plain_values_and_the_config_saves():
    """Values computed with NumPy (a sweep's sample, a pandas row) arrive as NumPy scalars:
    np.float64 was kept as NumPy (to_yaml and the export at the end of a run failed) and a
    NumPy bool was refused while NumPy numbers were taken. A flag still takes only a bool
    (use_amp="yes", deterministic=1 stay refused: BAD_VALUES above)."""
    import numpy as np

    config = TrainingConfig(learning_rate=np.float64(1e-3), batch_size=np.int64(8), use_amp=np.bool_(False), max_grad_norm=np.float32(0.5))
    assert [type(v) for v in (config.learning_rate, config.batch_size, config.use_amp, config.max_grad_norm)] == [float, int, bool, float]
    assert TrainingConfig.from_yaml(config.to_yaml()) == config
    assert type(config.replace(epochs=np.int32(2)).epochs) is int
    with pytest.raises(ValueError, match=r"TrainingConfig\.epochs=2\.5 is invalid: must be an integer >= 1"):
        TrainingConfig(epochs=np.float64(2.5))
