"""The pipeline: presets map onto its parameters, and the committed YAML is fresh and holds the cluster settings.

The YAML checks read src/semcode/pipeline/train_pipeline.yaml as the KFP backend will: the pipeline spec (first
document) and the Kubernetes platform spec (second).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from semcode import config as cfg
from semcode.config import CONFIGS_DIR, ConfigError
from semcode.pipeline import params as pipeline_params
from semcode.pipeline.compile import DEFAULT_OUTPUT, load_pipeline, same_pipeline

REPO_ROOT = Path(__file__).resolve().parents[2]

PRESETS = sorted(CONFIGS_DIR.glob("*.yaml"))
STAGE_EXECUTORS = {  # executor -> the stage module its component calls
    "exec-ingest": "ingest",
    "exec-ingest-shard-indices": "ingest",
    "exec-ingest-shard": "ingest",
    "exec-ingest-merge": "ingest",
    "exec-train-tokenizer": "train_tokenizer",
    "exec-train-encoder": "train_encoder",
    "exec-mine-hard-negatives": "mine_hard_negatives",
    "exec-train-decoder": "train_decoder",
    "exec-evaluate": "evaluate",
    "exec-plan-corpus-shards": "embed_corpus",
    "exec-embed-corpus": "embed_corpus",
    "exec-build-index": "build_index",
    "exec-export-onnx": "export_onnx",
    "exec-gate": "gate",
    "exec-publish": "publish",
}
GPU_EXECUTORS = ("exec-train-encoder", "exec-mine-hard-negatives", "exec-train-decoder", "exec-embed-corpus")
TASKS = (
    "ingest",
    "ingest-shard-indices",
    "ingest-shard",
    "ingest-merge",
    "train-tokenizer",
    "train-encoder",
    "mine-hard-negatives",
    "train-decoder",
    "evaluate",
    "plan-corpus-shards",
    "embed-corpus",
    "build-index",
    "export-onnx",
    "gate",
    "publish",
)


@pytest.fixture(scope="module")
def pipeline():
    return load_pipeline()


@pytest.fixture(scope="module")
def compiled() -> tuple[dict, dict]:
    """(pipeline spec, Kubernetes platform spec) of the committed YAML."""
    spec, platform = yaml.safe_load_all(DEFAULT_OUTPUT.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def stage_of(executor: str) -> str:
    """exec-train-encoder-3 -> train_encoder: KFP numbers the executors of repeated tasks."""
    return STAGE_EXECUTORS[re.sub(r"-\d+$", "", executor)]


def on_gpu(executor: str) -> bool:
    """exec-embed-corpus-2 -> True: the executors of the GPU pool's tasks."""
    return re.sub(r"-\d+$", "", executor) in GPU_EXECUTORS


def all_tasks(spec: dict) -> dict[str, dict]:
    """Every task of the root DAG and of the condition sub-DAGs, by name."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


# ------------------------------------------------------------------------------------ compiled YAML


def test_committed_yaml_is_up_to_date(tmp_path):
    """Fails when pipelines/ or components/ changed without `semcode compile`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("SEMCODE_IMAGE_") and name != "SEMCODE_EMBED_PARALLELISM"
    }
    fresh = tmp_path / "train_pipeline.yaml"
    subprocess.run(
        [sys.executable, "-m", "semcode.pipeline.compile", "--output", str(fresh)],
        check=True,
        env=env,
        cwd=REPO_ROOT,
    )
    assert same_pipeline(fresh, DEFAULT_OUTPUT), (
        "src/semcode/pipeline/train_pipeline.yaml is stale: run `semcode compile`"
    )


def edited_copy(tmp_path, edit) -> str:
    """The committed YAML with ``edit(spec, platform)`` applied, written to a temporary file."""
    spec, platform = yaml.safe_load_all(DEFAULT_OUTPUT.read_text())
    edit(spec, platform)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump_all([spec, platform]))
    return str(path)


