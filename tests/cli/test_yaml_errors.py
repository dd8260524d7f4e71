"""A broken YAML file, a binary file or a directory given as a config: one line that names
the file (and for syntax, the line and column), wherever YAML is read."""

import pytest
from trainyard import TrainingConfig
from trainyard.compat.training import build_training_config
from trainyard.experiment import apply_overrides, load_spec
from trainyard.hpo.space import load_search_space

BROKEN = "model:\n  name: gpt\n  d_model: [64\ntraining: {epochs: 2}\n"


@pytest.mark.parametrize("load", [load_spec, load_search_space, TrainingConfig.from_yaml], ids=["config", "space", "training"])
def test_a_syntax_error_names_the_file_line_and_column(tmp_path, load):
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    with pytest.raises(ValueError, match=r"broken\.yaml, line 4, column 9: invalid YAML: expected ',' or ']'") as info:
        load(str(path))
    assert "\n" not in str(info.value) and "<unicode string>" not in str(info.value)


def test_a_section_file_and_an_override_name_themselves(tmp_path):
    (tmp_path / "model.yaml").write_text("name: gpt\nd_model: {64\n")
    with pytest.raises(ValueError, match=r"model\.yaml, line 3, column 1: invalid YAML"):
        build_training_config(type("Args", (), {"config": None, "overrides": []})(), tmp_path)
    with pytest.raises(ValueError, match=r"override 'epochs=\[1', line 1, column 3: invalid YAML"):
        apply_overrides({}, ["epochs=[1"])


def test_a_binary_file_or_a_directory_is_named(tmp_path):
    binary = tmp_path / "model.pt"
    binary.write_bytes(b"PK\x03\x04\x00\x00\xff\xfe")
    with pytest.raises(ValueError, match=r"experiment config .*model\.pt is not a text file"):
        load_spec(binary)
    with pytest.raises(ValueError, match=r"search space .* is a directory: give the YAML file inside it"):
        load_search_space(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"experiment config .*nope\.yaml not found"):
        load_spec(tmp_path / "nope.yaml")


@pytest.mark.parametrize("load", [load_spec, load_search_space, TrainingConfig.from_yaml], ids=["config", "space", "training"])
def test_a_key_written_twice_is_refused_naming_both_lines(tmp_path, load):
    """YAML keeps the last of two equal keys silently: `epochs: 1 ... epochs: 2` trained 2."""
    path = tmp_path / "twice.yaml"
    path.write_text("params: {learning_rate: {loguniform: [1.0e-4, 1.0e-2]}}\nepochs: 1\nlearning_rate: 1.0e-3\nepochs: 2\n")
    with pytest.raises(ValueError, match=r"twice\.yaml, line 4, column 1: invalid YAML: the key 'epochs' is written twice in one mapping "
                                         r"\(first on line 2\): keep one"):
        load(str(path))


def test_yaml_merge_keys_still_override():
    from trainyard import _yaml

    assert _yaml.load("base: &b {x: 1, y: 1}\nrun:\n  <<: *b\n  x: 2\n")["run"] == {"x": 2, "y": 1}
