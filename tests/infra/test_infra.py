"""Cluster definitions in infra/ are checked against the schemas of the tools that read them."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"


def _launcher_config() -> dict:
    return yaml.safe_load((INFRA / "ray-cluster-aws.yaml").read_text())


def test_cluster_launcher_config_passes_rays_own_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _launcher_config()
    validate_config(prepare_config(copy.deepcopy(config)))  # as `ray up` does: defaults filled, then Ray's schema
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert types["gpu_worker"]["resources"] == {"GPU": 1} and types["gpu_worker"]["min_workers"] == 0
    assert "--ray-client-server-port=10001" in " ".join(config["head_start_ray_commands"])


def test_every_node_has_its_own_credentials_and_the_file_holds_none() -> None:
    """Workers reach object storage through an instance profile: no credential travels from the
    submitting machine (sleepsound.runs.submit), and Ray gives only the head a default profile."""
    from sleepsound.runs.submit import stays_here

    config, text = _launcher_config(), (INFRA / "ray-cluster-aws.yaml").read_text()
    for name, node_type in config["available_node_types"].items():
        if name != config["head_node_type"]:
            assert node_type["node_config"]["IamInstanceProfile"], name
    assert not re.search(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b", text)
    assigned = re.findall(r"\b([A-Za-z_][A-Za-z0-9_]*)=", text)  # shell or docker --env assignments
    assert not [name for name in assigned if stays_here(name)]


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda c: c.pop("head_node_type"), "head_node_type"),
        (lambda c: c["available_node_types"]["gpu_worker"].update(max_workers="eight"), "is not of type 'integer'"),
        (lambda c: c.update(cluster_nmae="typo"), "'cluster_nmae' was unexpected"),
    ],
)
def test_a_broken_launcher_config_is_caught(break_it, message: str) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = copy.deepcopy(_launcher_config())
    break_it(config)
    with pytest.raises((ValueError, jsonschema.ValidationError), match=message):
        validate_config(prepare_config(config))