def test_staleness_ignores_the_sdk_version_only(tmp_path):
    """A KFP SDK patch release changes sdkVersion only: not stale. A component, parameter or resource: stale."""

    def new_sdk(spec, platform):
        spec["sdkVersion"] = "kfp-99.0.1"

    def new_default(spec, platform):
        spec["root"]["inputDefinitions"]["parameters"]["gpu_count"]["defaultValue"] = 7

    def new_parameter(spec, platform):
        spec["root"]["inputDefinitions"]["parameters"]["extra"] = {"parameterType": "STRING"}

    def new_resource(spec, platform):
        spec["deploymentSpec"]["executors"]["exec-ingest"]["container"]["resources"] = {"cpuLimit": 64.0}

    def new_component_code(spec, platform):
        container = spec["deploymentSpec"]["executors"]["exec-gate"]["container"]
        container["command"] = container["command"] + ["# changed"]

    def new_toleration(spec, platform):
        executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        next(iter(executors.values()))["tolerations"] = [{"key": "other", "effect": "NoSchedule"}]

    assert same_pipeline(edited_copy(tmp_path, new_sdk), DEFAULT_OUTPUT)
    for edit in (new_default, new_parameter, new_resource, new_component_code, new_toleration):
        assert not same_pipeline(edited_copy(tmp_path, edit), DEFAULT_OUTPUT), edit.__name__


def test_every_parameter_is_described(compiled):
    spec, _ = compiled
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    undescribed = [name for name, parameter in parameters.items() if not parameter.get("description")]
    assert not undescribed, f"parameters without a description (pipeline docstring Args:): {undescribed}"


