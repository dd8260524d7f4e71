"""cluster.yaml is a valid `ray up` config, checked offline with Ray's own validator."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_cluster_yaml_passes_rays_schema_and_describes_a_gpu_cluster():
    util = pytest.importorskip("ray.autoscaler._private.util")
    pytest.importorskip("jsonschema")
    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config = util.prepare_config(raw)
    util.validate_config(config)  # raises on any schema violation
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] > 0
    gpu = [n for n in nodes.values() if n["resources"].get("GPU", 0) > 0]
    assert gpu and gpu[0]["min_workers"] == 0 < gpu[0]["max_workers"], "an autoscaling GPU worker type"
    assert any("pip install -e" in c and "trainyard" in c for c in config["setup_commands"])
    assert "." in config["file_mounts"].values()


def test_a_broken_cluster_yaml_is_caught_by_the_same_check():
    util = pytest.importorskip("ray.autoscaler._private.util")
    jsonschema = pytest.importorskip("jsonschema")
    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    raw["available_node_types"]["head"]["min_workerz"] = 1
    with pytest.raises(jsonschema.ValidationError):
        util.validate_config(util.prepare_config(raw))
