"""The index pipeline: its committed YAML is fresh and loads in the KFP SDK, its parameters are the index
stage's, its tasks have the cluster settings; and it runs here through kfp.local (`semcode run --pipeline
index`): a tiny repository indexed with an encoder bundle and published, then updated after a change."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from bundle_fixture import assemble_tiny_bundle, cached_tiny_run

from semcode import bundle as bundles
from semcode.pipeline import local as local_run
from semcode.pipeline import params as pipeline_params
from semcode.pipeline.compile import INDEX_OUTPUT, load_pipeline, same_pipeline
from semcode.registry import read_latest
from semcode.stages import index as index_stage

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compiled() -> tuple[dict, dict]:
    """(pipeline spec, Kubernetes executors) of the committed YAML."""
    spec, platform = yaml.safe_load_all(INDEX_OUTPUT.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_committed_yaml_is_up_to_date(tmp_path):
    """Fails when index_pipeline.py or its components changed without `semcode compile`."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("SEMCODE_IMAGE_")}
    fresh = tmp_path / "index_pipeline.yaml"
    command = [
        sys.executable,
        "-m",
        "semcode.pipeline.compile",
        "--pipeline",
        "index",
        "--output",
        str(fresh),
    ]
    subprocess.run(command, check=True, env=env, cwd=REPO_ROOT)
    assert same_pipeline(fresh, INDEX_OUTPUT), (
        "src/semcode/pipeline/index_pipeline.yaml is stale: run `semcode compile`"
    )


def test_committed_yaml_loads_as_a_pipeline():
    from kfp import components

    loaded = components.load_component_from_file(str(INDEX_OUTPUT))
    assert loaded.name == "semcode-index"
    assert set(loaded.component_spec.inputs) == set(load_pipeline("index").component_spec.inputs)


def test_parameters_are_the_index_stage_fields_with_its_defaults(compiled):
    spec, _ = compiled
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert all(parameter.get("description") for parameter in parameters.values())
    fields = {f.name: f.default for f in dataclasses.fields(index_stage.IndexConfig)}
    inputs = {f"index_{name}" for name in pipeline_params.INDEX_INPUTS}
    assert set(parameters) == {f"index_{name}" for name in fields} | inputs | {
        "publish_registry",
        "publish_keep_versions",
        "s3_secret_name",
    }
    for name, default in fields.items():
        expected = (
            "code-index" if name == "name" else (list(default) if isinstance(default, tuple) else default)
        )
        assert parameters[f"index_{name}"].get("defaultValue") == expected, name  # publish needs a name


def test_index_then_publish_only_with_a_registry_never_cached_retried(compiled):
    spec, platform = compiled
    from semcode.components.images import CPU_IMAGE

    index_task = spec["root"]["dag"]["tasks"]["index"]
    assert not index_task["cachingOptions"].get("enableCache")  # the sources change behind the same values
    assert index_task["retryPolicy"]["maxRetryCount"] == 2
    (condition,) = [task for task in spec["root"]["dag"]["tasks"].values() if "triggerPolicy" in task]
    assert "publish_registry" in condition["triggerPolicy"]["condition"]
    publish = spec["components"][condition["componentRef"]["name"]]["dag"]["tasks"]["publish"]
    assert publish["inputs"]["parameters"]["name"]["componentInputParameter"] == "pipelinechannel--index_name"
    for name, executor in spec["deploymentSpec"]["executors"].items():
        assert executor["container"]["image"] == CPU_IMAGE, name
        assert "resourceMemoryLimit" in executor["container"]["resources"], name
        secret = platform[name]["secretAsEnv"][0]["secretNameParameter"]["componentInputParameter"]
        assert secret.endswith("s3_secret_name"), name


def test_index_arguments_are_checked_by_the_stage_config():
    assert pipeline_params.index_arguments({"index_recall_queries": 5, "index_sources": ["dir:x"]}) == {
        "index_recall_queries": 5,
        "index_sources": ["dir:x"],
    }
    with pytest.raises(ValueError, match="document must be one of"):
        pipeline_params.index_arguments({"index_document": "everything"})


def write_repo(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.slow
def test_runs_locally_publishes_then_updates_the_published_index(tmp_path_factory, tmp_path, capsys):
    """`semcode run --pipeline index` twice on a tiny repository (four task processes: slow): the first run
    indexes every definition and publishes; after a change, the second updates what the first published
    (one definition embedded) and publishes the new version."""
    encoder = assemble_tiny_bundle(
        cached_tiny_run(tmp_path_factory), tmp_path_factory.mktemp("enc") / "bundle"
    )
    repo = write_repo(
        tmp_path / "myrepo",
        {
            "geometry.py": "def circle_area(radius):\n    return 3.14159 * radius * radius\n",
            "text.py": "def slugify(title):\n    return '-'.join(title.lower().split())\n",
        },
    )
    runs = tmp_path / "runs"
    argv = [
        "--pipeline",
        "index",
        "--encoder",
        str(encoder),
        "--source",
        f"dir:{repo}",
        "--runs-dir",
        str(runs),
    ]
    argv += ["--param", "index_recall_queries=2"]
    assert local_run.main([*argv, "--run-id", "first"]) == 0
    first = json.loads((runs / "first" / "summary.json").read_text())
    assert first["published"] and first["update"]["embedded"] == 2
    assert [stage["task"] for stage in first["stages"]] == ["index", "publish"]
    assert "published: code-index" in capsys.readouterr().out

    write_repo(repo, {"text.py": "def slugify(title):\n    return '_'.join(title.split())\n"})
    assert local_run.main([*argv, "--run-id", "second"]) == 0
    second = json.loads((runs / "second" / "summary.json").read_text())
    assert (second["update"]["embedded"], second["update"]["unchanged"]) == (1, 1)
    assert second["update"]["from_version"] == first["version"] and second["published"]
    assert read_latest(str(runs / "registry"), "code-index")["version"] == second["version"]
    bundles.validate_bundle(runs / "second" / "bundle")

    # checked before any task: an encoder that is not there
    assert local_run.main([*argv[:3], str(tmp_path / "nothing"), *argv[4:], "--run-id", "third"]) == 2
    assert "has no bundle.json" in capsys.readouterr().err and not (runs / "third").exists()