def test_train_encoder_requests_gpus_on_the_gpu_pool(compiled):
    spec, platform = compiled
    resources = spec["deploymentSpec"]["executors"]["exec-train-encoder"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    # the count is the pipeline parameter gpu_count, resolved at run time
    assert "gpu_count" in resources["accelerator"]["resourceCount"]
    task = all_tasks(spec)["train-encoder"]  # inside a condition branch: pipeline inputs come in as channels
    assert task["inputs"]["parameters"]["pipelinechannel--gpu_count"] == {
        "componentInputParameter": "pipelinechannel--gpu_count"
    }

    gpu_executors = [name for name in platform if on_gpu(name)]
    # 3 first trainings (one per round-count branch), 3 rounds of mine + train, the decoder, the corpus shards
    assert len(gpu_executors) == 11
    for executor in gpu_executors:
        gpu = platform[executor]
        node_selector = gpu["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"]
        assert node_selector.endswith("gpu_node_selector"), executor
        assert gpu["tolerations"][0]["tolerationJson"]["componentInputParameter"].endswith("gpu_tolerations")
        assert gpu["emptyDirMounts"] == [
            {"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": "16Gi", "volumeName": "dshm"}
        ]
        accelerator = spec["deploymentSpec"]["executors"][executor]["container"]["resources"]["accelerator"]
        assert accelerator["resourceType"] == "nvidia.com/gpu", executor
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    assert toleration in defaults["gpu_tolerations"]["defaultValue"]
    assert defaults["gpu_node_selector"]["defaultValue"] == {"nvidia.com/gpu.present": "true"}

    for executor in spec["deploymentSpec"]["executors"]:  # only training, mining and embedding ask for GPUs
        if on_gpu(executor):
            continue
        assert "accelerator" not in spec["deploymentSpec"]["executors"][executor]["container"]["resources"]
        assert "nodeSelector" not in platform[executor] and "tolerations" not in platform[executor]


def test_every_task_has_requests_limits_retries_and_its_image(compiled, pipeline):
    from semcode.components.images import CPU_IMAGE, GPU_IMAGE  # importable once load_pipeline() ran

    spec, _ = compiled
    executors = spec["deploymentSpec"]["executors"]
    assert {re.sub(r"-\d+$", "", name) for name in executors} == set(STAGE_EXECUTORS)
    for name in executors:
        stage = stage_of(name)
        container = executors[name]["container"]
        resources = container["resources"]
        for field in (
            "resourceCpuRequest",
            "resourceCpuLimit",
            "resourceMemoryRequest",
            "resourceMemoryLimit",
        ):
            assert field in resources, (name, field)
        assert container["image"] == (GPU_IMAGE if on_gpu(name) else CPU_IMAGE)
        assert f"from semcode.stages import {stage} as stage" in container["command"][-1]
        assert "pip install" not in " ".join(container["command"])  # no packages_to_install, no kfp install
    tasks = all_tasks(spec)
    for name in TASKS:
        assert tasks[name]["retryPolicy"]["maxRetryCount"] == 2, name
        assert tasks[name]["retryPolicy"]["backoffFactor"] == 2.0, name


def test_caching_is_on_except_for_the_registry_tasks(compiled):
    spec, _ = compiled
    tasks = all_tasks(spec)
    for name in TASKS[:-2]:
        assert tasks[name]["cachingOptions"] == {"enableCache": True}, name
    for name in ("gate", "publish"):
        assert not tasks[name]["cachingOptions"].get("enableCache"), name


def test_ingest_is_one_task_or_a_fan_out_over_shards_into_one_merge(compiled):
    """ingest_shards == 1: the ingest task; else ingest_shard_indices -> ParallelFor(ingest_shard) ->
    ingest_merge over the collected shards. The tokenizer (and everything after) takes the branch that ran."""
    spec, _ = compiled
    components = spec["components"]
    fan_out = next(
        c["dag"]["tasks"] for c in components.values() if "ingest-merge" in c.get("dag", {}).get("tasks", {})
    )
    loop_name, loop = next((name, task) for name, task in fan_out.items() if "parameterIterator" in task)
    assert loop["parameterIterator"]["items"] == {
        "inputParameter": "pipelinechannel--ingest-shard-indices-Output"
    }
    assert fan_out["ingest-shard-indices"]["inputs"]["parameters"]["shards"] == {
        "componentInputParameter": "pipelinechannel--ingest_shards"
    }
    loop_tasks = components[loop["componentRef"]["name"]]["dag"]["tasks"]
    assert list(loop_tasks) == ["ingest-shard"]
    assert loop_tasks["ingest-shard"]["inputs"]["parameters"]["index"] == {
        "componentInputParameter": "pipelinechannel--ingest-shard-indices-Output-loop-item"
    }
    assert fan_out["ingest-merge"]["inputs"]["artifacts"]["shards"] == {
        "taskOutputArtifact": {
            "outputArtifactKey": "pipelinechannel--ingest-shard-shard",
            "producerTask": loop_name,
        }
    }
    assert (
        components["comp-ingest-merge"]["inputDefinitions"]["artifacts"]["shards"]["isArtifactList"] is True
    )

    conditions = [
        task["triggerPolicy"]["condition"] for task in all_tasks(spec).values() if "triggerPolicy" in task
    ]
    assert "int(inputs.parameter_values['pipelinechannel--ingest_shards']) == 1" in conditions
    assert "!(int(inputs.parameter_values['pipelinechannel--ingest_shards']) == 1)" in conditions
    tokenizer_inputs = spec["root"]["dag"]["tasks"]["train-tokenizer"]["inputs"]["artifacts"]
    branches = components[f"comp-{tokenizer_inputs['corpus']['taskOutputArtifact']['producerTask']}"]
    selectors = branches["dag"]["outputs"]["artifacts"][
        tokenizer_inputs["corpus"]["taskOutputArtifact"]["outputArtifactKey"]
    ]
    assert [s["outputArtifactKey"] for s in selectors["artifactSelectors"]] == [
        "pipelinechannel--ingest-corpus",
        "pipelinechannel--ingest-merge-corpus",
    ]
    assert spec["root"]["inputDefinitions"]["parameters"]["ingest_shards"]["defaultValue"] == 1


def test_publish_runs_only_when_the_gate_passed_and_a_registry_is_given(compiled):
    spec, _ = compiled
    root = spec["root"]["dag"]["tasks"]
    assert "publish" not in root
    conditions = [
        task["triggerPolicy"]["condition"] for task in all_tasks(spec).values() if "triggerPolicy" in task
    ]
    assert "inputs.parameter_values['pipelinechannel--gate-Output'] == true" in conditions
    assert "inputs.parameter_values['pipelinechannel--gate_registry'] != ''" in conditions


def test_s3_credentials_come_from_the_secret_and_no_secret_is_in_the_yaml(compiled):
    spec, platform = compiled
    for executor in STAGE_EXECUTORS:
        required, optional = platform[executor]["secretAsEnv"]
        # publish, inside the conditions, sees the parameter through the sub-DAG's pipelinechannel input
        assert required["secretNameParameter"]["componentInputParameter"] in (
            "s3_secret_name",
            "pipelinechannel--s3_secret_name",
        )
        assert required["optional"] is False
        assert {(e["secretKey"], e["envVar"]) for e in required["keyToEnv"]} == {
            ("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
            ("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"),
        }
        assert optional["optional"] is True
        assert {e["envVar"] for e in optional["keyToEnv"]} == {"AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"}
        # no literal environment values at all
        assert "env" not in spec["deploymentSpec"]["executors"][executor]["container"]
    assert spec["root"]["inputDefinitions"]["parameters"]["s3_secret_name"]["defaultValue"] == "semcode-s3"

    text = DEFAULT_OUTPUT.read_text()
    for leak in ("minioadmin", "aws_secret_access_key=", "AWS_SECRET_ACCESS_KEY="):
        assert leak not in text
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)  # an AWS access key id
    assert not re.search(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])", text)  # a secret key


