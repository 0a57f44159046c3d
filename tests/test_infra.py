"""Cluster definitions: the launcher YAML against Ray's schema, KubeRay objects by structure,
and the image; every entrypoint must be a valid call of the corpus job."""

from __future__ import annotations

import copy
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from pipelines.build_dataset import build_parser, load_config

ray = pytest.importorskip("ray")
jsonschema = pytest.importorskip("jsonschema")

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def _yaml(name: str) -> dict:
    return yaml.safe_load((INFRA / name).read_text())


@pytest.fixture(scope="module")
def ray_schema() -> dict:
    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def _check_entrypoint(command: str) -> None:
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "pipelines.build_dataset"], command
    args = build_parser().parse_args(words[3:])
    assert args.input and args.output and not args.overwrite  # a rerun must resume, not rebuild
    load_config(args.config)


def test_cluster_launcher_yaml_validates_against_rays_schema(ray_schema):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _yaml("cluster.yaml")
    jsonschema.validate(config, ray_schema)
    validate_config(prepare_config(copy.deepcopy(config)))  # Ray's own checks, defaults filled in
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    gpu = [t for t in types.values() if re.match(r"(g|p)\d", t["node_config"]["InstanceType"])]
    assert gpu and all(t["max_workers"] >= 1 for t in gpu)
    assert config["docker"]["image"].endswith(f"spatialdreamer:{VERSION}")


def test_launcher_schema_check_catches_mistakes(ray_schema):
    config = _yaml("cluster.yaml")
    broken = copy.deepcopy(config)
    del broken["provider"]
    with pytest.raises(jsonschema.ValidationError, match="provider"):
        jsonschema.validate(broken, ray_schema)
    typo = copy.deepcopy(config)
    typo["available_node_types"]["worker.gpu"]["max_worker"] = 8
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(typo, ray_schema)


def _check_cluster_spec(spec: dict) -> None:
    assert spec["rayVersion"] == ray.__version__
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # the driver only
    (head_container,) = head["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in head_container["resources"].get("limits", {})
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for group in groups.values():
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        (container,) = group["template"]["spec"]["containers"]
        assert container["image"] == f"spatialdreamer:{VERSION}"
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        assert {"cpu", "memory"} <= set(requests) and requests == limits
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(gpu["nvidia.com/gpu"]) >= 1
    assert "nvidia.com/gpu" not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert head_container["image"] == f"spatialdreamer:{VERSION}"
    assert {p["containerPort"] for p in head_container["ports"]} >= {6379, 8265}


def test_kuberay_raycluster():
    cluster = _yaml("kuberay/raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert cluster["metadata"]["name"]
    _check_cluster_spec(cluster["spec"])
    usage = [
        line for line in (INFRA / "kuberay/raycluster.yaml").read_text().splitlines() if "python -m" in line
    ]
    assert usage and "pipelines.build_dataset" in usage[0]


def test_kuberay_rayjob_runs_the_corpus_job():
    job = _yaml("kuberay/rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    _check_entrypoint(spec["entrypoint"])
    assert spec["shutdownAfterJobFinishes"] is True and spec["submissionMode"] == "K8sJobMode"
    _check_cluster_spec(spec["rayClusterSpec"])
    assert spec["rayClusterSpec"] == _yaml("kuberay/raycluster.yaml")["spec"]  # one cluster definition


def test_launcher_usage_comment_is_a_valid_job_call():
    text = (INFRA / "cluster.yaml").read_text()
    call = re.search(r"-- \\\n#\s+(python -m pipelines\.build_dataset.*?)\(after", text, re.S)
    assert call, "usage comment not found"
    _check_entrypoint(" ".join(part.strip("# \\\n") for part in call.group(1).splitlines()))


def test_image_definition_matches_the_client():
    dockerfile = (INFRA / "Dockerfile").read_text()
    base = re.search(r"^FROM rayproject/ray:(\S+)-py311-gpu$", dockerfile, re.M)
    assert base and base.group(1) == ray.__version__
    assert f'org.opencontainers.image.version="{VERSION}"' in dockerfile
    assert f"ray[data,train]=={ray.__version__}" in dockerfile
    for needed in ("spatialdreamer", "pipelines", "pyproject.toml"):
        assert re.search(rf"^COPY .*\b{re.escape(needed)}\b", dockerfile, re.M), needed
    assert "pip install --no-cache-dir -e ." in dockerfile