def test_pipeline_outputs_are_the_bundle_evaluation_and_decision(compiled):
    spec, _ = compiled
    outputs = spec["root"]["outputDefinitions"]["artifacts"]
    assert {name: output["artifactType"]["schemaTitle"] for name, output in outputs.items()} == {
        "bundle": "system.Model",
        "evaluation": "system.Artifact",
        "decision": "system.Artifact",
    }


def test_the_stages_that_embed_after_the_export_run_its_files(compiled):
    """evaluate, train-decoder and build-index take export-onnx's output (the bundle's ONNX files) and
    hand it to their stage, which runs it with an onnx runtime instead of exporting the encoder again."""
    spec, _ = compiled
    tasks = spec["root"]["dag"]["tasks"]
    for name in ("evaluate", "train-decoder", "build-index", "gate"):
        assert tasks[name]["inputs"]["artifacts"]["onnx"] == {
            "taskOutputArtifact": {"outputArtifactKey": "onnx", "producerTask": "export-onnx"}
        }, name
        executor = spec["deploymentSpec"]["executors"][f"exec-{name}"]["container"]
        if name != "gate":
            assert "onnx_dir=onnx.path" in executor["command"][-1], name
    embed = all_tasks(spec)["embed-corpus"]  # inside the ParallelFor: export-onnx's output as a channel
    assert embed["inputs"]["artifacts"]["onnx"] == {
        "componentInputArtifact": "pipelinechannel--export-onnx-onnx"
    }
    assert (
        "onnx_dir=onnx.path"
        in spec["deploymentSpec"]["executors"]["exec-embed-corpus"]["container"]["command"][-1]
    )


def test_the_corpus_is_embedded_in_a_parallel_for_on_the_gpu_pool_and_collected_by_build_index(compiled):
    """plan-corpus-shards -> ParallelFor over its shard numbers (parallelism fixed at compile time) of
    embed-corpus, each asking for gpu_count GPUs -> build-index over the dsl.Collected shard artifacts."""
    from semcode.pipeline.train_pipeline import EMBED_PARALLELISM

    spec, platform = compiled
    root = spec["root"]["dag"]["tasks"]
    plan = root["plan-corpus-shards"]
    assert plan["inputs"]["parameters"]["shards"] == {"componentInputParameter": "build_index_shards"}
    assert plan["inputs"]["parameters"]["shard_rows"] == {"componentInputParameter": "build_index_shard_rows"}
    loops = {
        name: task
        for name, task in root.items()
        if "embed-corpus" in spec["components"][task["componentRef"]["name"]].get("dag", {}).get("tasks", {})
    }
    assert len(loops) == 1, loops
    ((loop_name, loop),) = loops.items()
    assert loop["taskInfo"]["name"] == "corpus-shards"
    iterator = loop["parameterIterator"]
    assert iterator["items"]["inputParameter"] == "pipelinechannel--plan-corpus-shards-Output"
    assert loop["iteratorPolicy"]["parallelismLimit"] == EMBED_PARALLELISM > 0
    body = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]["embed-corpus"]
    for key in ("shard", "shards"):  # each iteration's own item {"shard": k, "shards": N}
        assert body["inputs"]["parameters"][key] == {
            "componentInputParameter": iterator["itemInput"],
            "parameterExpressionSelector": f'parseJson(string_value)["{key}"]',
        }
    # the GPU count reaches the loop's tasks (the accelerator limit is resolved from it)
    assert body["inputs"]["parameters"]["gpu_count"] == {
        "componentInputParameter": "pipelinechannel--gpu_count"
    }
    assert loop["inputs"]["parameters"]["pipelinechannel--gpu_count"] == {
        "componentInputParameter": "gpu_count"
    }
    resources = spec["deploymentSpec"]["executors"]["exec-embed-corpus"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert "gpu_count" in resources["accelerator"]["resourceCount"]
    assert platform["exec-embed-corpus"]["nodeSelector"]["nodeSelectorJson"][
        "componentInputParameter"
    ].endswith("gpu_node_selector")
    build = root["build-index"]
    assert build["inputs"]["artifacts"]["embedded"] == {
        "taskOutputArtifact": {
            "outputArtifactKey": "pipelinechannel--embed-corpus-embeddings",
            "producerTask": loop_name,
        }
    }
    assert spec["components"]["comp-build-index"]["inputDefinitions"]["artifacts"]["embedded"][
        "isArtifactList"
    ]
    assert "corpus" not in build["inputs"]["artifacts"]  # the shards carry the corpus' rows


def test_images_come_from_the_environment():
    code = "from semcode.components.images import CPU_IMAGE, GPU_IMAGE; print(CPU_IMAGE, GPU_IMAGE)"
    env = {**os.environ, "SEMCODE_IMAGE_REGISTRY": "registry.example.com/ml/", "SEMCODE_IMAGE_TAG": "abc123"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == [
        "registry.example.com/ml/semcode-cpu:abc123",
        "registry.example.com/ml/semcode-gpu:abc123",
    ]


# ------------------------------------------------------------------------------- presets <-> parameters


@pytest.mark.parametrize("preset_path", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_key_is_a_pipeline_parameter_of_its_type(preset_path, pipeline):
    preset = cfg.load_yaml(preset_path)
    inputs = pipeline.component_spec.inputs
    for section, values in preset.items():
        for key in values:
            name = pipeline_params.parameter_name(section, key)
            assert name in inputs, f"{preset_path.name}: {section}.{key} has no pipeline parameter {name}"
            assert inputs[name].type == pipeline_params.kfp_type(section, key), name
    arguments = pipeline_params.preset_arguments(preset, preset_path.stem)
    pipeline_params.check_arguments(arguments, inputs, preset_path.stem)
    assert len(arguments) == sum(len(values) for values in preset.values())


def test_pipeline_defaults_are_the_stage_config_defaults(pipeline):
    for name, parameter in pipeline.component_spec.inputs.items():
        split = pipeline_params.split_parameter(name)
        if split is None:
            assert name in pipeline_params.CLUSTER_PARAMETERS, (
                f"{name} is neither <section>_<key> nor a cluster parameter"
            )
            continue
        section, key = split
        assert parameter.type == pipeline_params.kfp_type(section, key), name
        assert parameter.default == pipeline_params.stage_default(section, key), name


def test_preset_arguments_have_the_field_types():
    preset = {
        "ingest": {"sources": "python:stdlib"},
        "train_encoder": {"time_budget_minutes": 14, "learnable_temperature": "yes"},
    }
    arguments = pipeline_params.preset_arguments(preset, "mine", {"gate": {"registry": "/tmp/registry"}})
    assert arguments == {
        "ingest_sources": ["python:stdlib"],
        "train_encoder_time_budget_minutes": 14.0,
        "train_encoder_learnable_temperature": True,
        "gate_registry": "/tmp/registry",
    }
    assert isinstance(arguments["train_encoder_time_budget_minutes"], float)


def test_preset_typos_and_unexposed_fields_are_refused(pipeline):
    with pytest.raises(ConfigError, match="preset mine, section train_encoder.*batchsize"):
        pipeline_params.resolve_configs({"train_encoder": {"batchsize": 8}}, "mine")
    with pytest.raises(ConfigError, match="unknown section.*publish takes the gate's registry"):
        pipeline_params.resolve_configs({"publish": {"registry": "/tmp/r"}}, "mine")
    with pytest.raises(ConfigError, match="lr must be > 0"):
        pipeline_params.resolve_configs({"train_encoder": {"lr": 0}}, "mine")
    # a real stage field that the pipeline does not expose
    arguments = pipeline_params.preset_arguments({"train_encoder": {"log_every": 1}}, "mine")
    with pytest.raises(ConfigError, match="train_encoder_log_every.*not pipeline parameters"):
        pipeline_params.check_arguments(arguments, pipeline.component_spec.inputs, "preset mine")


def test_publish_config_follows_the_gate():
    configs = pipeline_params.resolve_configs({"gate": {"registry": "/tmp/r", "name": "mymodel"}}, "mine")
    assert (configs["publish"].registry, configs["publish"].name) == ("/tmp/r", "mymodel")
    assert "publish" not in pipeline_params.resolve_configs({}, "mine")  # no registry: nothing to publish to


def test_committed_yaml_loads_as_a_pipeline():
    from kfp import components

    loaded = components.load_component_from_file(str(DEFAULT_OUTPUT))
    assert loaded.name == "semcode-train"
    assert set(loaded.component_spec.inputs) == set(load_pipeline().component_spec.inputs)
